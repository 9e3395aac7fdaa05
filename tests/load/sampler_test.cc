#include "roam/load/sampler.h"

#include <gtest/gtest.h>

#include <cmath>

namespace roam::load {
namespace {

constexpr std::uint64_t kSecond = 1'000'000'000;

TEST(LoadSamplerTest, ABurstFadesAndASteadyLoadShowsWithinAFewHalfLives) {
  LoadSampler sampler(4, 7, {.half_life = std::chrono::seconds(2)});
  NodeReadings idle{.runnable = 0, .capacity_cpus = 2};
  LoadVector v = sampler.Sample(idle, 10 * kSecond);
  EXPECT_EQ(v.node(), 4u);
  EXPECT_EQ(v.epoch(), 7u);
  EXPECT_EQ(v.sequence(), 1u);
  EXPECT_EQ(v.capacity_milli(), 2000u);
  EXPECT_EQ(v.load_milli(), 0u);

  // One busy second, half a half-life: 1 - 2^-0.5, 29% of the reading.
  NodeReadings busy{.runnable = 4, .capacity_cpus = 2};
  v = sampler.Sample(busy, 11 * kSecond);
  EXPECT_NEAR(sampler.load(), 4 * (1 - 0.7071), 0.01);
  EXPECT_EQ(v.sequence(), 2u);
  // Idle again for two half-lives: a quarter of it is left.
  sampler.Sample(idle, 15 * kSecond);
  EXPECT_NEAR(sampler.load(), 4 * (1 - 0.7071) * 0.25, 0.01);

  // Busy for ten half-lives: it reads as busy.
  for (std::uint64_t t = 16; t <= 35; ++t) v = sampler.Sample(busy, t * kSecond);
  EXPECT_NEAR(LoadPerCpu(v), 2.0, 0.01);
}

TEST(LoadSamplerTest, TheFirstSampleIsTheReadingAndAClockGoingBackChangesNothing) {
  LoadSampler sampler(1, 1, {});
  NodeReadings r{.runnable = 3,
                 .capacity_cpus = 1,
                 .free_memory_mib = 512,
                 .guests = 2,
                 .processes = 5,
                 .free_cores = {1, 2, 0, 0, 0, 0, 0, 4},
                 .flags = kAccepting};
  LoadVector v = sampler.Sample(r, 5 * kSecond);
  EXPECT_EQ(v.load_milli(), 3000u);
  EXPECT_EQ(v.free_memory_mib(), 512u);
  EXPECT_EQ(v.guests(), 2u);
  EXPECT_EQ(v.processes(), 5u);
  EXPECT_EQ(v.free_cores()->Get(1), 2u);
  EXPECT_EQ(v.free_cores()->Get(7), 4u);
  EXPECT_EQ(v.flags(), kAccepting);
  r.runnable = 0;
  v = sampler.Sample(r, 4 * kSecond);
  EXPECT_EQ(v.load_milli(), 3000u);
  EXPECT_EQ(v.sampled_ns(), 4 * kSecond);
}

TEST(LoadSamplerTest, ANodeOfferingNoCpuIsInfinitelyLoaded) {
  LoadSampler sampler(1, 1, {});
  EXPECT_TRUE(std::isinf(LoadPerCpu(sampler.Sample({.runnable = 0, .capacity_cpus = 0}, 1))));
}

}  // namespace
}  // namespace roam::load
