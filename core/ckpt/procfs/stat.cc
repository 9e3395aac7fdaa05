#include "core/ckpt/procfs/stat.h"

#include <array>
#include <vector>

#include "core/ckpt/procfs/proc_file.h"

namespace roam::ckpt::procfs {
namespace {

using internal::ParseNumber;

constexpr int kLastField = 51;  // env_end

template <typename T>
struct NumberField {
  int number;
  T Stat::*member;
};

constexpr std::array<NumberField<int>, 4> kIntFields = {
    {{4, &Stat::ppid}, {5, &Stat::pgrp}, {6, &Stat::session}, {7, &Stat::tty_nr}}};
constexpr std::array<NumberField<uint64_t>, 13> kU64Fields = {{{14, &Stat::utime},
                                                               {15, &Stat::stime},
                                                               {22, &Stat::starttime},
                                                               {26, &Stat::start_code},
                                                               {27, &Stat::end_code},
                                                               {28, &Stat::start_stack},
                                                               {45, &Stat::start_data},
                                                               {46, &Stat::end_data},
                                                               {47, &Stat::start_brk},
                                                               {48, &Stat::arg_start},
                                                               {49, &Stat::arg_end},
                                                               {50, &Stat::env_start},
                                                               {51, &Stat::env_end}}};

}  // namespace

Result<Stat> ParseStat(std::string_view text) {
  // comm is whatever the task named itself (prctl(PR_SET_NAME)), spaces and
  // parentheses included; only the last ')' reliably ends it.
  const size_t open = text.find('(');
  const size_t close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open) {
    return MakeError(Errc::kCorrupt, "stat has no '(comm)'");
  }
  Stat stat;
  const auto pid = ParseNumber<pid_t>(internal::Trim(text.substr(0, open)));
  if (!pid) return MakeError(Errc::kCorrupt, "stat field 1 (pid) is bad");
  stat.pid = *pid;
  stat.comm = std::string(text.substr(open + 1, close - open - 1));

  // fields[0] is field 3.
  const std::vector<std::string_view> fields = internal::SplitFields(text.substr(close + 1));
  const auto field = [&fields](int number) { return fields[static_cast<size_t>(number - 3)]; };
  if (fields.size() + 2 < kLastField) {
    return MakeError(Errc::kCorrupt, "stat has {} fields, fewer than {}", fields.size() + 2,
                     kLastField);
  }
  if (field(3).size() != 1) return MakeError(Errc::kCorrupt, "stat field 3 (state) is bad");
  stat.state = field(3)[0];
  const auto bad = [&field](int number) {
    return MakeError(Errc::kCorrupt, "stat field {} is bad: '{}'", number, field(number));
  };
  for (const auto& [number, member] : kIntFields) {
    const auto value = ParseNumber<int>(field(number));
    if (!value) return bad(number);
    stat.*member = *value;
  }
  const auto threads = ParseNumber<int64_t>(field(20));
  if (!threads) return bad(20);
  stat.num_threads = *threads;
  for (const auto& [number, member] : kU64Fields) {
    const auto value = ParseNumber<uint64_t>(field(number));
    if (!value) return bad(number);
    stat.*member = *value;
  }
  return stat;
}

Result<Stat> ReadStat(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const std::string text, internal::ReadProcFile(pid, "stat"));
  return ParseStat(text).map_error(
      [pid](Error e) { return std::move(e).WithContext(fmt::format("pid {}", pid)); });
}

}  // namespace roam::ckpt::procfs
