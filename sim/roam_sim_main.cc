// roam-sim: runs the pool's load sharing on simulated nodes and prints one
// JSON object per run on stdout. `--compare` runs every strategy on the
// same workload (same seed).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include "roam/sim/simulation.h"

namespace {

using nlohmann::json;

json QuantilesJson(const roam::sim::Quantiles& q) {
  return {{"mean", q.mean}, {"median", q.median}, {"p99", q.p99}, {"max", q.max}};
}

json SummaryJson(const roam::sim::Options& o, const roam::sim::Summary& s) {
  return {
      {"strategy", std::string(roam::sim::StrategyName(s.strategy))},
      {"nodes", s.nodes},
      {"capacity_cpus", o.capacity_cpus},
      {"load", s.load},
      {"seed", o.seed},
      {"duration_s", o.duration},
      {"burst", o.burst},
      {"processes", s.processes},
      {"unfinished", s.unfinished},
      {"slowdown", QuantilesJson(s.slowdown)},
      {"makespan_s", s.makespan},
      {"ticks", s.ticks},
      {"migrations", s.migrations},
      {"migrations_per_node_second", s.migrations_per_node_second},
      {"remote_placements", s.remote_placements},
      {"refused", s.refused},
      {"info_age_ticks", QuantilesJson(s.info_age)},
      {"worst_in_view_ticks", QuantilesJson(s.worst_in_view)},
      {"puts_per_node_second", s.puts_per_node_second},
      {"put_failures", s.put_failures},
      {"pulls", s.pulls},
      {"wall_s", s.wall.count()},
      {"loop_wall_s", s.loop_wall.count()},
      {"loop_cpu_s", s.loop_cpu.count()},
  };
}

// glibc's malloc takes its settings at startup, from GLIBC_TUNABLES only,
// and two help a large pool, which spreads 3.5 GB of small objects that
// each tick touches at random (100,000 nodes):
//   - glibc.malloc.hugetlb=1: the heap on transparent huge pages (this
//     kernel's THP mode is commonly `madvise`). With 4 KiB pages nearly
//     every such touch misses the TLB as well as the caches (0.49 -> 0.42
//     s of CPU a tick at 20,000 nodes).
//   - glibc.malloc.tcache_count=65535: a tick allocates a completion for
//     each of its 400,000 puts while the nodes gossip and frees them as the
//     nodes progress; with the default 7 per size most go through the
//     slower bins (0.045 s of 1.4 a tick at 100,000 nodes).
// So the simulator runs itself again with each added that is not set
// already; where exec fails it goes on as it is.
void ExecWithMallocTunables(char** argv) {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  std::string value = tunables != nullptr ? tunables : "";
  bool added = false;
  for (const char* tunable : {"glibc.malloc.hugetlb=1", "glibc.malloc.tcache_count=65535"}) {
    const std::string name(tunable, std::strchr(tunable, '='));
    if (value.find(name) != std::string::npos) continue;
    value += value.empty() ? "" : ":";
    value += tunable;
    added = true;
  }
  if (!added || ::setenv("GLIBC_TUNABLES", value.c_str(), 1) != 0) return;
  ::execv("/proc/self/exe", argv);
}

}  // namespace

int main(int argc, char** argv) {
  ExecWithMallocTunables(argv);
  CLI::App app{"roam-sim: load sharing on simulated nodes (one JSON object per run)"};
  roam::sim::Options o;
  std::string strategy = "mosix";
  bool compare = false;
  double max_info_age = 10, half_life = 2, min_residence = 5;
  app.add_option("--strategy", strategy, "random, exec, mosix, antitask or central")
      ->capture_default_str();
  app.add_flag("--compare", compare, "run every strategy on the same workload");
  app.add_option("--nodes", o.nodes, "simulated nodes")->capture_default_str();
  app.add_option("--capacity", o.capacity_cpus, "CPUs per node")->capture_default_str();
  app.add_option("--load", o.load, "mean load of the pool's CPUs")->capture_default_str();
  app.add_option("--duration", o.duration, "seconds of arrivals; then until all are done")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "the workload's seed")->capture_default_str();
  app.add_option("--burst", o.burst, "processes started on node 0 at t = 0")->capture_default_str();
  app.add_option("--tick", o.tick, "seconds between ticks")->capture_default_str();
  app.add_option("--max-ticks", o.max_ticks, "stop after this many ticks (0: run to the end)")
      ->capture_default_str();
  app.add_option("--fanout", o.fanout, "peers written each tick")->capture_default_str();
  app.add_option("--view", o.view_capacity, "nodes a view holds")->capture_default_str();
  app.add_option("--window", o.window, "vectors per written window")->capture_default_str();
  app.add_option("--slots", o.slots, "slots of a load board")->capture_default_str();
  app.add_option("--half-life", half_life, "load sampler half-life, seconds")
      ->capture_default_str();
  app.add_option("--max-info-age", max_info_age, "oldest vector the policy uses, seconds")
      ->capture_default_str();
  app.add_option("--margin", o.policy.placement_margin, "placement margin")->capture_default_str();
  app.add_option("--spread", o.policy.choice_spread, "choice spread")->capture_default_str();
  app.add_option("--hysteresis", o.policy.hysteresis, "rebalancing hysteresis")
      ->capture_default_str();
  app.add_option("--min-residence", min_residence, "seconds before a process moves again")
      ->capture_default_str();
  app.add_option("--age-factor", o.policy.age_factor, "age criterion factor")
      ->capture_default_str();
  app.add_option("--max-moves", o.policy.max_moves_per_round, "moves a node starts per tick")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto ns = [](double s) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
  };
  o.policy.load_half_life = ns(half_life);
  o.policy.max_info_age = ns(max_info_age);
  o.policy.min_residence = ns(min_residence);

  std::vector<roam::sim::Strategy> strategies;
  if (compare) {
    strategies = {roam::sim::Strategy::kRandom, roam::sim::Strategy::kExec,
                  roam::sim::Strategy::kMosix, roam::sim::Strategy::kAntiTask,
                  roam::sim::Strategy::kCentral};
  } else {
    auto s = roam::sim::ParseStrategy(strategy);
    if (!s) {
      std::cerr << "roam-sim: " << s.error().ToString() << "\n";
      return 2;
    }
    strategies = {*s};
  }
  for (roam::sim::Strategy s : strategies) {
    o.strategy = s;
    auto summary = roam::sim::Run(o);
    if (!summary) {
      std::cerr << "roam-sim: " << summary.error().ToString() << "\n";
      return 1;
    }
    std::cout << SummaryJson(o, *summary).dump() << std::endl;
  }
  return 0;
}
