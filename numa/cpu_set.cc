#include "roam/numa/cpu_set.h"

#include <algorithm>
#include <charconv>
#include <iterator>
#include <utility>

#include "roam/base/check.h"

namespace roam::numa {
namespace {

void Normalize(std::vector<int>& cpus) {
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  for (int cpu : cpus) ROAM_CHECK(cpu >= 0 && cpu <= CpuSet::kMaxCpu, "cpu number {}", cpu);
}

std::string_view Trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  const auto first = s.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(kSpace) - first + 1);
}

// A whole decimal number in [0, kMaxCpu], or -1.
int ParseNumber(std::string_view s) {
  int value = -1;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return -1;
  return value >= 0 && value <= CpuSet::kMaxCpu ? value : -1;
}

}  // namespace

CpuSet::CpuSet(std::initializer_list<int> cpus) : cpus_(cpus) { Normalize(cpus_); }

CpuSet CpuSet::FromList(std::vector<int> cpus) {
  CpuSet set;
  set.cpus_ = std::move(cpus);
  Normalize(set.cpus_);
  return set;
}

Result<CpuSet> CpuSet::Parse(std::string_view text) {
  const std::string_view list = Trim(text);
  std::vector<int> cpus;
  if (list.empty()) return CpuSet();
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    const std::string_view item = list.substr(start, comma - start);
    const std::size_t dash = item.find('-');
    const int first = ParseNumber(item.substr(0, dash));
    const int last = dash == std::string_view::npos ? first : ParseNumber(item.substr(dash + 1));
    if (first < 0 || last < first) {
      return MakeError(Errc::kInvalidArgument,
                       "'{}' is not a CPU list like 0-3,8 (bad item '{}'; numbers 0..{})", list,
                       item, kMaxCpu);
    }
    for (int cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
    start = comma + 1;
  }
  return FromList(std::move(cpus));
}

std::string CpuSet::ToString() const {
  std::string out;
  for (std::size_t i = 0; i < cpus_.size();) {
    std::size_t j = i;
    while (j + 1 < cpus_.size() && cpus_[j + 1] == cpus_[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus_[i]);
    if (j > i) out += fmt::format("-{}", cpus_[j]);
    i = j + 1;
  }
  return out;
}

bool CpuSet::contains(int cpu) const { return std::binary_search(cpus_.begin(), cpus_.end(), cpu); }

CpuSet CpuSet::Minus(const CpuSet& other) const {
  CpuSet out;
  std::set_difference(cpus_.begin(), cpus_.end(), other.cpus_.begin(), other.cpus_.end(),
                      std::back_inserter(out.cpus_));
  return out;
}

CpuSet CpuSet::Union(const CpuSet& other) const {
  CpuSet out;
  std::set_union(cpus_.begin(), cpus_.end(), other.cpus_.begin(), other.cpus_.end(),
                 std::back_inserter(out.cpus_));
  return out;
}

}  // namespace roam::numa
