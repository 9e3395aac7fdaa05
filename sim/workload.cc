#include "roam/sim/workload.h"

#include <cmath>

namespace roam::sim {
namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

double ParetoDemand::Draw(std::mt19937_64& rng) const {
  // F(t) = (1 - 1/t) / (1 - 1/cap) on [1, cap].
  const double u = Uniform01(rng);
  return 1.0 / (1.0 - u * (1.0 - 1.0 / cap_));
}

double ParetoDemand::Mean() const { return std::log(cap_) / (1.0 - 1.0 / cap_); }

double ParetoDemand::Tail(double t) const {
  if (t <= 1.0) return 1.0;
  if (t >= cap_) return 0.0;
  return (1.0 / t - 1.0 / cap_) / (1.0 - 1.0 / cap_);
}

Workload::Workload(Options options)
    : options_(options), rng_(options.seed), heavy_(options.nodes / 2) {
  total_rate_ = options_.load * options_.nodes * options_.capacity_cpus / demand_.Mean();
}

double Workload::NodeRate(std::uint32_t node) const {
  const double weights = 2.0 * heavy_ + (options_.nodes - heavy_);
  return total_rate_ * (Heavy(node) ? 2.0 : 1.0) / weights;
}

bool Workload::Next(Arrival& out) {
  if (total_rate_ <= 0 || options_.nodes == 0) return false;
  // One Poisson stream for the pool; each arrival goes to a node drawn by
  // weight, which splits it into the nodes' independent streams.
  clock_ += -std::log1p(-Uniform01(rng_)) / total_rate_;
  if (clock_ >= options_.duration) return false;
  const std::uint64_t weights = 2 * std::uint64_t{heavy_} + (options_.nodes - heavy_);
  const std::uint64_t w = std::uniform_int_distribution<std::uint64_t>(0, weights - 1)(rng_);
  const auto node = static_cast<std::uint32_t>(w < 2 * std::uint64_t{heavy_} ? w / 2 : w - heavy_);
  out = Burst(node);
  out.time = clock_;
  return true;
}

Arrival Workload::Burst(std::uint32_t node) {
  Arrival a;
  a.node = node;
  a.demand = demand_.Draw(rng_);
  a.resident_bytes = std::uniform_int_distribution<std::uint64_t>(1, 512)(rng_) * kMiB;
  return a;
}

}  // namespace roam::sim
