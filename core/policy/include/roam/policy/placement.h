// Exec-time placement (MOSIX, Sprite): where a new process should start,
// chosen from what this node knows of the pool's load, and the target's
// check when a peer asks it to take one. Also `roam idle`'s question: which
// nodes have room (Sprite's idle-host query).
//
// Pure functions: the load information, the ledger of changes not yet
// visible, the time and the random source are all passed in, so that the
// daemon and roam-sim run the same code.
//
// Thread-safety: none needed; no state of their own.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "roam/load/load_vector.h"
#include "roam/policy/config.h"
#include "roam/policy/load_ledger.h"

namespace roam::policy {

struct PlacementChoice {
  std::uint32_t node = 0;
  double load_per_cpu = 0;  // the chosen node's, with the new process
  // The starting node's own, with the new process: what a target's Admit
  // is asked to beat.
  double here_load_per_cpu = 0;
};

// Where a process started at `own`'s node should run: that node itself,
// unless a peer that accepts guests and whose vector is fresh offers a
// load per CPU lower by `placement_margin` (with the process added to
// each). A node that does not accept guests (draining, its owner active)
// sends its new processes to the best peer if there is one. Peers within
// `choice_spread` of the best are drawn from at random. The caller records
// the choice in the ledger and asks the target (Admit) before starting.
PlacementChoice ChoosePlacement(const load::LoadVector& own,
                                std::span<const load::LoadVector> peers, const LoadLedger& ledger,
                                std::uint64_t now_ns, const PolicyConfig& config,
                                std::mt19937_64& rng);

// At a target asked to reserve room for a process that would otherwise run
// at `asker_load_per_cpu`: yes while it accepts guests and its own load per
// CPU with the process (and what it admitted before, in `ledger`) is lower.
// The asker chose from vectors that may be old; this is the fresh check.
bool Admit(const load::LoadVector& own, const LoadLedger& ledger, double asker_load_per_cpu);

struct IdleNode {
  std::uint32_t node = 0;
  double free_cpus = 0;  // CPUs offered minus runnable tasks
  double load_per_cpu = 0;
  std::uint64_t sampled_ns = 0;
};

// The nodes, this one included, that accept guests, have a fresh vector
// and at least one CPU free; most room first.
std::vector<IdleNode> IdleNodes(const load::LoadVector& own,
                                std::span<const load::LoadVector> peers, const LoadLedger& ledger,
                                std::uint64_t now_ns, const PolicyConfig& config);

}  // namespace roam::policy
