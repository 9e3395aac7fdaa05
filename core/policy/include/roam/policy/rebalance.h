// Preemptive rebalancing, MOSIX-style, with Harchol-Balter and Downey's
// age criterion: a node with more runnable tasks than CPUs moves a process
// to a lighter peer when the process has run long enough that it will
// probably run much longer than its move costs (under heavy-tailed
// lifetimes, a process's expected remaining life grows with its age).
//
// Nothing ping-pongs: a move is made only if the target, with the process,
// stays lighter than the source by `hysteresis` (so the reverse move is
// never worth making), a process that arrived within `min_residence` does
// not move again, and moves already made count through the ledger until
// the vectors show them.
//
// Pure functions (load information, ledger, time and random source passed
// in); the daemon and roam-sim run the same code.
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

namespace roam::policy {

// A process running at this node, as the policy sees it.
struct Candidate {
  std::uint64_t id = 0;                 // the caller's handle for it
  std::uint32_t home = 0;               // its home node
  std::chrono::nanoseconds cpu_age{0};  // CPU time it has used
  std::uint64_t resident_bytes = 0;
  std::uint64_t arrived_ns = 0;  // when it arrived here by a move; 0: started here
  bool movable = true;           // false: capture refuses it (the caller knows why)
};

struct Move {
  std::uint64_t id = 0;
  std::uint32_t target = 0;
  double source_load_per_cpu = 0;  // before the move
  double target_load_per_cpu = 0;  // with the process
  std::chrono::nanoseconds cost{0};
};

// The estimated cost of moving a process of `resident_bytes`.
std::chrono::nanoseconds MigrationCost(std::uint64_t resident_bytes, const PolicyConfig& config);

// Up to `max_moves_per_round` moves from `own`'s node: each to a fresh,
// accepting peer drawn among the lightest (`choice_spread`), of the
// eligible process with the most CPU age per unit of cost. Empty when the
// node is not overloaded, no peer is light enough, or no process is old
// enough. The caller asks each target (Admit), records admitted moves in
// the ledger, and migrates.
std::vector<Move> ChooseMoves(const load::LoadVector& own, std::span<const load::LoadVector> peers,
                              std::span<const Candidate> candidates, const LoadLedger& ledger,
                              std::uint64_t now_ns, const PolicyConfig& config,
                              std::mt19937_64& rng);

}  // namespace roam::policy
