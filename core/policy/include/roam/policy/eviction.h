// Eviction (Condor, Sprite): a node that must empty itself of guests, on
// `roam drain NODE` or when its owner returns in owner mode, sends every
// guest away at once, whatever its age: to the least-loaded peer that
// accepts guests, or to its home, which always takes its own processes
// back (Condor re-places; Sprite sends home). Also how the node's flags
// follow from drain and owner state, so that peers stop sending guests.
//
// Pure functions; the daemon and roam-sim run the same code.
//
// Thread-safety: none needed; no state of their own.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "roam/load/load_vector.h"
#include "roam/policy/config.h"
#include "roam/policy/load_ledger.h"
#include "roam/policy/rebalance.h"

namespace roam::policy {

struct EvictionPlan {
  std::vector<Move> moves;
  std::vector<std::uint64_t> unmovable;  // guests capture refuses: they stay
};

// Where each guest (a candidate whose home is not `own`'s node) goes; the
// node's own processes stay. Peers within `choice_spread` of the best are
// drawn from at random; the ledger is updated as each guest is placed, so
// guests spread over several targets.
EvictionPlan ChooseEvictions(const load::LoadVector& own, std::span<const load::LoadVector> peers,
                             std::span<const Candidate> processes, const LoadLedger& ledger,
                             std::uint64_t now_ns, const PolicyConfig& config,
                             std::mt19937_64& rng);

// Owner mode: whether the owner counts as present, from the time since
// their last input (a keyboard, a login session's activity). Present at
// once on input; away after `owner_idle_after` without.
bool OwnerActive(std::chrono::nanoseconds since_last_input, const PolicyConfig& config);

// The LoadFlag bits a node publishes: it accepts guests unless it is
// draining, or in owner mode with its owner present.
std::uint8_t NodeFlags(bool draining, bool owner_mode, bool owner_active);

// Whether a node in this state must send its guests away.
inline bool MustEvict(std::uint8_t flags) {
  return (flags & (load::kDraining | load::kOwnerActive)) != 0;
}

}  // namespace roam::policy
