// The simulator's workload: the demand distribution's mean and tail, the
// arrival rates that make the asked-for load, and the heavy half of the
// nodes receiving twice the arrivals.
#include "roam/sim/workload.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>

namespace roam::sim {
namespace {

TEST(ParetoDemandTest, MeanAndTailMatchTheTruncatedDistribution) {
  const ParetoDemand demand;
  EXPECT_NEAR(demand.Mean(), std::log(10'000.0) / (1 - 1e-4), 1e-9);
  EXPECT_NEAR(demand.Tail(10), 0.1, 0.001);
  std::mt19937_64 rng(7);
  constexpr int kDraws = 1'000'000;
  double sum = 0;
  int above_10 = 0, above_100 = 0;
  double lowest = 1e9, highest = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double d = demand.Draw(rng);
    sum += d;
    above_10 += d > 10 ? 1 : 0;
    above_100 += d > 100 ? 1 : 0;
    lowest = std::min(lowest, d);
    highest = std::max(highest, d);
  }
  EXPECT_GE(lowest, 1.0);
  EXPECT_LE(highest, 10'000.0);
  // The standard deviation is about 100 s: the mean of a million draws is
  // within 0.3 s at 3 sigma.
  EXPECT_NEAR(sum / kDraws, demand.Mean(), 0.3);
  EXPECT_NEAR(static_cast<double>(above_10) / kDraws, 0.1, 0.002);
  EXPECT_NEAR(static_cast<double>(above_100) / kDraws, 0.01, 0.0005);
}

TEST(WorkloadTest, ArrivalsMakeTheLoadAndTheHeavyHalfGetsTwice) {
  Workload w({.nodes = 100, .capacity_cpus = 1, .load = 0.7, .duration = 2000, .seed = 3});
  EXPECT_NEAR(w.total_rate(), 0.7 * 100 / ParetoDemand().Mean(), 1e-9);
  EXPECT_NEAR(w.NodeRate(0), 2 * w.NodeRate(99), 1e-12);
  std::uint64_t heavy = 0, light = 0;
  double last = 0;
  Arrival a;
  while (w.Next(a)) {
    ASSERT_GE(a.time, last);
    ASSERT_LT(a.time, 2000);
    ASSERT_LT(a.node, 100u);
    ASSERT_GE(a.resident_bytes, std::uint64_t{1} << 20);
    ASSERT_LE(a.resident_bytes, std::uint64_t{512} << 20);
    last = a.time;
    (w.Heavy(a.node) ? heavy : light)++;
  }
  const double expected = w.total_rate() * 2000;  // about 15,200
  EXPECT_NEAR(static_cast<double>(heavy + light), expected, 4 * std::sqrt(expected));
  EXPECT_NEAR(static_cast<double>(heavy) / static_cast<double>(light), 2.0, 0.1);
}

TEST(WorkloadTest, TheSameSeedGivesTheSameJobs) {
  Workload a({.nodes = 10, .capacity_cpus = 1, .load = 0.5, .duration = 100, .seed = 9});
  Workload b({.nodes = 10, .capacity_cpus = 1, .load = 0.5, .duration = 100, .seed = 9});
  Arrival x, y;
  int n = 0;
  while (a.Next(x)) {
    ASSERT_TRUE(b.Next(y));
    EXPECT_EQ(x.time, y.time);
    EXPECT_EQ(x.node, y.node);
    EXPECT_EQ(x.demand, y.demand);
    EXPECT_EQ(x.resident_bytes, y.resident_bytes);
    ++n;
  }
  EXPECT_FALSE(b.Next(y));
  EXPECT_GT(n, 10);
}

}  // namespace
}  // namespace roam::sim
