#include "targets.h"

#include <algorithm>
#include <chrono>
#include <limits>

namespace roam::policy::internal {

bool Fresh(const load::LoadVector& v, std::uint64_t now_ns, const PolicyConfig& config) {
  const auto max_age = static_cast<std::uint64_t>(config.max_info_age.count());
  return v.sampled_ns() >= now_ns || now_ns - v.sampled_ns() <= max_age;
}

double WithOne(const load::LoadVector& v, const LoadLedger& ledger) {
  if (v.capacity_milli() == 0) return std::numeric_limits<double>::infinity();
  return (ledger.Adjusted(v) + 1000.0) / v.capacity_milli();
}

std::optional<Target> DrawTarget(std::uint32_t self, std::span<const load::LoadVector> peers,
                                 const LoadLedger& ledger, double at_most, std::uint64_t now_ns,
                                 const PolicyConfig& config, std::mt19937_64& rng) {
  auto eligible = [&](const load::LoadVector& v) {
    return v.node() != self && Accepting(v) && v.capacity_milli() > 0 && Fresh(v, now_ns, config) &&
           WithOne(v, ledger) <= at_most;
  };
  double best = std::numeric_limits<double>::infinity();
  for (const load::LoadVector& v : peers) {
    if (eligible(v)) best = std::min(best, WithOne(v, ledger));
  }
  if (best == std::numeric_limits<double>::infinity()) return std::nullopt;
  // One pass of reservoir sampling over the near-best.
  std::optional<Target> chosen;
  std::uint64_t seen = 0;
  for (const load::LoadVector& v : peers) {
    if (!eligible(v)) continue;
    const double with_one = WithOne(v, ledger);
    if (with_one > best + config.choice_spread) continue;
    ++seen;
    if (std::uniform_int_distribution<std::uint64_t>(0, seen - 1)(rng) == 0) {
      chosen = Target{v.node(), with_one};
    }
  }
  return chosen;
}

}  // namespace roam::policy::internal
