// The knobs of roam's load-sharing policy, one struct for placement,
// rebalancing and eviction, with the defaults a pool starts with.
// docs/policy.md says what each one trades.
//
// Thread-safety: a value type.
#pragma once

#include <chrono>
#include <cstdint>

#include "roam/base/error.h"

namespace roam::policy {

using std::chrono_literals::operator""ms;
using std::chrono_literals::operator""s;

struct PolicyConfig {
  // Vectors sampled longer ago than this are not chosen from: the node
  // may be gone, or its load long changed.
  std::chrono::nanoseconds max_info_age = 10s;
  // The sampler's half-life (load::LoadSampler::Options): how fast a
  // node's smoothed load comes to show a process that arrived or left.
  std::chrono::nanoseconds load_half_life = 2s;

  // Exec-time placement: a peer is chosen over this node only if its load
  // per CPU with the new process is lower by at least this much.
  double placement_margin = 0.25;
  // Targets whose load per CPU is within this of the best are equally
  // good, and one of them is drawn at random, so that nodes reading the
  // same information do not all pick the same target.
  double choice_spread = 0.25;

  // Preemptive rebalancing (MOSIX). A node sheds only while it has more
  // runnable tasks than CPUs, and only to a target whose load per CPU with
  // the process added stays below the node's by `hysteresis` (a move that
  // would be worth reversing is never made).
  double hysteresis = 0.5;
  // A process that arrived less than this long ago does not move again.
  std::chrono::nanoseconds min_residence = 5s;
  // Migration cost estimate: a fixed part plus resident bytes at this rate.
  std::chrono::nanoseconds migration_fixed_cost = 100ms;
  double migration_bytes_per_second = 1e9;
  // Age-based eligibility (Harchol-Balter and Downey): a process may move
  // when its CPU age exceeds age_factor x cost / (source - target load).
  double age_factor = 1.0;
  // Moves a node starts per rebalancing round.
  std::uint32_t max_moves_per_round = 1;

  // Owner mode (Sprite, Condor): the owner counts as idle after this long
  // without input, and returns at the first input.
  std::chrono::nanoseconds owner_idle_after = 30s;
};

// kInvalidArgument naming the first knob out of range.
Status Validate(const PolicyConfig& config);

}  // namespace roam::policy
