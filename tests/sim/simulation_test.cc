// roam-sim's simulated pool: processor sharing, what a move costs, a burst
// spread by preemptive moves, and runs that repeat exactly for a seed.
#include "roam/sim/simulation.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>

namespace roam::sim {
namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

Options Quiet(Strategy strategy, std::uint32_t nodes) {
  Options o;
  o.strategy = strategy;
  o.nodes = nodes;
  o.load = 0;  // no workload: only the jobs and the burst given
  o.duration = 0;
  o.record_processes = true;
  return o;
}

TEST(SimulationTest, TwoJobsShareOneCpu) {
  Options o = Quiet(Strategy::kExec, 1);
  o.jobs = {{.time = 0, .node = 0, .demand = 1, .resident_bytes = kMiB},
            {.time = 0, .node = 0, .demand = 1, .resident_bytes = kMiB}};
  auto s = sim::Run(o);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  ASSERT_EQ(s->processes, 2u);
  for (const ProcessRecord& r : s->records) EXPECT_NEAR(r.finish, 2.0, 1e-9);
  EXPECT_NEAR(s->slowdown.mean, 2.0, 1e-9);
  EXPECT_NEAR(s->makespan, 2.0, 1e-9);
}

TEST(SimulationTest, AJobAloneRunsAtOneCpuWhateverTheCapacity) {
  Options o = Quiet(Strategy::kExec, 1);
  o.capacity_cpus = 4;
  o.jobs = {{.time = 0.5, .node = 0, .demand = 3, .resident_bytes = kMiB},
            {.time = 0.5, .node = 0, .demand = 6, .resident_bytes = kMiB}};
  auto s = sim::Run(o);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  ASSERT_EQ(s->records.size(), 2u);
  EXPECT_NEAR(s->records[0].finish, 3.5, 1e-9);
  EXPECT_NEAR(s->records[1].finish, 6.5, 1e-9);
}

// Two 20 s jobs on node 0 of two: at 5 s (the clock starts at 0, which
// the policy reads as an arrival at 0 of processes started there, so
// min_residence holds them until then; 2.5 s of CPU each), one moves to
// the idle node. It does not run
// for 0.1 s plus its resident size at 1 GB/s, then runs alone there.
TEST(SimulationTest, AMoveDelaysTheProcessByItsCost) {
  Options o = Quiet(Strategy::kMosix, 2);
  // No placement beats staying: both start on node 0 (at t = 0 node 0
  // already knows node 1 is idle) and only a move spreads them.
  o.policy.placement_margin = 100;
  o.jobs = {{.time = 0, .node = 0, .demand = 20, .resident_bytes = 100 * kMiB},
            {.time = 0, .node = 0, .demand = 20, .resident_bytes = 400 * kMiB}};
  auto s = sim::Run(o);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  ASSERT_EQ(s->migrations, 1u);
  ASSERT_EQ(s->records.size(), 2u);
  const auto moved = std::find_if(s->records.begin(), s->records.end(),
                                  [](const ProcessRecord& r) { return r.moves == 1; });
  ASSERT_NE(moved, s->records.end());
  EXPECT_EQ(moved->node, 1u);
  // The cheaper one moves (the most age per unit of cost).
  EXPECT_EQ(moved->resident_bytes, 100 * kMiB);
  const double cost = 0.1 + static_cast<double>(100 * kMiB) / 1e9;
  EXPECT_NEAR(moved->finish, 5 + cost + 17.5, 1e-6);
  const auto stayed = moved == s->records.begin() ? s->records.begin() + 1 : s->records.begin();
  EXPECT_EQ(stayed->node, 0u);
  EXPECT_NEAR(stayed->finish, 22.5, 1e-6);
}

std::size_t FinishedAway(const Summary& s) {
  return static_cast<std::size_t>(std::count_if(
      s.records.begin(), s.records.end(), [](const ProcessRecord& r) { return r.node != 0; }));
}

TEST(SimulationTest, ABurstSpreadsUnderMosixAndNotUnderRandom) {
  Options o = Quiet(Strategy::kMosix, 4);
  o.burst = 16;
  o.seed = 5;
  auto mosix = sim::Run(o);
  ASSERT_TRUE(mosix.has_value()) << mosix.error().ToString();
  o.strategy = Strategy::kRandom;
  auto random = sim::Run(o);
  ASSERT_TRUE(random.has_value()) << random.error().ToString();
  ASSERT_EQ(mosix->processes, 16u);
  ASSERT_EQ(random->processes, 16u);
  EXPECT_EQ(FinishedAway(*random), 0u);
  EXPECT_EQ(random->migrations, 0u);
  // Three of the four nodes were idle: about three quarters move.
  EXPECT_GE(FinishedAway(*mosix), 8u);
  EXPECT_LT(mosix->makespan, random->makespan);
  EXPECT_LT(mosix->slowdown.mean, random->slowdown.mean);
}

// Under anti-tasks the three idle nodes send requests for work; node 0,
// heavy, keeps them and moves processes to their senders only.
TEST(SimulationTest, ABurstSpreadsUnderAntiTasks) {
  Options o = Quiet(Strategy::kAntiTask, 4);
  o.burst = 16;
  o.seed = 5;
  auto anti = sim::Run(o);
  ASSERT_TRUE(anti.has_value()) << anti.error().ToString();
  o.strategy = Strategy::kExec;
  auto exec = sim::Run(o);
  ASSERT_TRUE(exec.has_value()) << exec.error().ToString();
  ASSERT_EQ(anti->processes, 16u);
  EXPECT_GT(anti->pulls, 0u);
  EXPECT_GE(FinishedAway(*anti), 8u);
  EXPECT_GE(anti->migrations, FinishedAway(*anti));
  EXPECT_EQ(FinishedAway(*exec), 0u);  // a burst is not placed
  EXPECT_LT(anti->makespan, exec->makespan);
  // Nothing travels once no node is light: fewer puts than ticks x nodes.
  EXPECT_GT(anti->puts_per_node_second, 0);
  EXPECT_LT(anti->puts_per_node_second, 4);
}

TEST(SimulationTest, TheSameSeedRepeatsExactly) {
  for (Strategy strategy : {Strategy::kMosix, Strategy::kAntiTask}) {
    SCOPED_TRACE(StrategyName(strategy));
    Options o;
    o.strategy = strategy;
    o.nodes = 40;
    o.load = 0.8;
    o.duration = 200;
    o.seed = 11;
    auto a = sim::Run(o);
    auto b = sim::Run(o);
    ASSERT_TRUE(a.has_value() && b.has_value());
    EXPECT_GT(a->processes, 100u);
    EXPECT_GT(a->migrations, 0u);
    EXPECT_EQ(a->processes, b->processes);
    EXPECT_EQ(a->migrations, b->migrations);
    EXPECT_EQ(a->remote_placements, b->remote_placements);
    EXPECT_EQ(a->pulls, b->pulls);
    EXPECT_EQ(a->slowdown.mean, b->slowdown.mean);
    EXPECT_EQ(a->makespan, b->makespan);
    o.seed = 12;
    auto c = sim::Run(o);
    ASSERT_TRUE(c.has_value());
    EXPECT_NE(a->slowdown.mean, c->slowdown.mean);
  }
}

TEST(SimulationTest, BadOptionsAreRefused) {
  Options o = Quiet(Strategy::kMosix, 0);
  EXPECT_FALSE(sim::Run(o).has_value());
  o.nodes = 2;
  o.jobs = {{.time = 0, .node = 2, .demand = 1, .resident_bytes = kMiB}};
  EXPECT_FALSE(sim::Run(o).has_value());
  EXPECT_FALSE(ParseStrategy("anti-tasks").has_value());
  EXPECT_EQ(*ParseStrategy("antitask"), Strategy::kAntiTask);
  EXPECT_EQ(*ParseStrategy("central"), Strategy::kCentral);
}

}  // namespace
}  // namespace roam::sim
