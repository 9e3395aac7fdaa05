#include "roam/policy/load_ledger.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace roam::policy {
namespace {

// The part of a change at `at_ns` that a vector sampled at `sampled_ns`
// does not show yet: all of it before the change, then decaying with the
// sampler's half-life.
double Unshown(std::uint64_t at_ns, std::uint64_t sampled_ns, std::chrono::nanoseconds half_life) {
  if (sampled_ns <= at_ns) return 1.0;
  const double half_life_ns = std::max<double>(1.0, static_cast<double>(half_life.count()));
  return std::exp2(-static_cast<double>(sampled_ns - at_ns) / half_life_ns);
}

}  // namespace

void LoadLedger::Record(std::uint32_t node, std::uint64_t at_ns, std::int32_t delta_milli) {
  changes_.push_back({node, at_ns, delta_milli});
}

double LoadLedger::Adjusted(const load::LoadVector& v) const {
  double load = v.load_milli();
  for (const Change& c : changes_) {
    if (c.node == v.node()) load += c.delta_milli * Unshown(c.at_ns, v.sampled_ns(), half_life_);
  }
  return std::max(load, 0.0);
}

double LoadLedger::AdjustedPerCpu(const load::LoadVector& v) const {
  if (v.capacity_milli() == 0) return std::numeric_limits<double>::infinity();
  return Adjusted(v) / v.capacity_milli();
}

void LoadLedger::Expire(std::uint64_t oldest_ns) {
  std::erase_if(changes_,
                [&](const Change& c) { return Unshown(c.at_ns, oldest_ns, half_life_) < 0.01; });
}

}  // namespace roam::policy
