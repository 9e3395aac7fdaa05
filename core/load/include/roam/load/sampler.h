// A node's load, sampled and smoothed the way MOSIX does it: the number of
// runnable tasks is read every period and folded into an exponentially
// decaying average, so that a burst of short tasks does not look like a
// loaded node and a node that stays busy shows it within a few periods.
// The readings come from a seam (NodeReadings): the daemon reads procfs and
// its cgroups, tests and the simulator give numbers.
//
// Thread-safety: used by one thread at a time.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

#include "roam/load/load_vector.h"

namespace roam::load {

struct NodeReadings {
  double runnable = 0;       // tasks running or ready to run on the node now
  double capacity_cpus = 0;  // the CPUs it offers (its share: quota or cpuset)
  std::uint32_t free_memory_mib = 0;
  std::uint16_t guests = 0;
  std::uint16_t processes = 0;
  std::array<std::uint8_t, 8> free_cores{};  // per NUMA node
  std::uint8_t flags = 0;                    // LoadFlag
};

class LoadSampler {
 public:
  struct Options {
    // Half the weight of a reading is gone after this long.
    std::chrono::milliseconds half_life{2000};
  };
  LoadSampler(std::uint32_t node, std::uint32_t epoch, Options options);

  // Folds in a reading taken at `now_ns` (the pool's clock) and returns the
  // node's vector, with the next sequence number.
  LoadVector Sample(const NodeReadings& readings, std::uint64_t now_ns);

  double load() const { return load_; }

 private:
  std::uint32_t node_;
  std::uint32_t epoch_;
  Options options_;
  std::uint64_t sequence_ = 0;
  std::uint64_t last_ns_ = 0;
  double load_ = 0;
};

}  // namespace roam::load
