// The simulator's workload, fixed so that strategies are compared on the
// same jobs: CPU demands from a Pareto distribution with alpha = 1 (P(L >
// t) = 1/t for t >= 1 s, truncated at 10,000 s: Harchol-Balter and
// Downey's measured UNIX lifetimes), Poisson arrivals in which half the
// nodes receive twice the rate of the others, the rates set so that the
// pool's mean load is a given fraction of its CPUs, and resident sizes
// uniform in 1..512 MiB.
//
// Thread-safety: a generator is used by one thread at a time. It draws
// from its own seeded generator only, so the same seed gives the same
// jobs whatever the strategy does with them.
#pragma once

#include <cstdint>
#include <random>

namespace roam::sim {

// The truncated Pareto demand: density 1/t^2 on [1, cap], renormalized.
class ParetoDemand {
 public:
  explicit ParetoDemand(double cap_seconds = 10'000.0) : cap_(cap_seconds) {}
  // Seconds of CPU, by inversion of the distribution function.
  double Draw(std::mt19937_64& rng) const;
  // ln(cap) / (1 - 1/cap): 9.21 s for a cap of 10,000 s.
  double Mean() const;
  // P(L > t).
  double Tail(double t) const;

 private:
  double cap_;
};

struct Arrival {
  double time = 0;         // seconds from the start
  std::uint32_t node = 0;  // where it is started
  double demand = 0;       // CPU seconds it needs
  std::uint64_t resident_bytes = 0;
};

class Workload {
 public:
  struct Options {
    std::uint32_t nodes = 1000;
    double capacity_cpus = 1.0;  // each node's
    double load = 0.7;           // mean demand over the pool's CPUs
    double duration = 3600;      // arrivals in [0, duration) seconds
    std::uint64_t seed = 1;
  };
  explicit Workload(Options options);

  // The next arrival in time order; false once past the duration.
  bool Next(Arrival& out);
  // A job of the same distributions at `node` at time 0 (bursts).
  Arrival Burst(std::uint32_t node);

  // Arrivals per second into the whole pool, and into one node.
  double total_rate() const { return total_rate_; }
  double NodeRate(std::uint32_t node) const;
  // The first half of the nodes (by id) receive twice the rate.
  bool Heavy(std::uint32_t node) const { return node < heavy_; }

 private:
  Options options_;
  ParetoDemand demand_;
  std::mt19937_64 rng_;
  std::uint32_t heavy_;  // nodes [0, heavy_) have weight 2, the rest 1
  double total_rate_;
  double clock_ = 0;
};

}  // namespace roam::sim
