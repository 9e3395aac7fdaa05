#include "roam/load/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace roam::load {
namespace {

std::uint32_t Milli(double x) {
  const double m = std::round(std::max(x, 0.0) * 1000);
  return m >= std::numeric_limits<std::uint32_t>::max() ? std::numeric_limits<std::uint32_t>::max()
                                                        : static_cast<std::uint32_t>(m);
}

}  // namespace

LoadSampler::LoadSampler(std::uint32_t node, std::uint32_t epoch, Options options)
    : node_(node), epoch_(epoch), options_(options) {}

LoadVector LoadSampler::Sample(const NodeReadings& readings, std::uint64_t now_ns) {
  if (sequence_ == 0) {
    load_ = readings.runnable;  // no history: the reading itself
  } else {
    // A clock that went back counts as no time passed.
    const double elapsed_ns = now_ns > last_ns_ ? static_cast<double>(now_ns - last_ns_) : 0.0;
    const double half_life_ns =
        std::max(1.0, std::chrono::duration<double, std::nano>(options_.half_life).count());
    const double keep = std::exp2(-elapsed_ns / half_life_ns);
    load_ = load_ * keep + readings.runnable * (1 - keep);
  }
  last_ns_ = now_ns;
  ++sequence_;
  LoadVector v(node_, epoch_, sequence_, now_ns, Milli(load_), Milli(readings.capacity_cpus),
               readings.free_memory_mib, readings.guests, readings.processes, readings.flags);
  for (std::size_t i = 0; i < readings.free_cores.size(); ++i) {
    v.mutable_free_cores()->Mutate(i, readings.free_cores[i]);
  }
  return v;
}

}  // namespace roam::load
