// What a node has done to the pool's load that the load vectors do not
// show yet. A vector carries a smoothed load (load::LoadSampler): when a
// process arrives at a node at time t, the node's smoothed load climbs
// toward the new level and still lacks 1000 x 2^(-(s - t) / half_life)
// milli-tasks in a vector sampled at s (all of it in a vector sampled
// before t). The ledger records each such change (a placement or move to a
// target, +1000; a move away from a source, -1000) and adds the part a
// vector does not show yet, so that a node does not pick the same target
// for every process before that target's vectors catch up, and does not
// shed twice for one excess process (MOSIX's and Sprite's herd effect).
//
// Thread-safety: used by one thread at a time. A value type.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "roam/load/load_vector.h"

namespace roam::policy {

class LoadLedger {
 public:
  explicit LoadLedger(std::chrono::nanoseconds half_life) : half_life_(half_life) {}

  // `delta_milli` runnable tasks (x 1000) at `node` from `at_ns` (the
  // pool's clock) on.
  void Record(std::uint32_t node, std::uint64_t at_ns, std::int32_t delta_milli);

  // `v`'s load, milli-tasks, with what it does not show yet of recorded
  // changes at its node; never below 0.
  double Adjusted(const load::LoadVector& v) const;
  // The same, per CPU offered (infinite for a node that offers none).
  double AdjustedPerCpu(const load::LoadVector& v) const;

  // Drops changes that every vector sampled at `oldest_ns` or later shows
  // to within 1%. Pass the oldest sample the policy still reads (now less
  // PolicyConfig::max_info_age).
  void Expire(std::uint64_t oldest_ns);

  std::size_t size() const { return changes_.size(); }

 private:
  struct Change {
    std::uint32_t node;
    std::uint64_t at_ns;
    std::int32_t delta_milli;
  };
  std::chrono::nanoseconds half_life_;
  std::vector<Change> changes_;
};

}  // namespace roam::policy
