// roam-sim: the pool's load sharing at 10 to 100,000 simulated nodes, on a
// virtual clock, running the same code as roamd: each node samples its load
// (load::LoadSampler), spreads it with the MOSIX disseminator
// (gossip::Disseminator over a transport::FakeNetwork whose clock is the
// virtual one) and decides with roam::policy's functions, reading its own
// view. Processes run by processor sharing on their node (each runnable
// process gets capacity / n of the node's CPUs, at most one); a process
// that moves does not run for its migration cost (fixed part plus its
// resident size at the copy rate) and then runs at the target.
//
// Strategies:
//   random   each new process starts at a node drawn at random; no moves
//   exec     exec-time placement only (ChoosePlacement, Admit at the target)
//   mosix    exec-time placement, and each tick MOSIX preemptive moves
//            (ChooseMoves, Admit at the target)
//   antitask exec-time placement, with Lau et al.'s anti-tasks instead of
//            MOSIX dissemination (gossip::AntiTasks): light nodes send
//            requests for work toward heavy ones, and a heavy node that
//            keeps some moves processes to their origins only
//            (ChooseMoves over those, Admit at the target)
//   central  Sprite-like reference: a central server that knows every
//            node's exact, current load places each new process on the
//            least-loaded node; no moves
// random and central read no view: their nodes neither sample nor gossip
// (no puts). antitask's nodes connect to a peer when an anti-task goes
// there; the others' to `fanout` random peers a tick.
//
// Starting a process elsewhere (every strategy but random's own node)
// costs the fixed part of a migration (an exec has no memory to copy).
// Processes of a burst (Options::burst) are started on node 0 as they are,
// with no placement: only preemptive moves spread them.
//
// Thread-safety: Run is reentrant; one simulation runs on the calling
// thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"
#include "roam/gossip/dissemination.h"
#include "roam/load/load_board.h"
#include "roam/policy/config.h"
#include "roam/sim/workload.h"

namespace roam::sim {

enum class Strategy { kRandom, kExec, kMosix, kAntiTask, kCentral };

std::string_view StrategyName(Strategy s);
Result<Strategy> ParseStrategy(std::string_view name);

struct Options {
  Strategy strategy = Strategy::kMosix;
  std::uint32_t nodes = 1000;
  double capacity_cpus = 1.0;  // each node's
  double load = 0.7;           // the workload's mean load (0: no arrivals)
  double duration = 3600;      // seconds of arrivals; then until all are done
  std::uint64_t seed = 1;      // the workload's; the policy's and gossip's follow from it
  std::uint32_t burst = 0;     // processes started on node 0 at t = 0
  // Jobs given explicitly (tests), in addition to the workload's.
  std::vector<Arrival> jobs;

  double tick = 1.0;  // seconds between samples, gossip and rebalancing
  // Stop after this many ticks even if processes remain (0: run to the end).
  std::uint64_t max_ticks = 0;

  // Gossip: roamd's defaults (fanout: MOSIX dissemination's only).
  std::uint32_t fanout = gossip::Disseminator::Options{}.fanout;
  std::uint32_t view_capacity =
      static_cast<std::uint32_t>(gossip::Disseminator::Options{}.view_capacity);
  std::uint32_t window = load::BoardShape{}.window;
  std::uint32_t slots = load::BoardShape{}.slots;

  policy::PolicyConfig policy;  // load_half_life is also the sampler's

  // Keep one ProcessRecord per process in the result (tests).
  bool record_processes = false;
};

struct ProcessRecord {
  std::uint32_t origin = 0;  // where it was started
  std::uint32_t node = 0;    // where it finished
  double start = 0;
  double finish = 0;
  double demand = 0;
  std::uint64_t resident_bytes = 0;
  std::uint32_t moves = 0;  // preemptive migrations
};

struct Quantiles {
  double mean = 0;
  double median = 0;
  double p99 = 0;
  double max = 0;
};

struct Summary {
  Strategy strategy = Strategy::kMosix;
  std::uint32_t nodes = 0;
  double load = 0;
  std::uint64_t processes = 0;   // finished
  std::uint64_t unfinished = 0;  // still running when max_ticks stopped the run
  Quantiles slowdown;            // response time / CPU demand
  double makespan = 0;           // when the last process finished (s)
  std::uint64_t ticks = 0;
  std::uint64_t migrations = 0;         // preemptive moves
  std::uint64_t refused = 0;            // moves and placements a target did not admit
  std::uint64_t remote_placements = 0;  // new processes started elsewhere
  double migrations_per_node_second = 0;
  // Age in ticks of the view entries the policy read (median, p99, the
  // worst), and of the stalest entry of each view read (median, p99).
  Quantiles info_age;
  Quantiles worst_in_view;
  double puts_per_node_second = 0;
  std::uint64_t put_failures = 0;
  std::uint64_t pulls = 0;  // anti-tasks kept by heavy nodes (antitask)
  std::chrono::duration<double> wall{0};
  // Of it, the run proper (ticks, events, arrivals): without building and
  // tearing down the pool, which at 100,000 nodes take seconds.
  std::chrono::duration<double> loop_wall{0};
  std::chrono::duration<double> loop_cpu{0};  // the process's CPU time in it
  std::vector<ProcessRecord> records;         // with Options::record_processes
};

// Runs one simulation. kInvalidArgument for options out of range.
Result<Summary> Run(const Options& options);

}  // namespace roam::sim
