#include "roam/policy/eviction.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "policy_testing.h"

namespace roam::policy {
namespace {

using std::chrono::seconds;
using testing::kSecond;
using testing::Vector;

constexpr std::uint64_t kNow = 100 * kSecond;

Candidate Guest(std::uint64_t id, std::uint32_t home, bool movable = true) {
  return Candidate{
      .id = id, .home = home, .cpu_age = seconds(0), .arrived_ns = kNow, .movable = movable};
}

class EvictionTest : public ::testing::Test {
 protected:
  PolicyConfig config_;
  LoadLedger ledger_{config_.load_half_life};
  std::mt19937_64 rng_{5};
};

TEST_F(EvictionTest, EveryGuestLeavesWhateverItsAgeAndOwnProcessesStay) {
  const auto own = Vector(1, 5.0, 1, kNow, load::kDraining);
  const std::vector peers = {Vector(2, 0.0, 1, kNow), Vector(3, 0.0, 1, kNow),
                             Vector(4, 0.0, 1, kNow, load::kOwnerActive)};
  const std::vector processes = {Guest(10, 4), Guest(11, 4), Guest(12, 4), Guest(13, 4),
                                 Guest(14, /*home=*/1)};
  const EvictionPlan plan = ChooseEvictions(own, peers, processes, ledger_, kNow, config_, rng_);
  EXPECT_TRUE(plan.unmovable.empty());
  std::map<std::uint32_t, int> to;
  for (const Move& m : plan.moves) {
    EXPECT_NE(m.id, 14u);
    ++to[m.target];
  }
  EXPECT_EQ(to, (std::map<std::uint32_t, int>{{2, 2}, {3, 2}}));
}

TEST_F(EvictionTest, WithNoPeerTakingGuestsEachGoesHome) {
  const auto own = Vector(1, 2.0, 1, kNow, load::kOwnerActive);
  const std::vector peers = {Vector(2, 0.0, 1, kNow, load::kDraining)};
  const std::vector processes = {Guest(10, 2), Guest(11, 3)};
  const EvictionPlan plan = ChooseEvictions(own, peers, processes, ledger_, kNow, config_, rng_);
  ASSERT_EQ(plan.moves.size(), 2u);
  EXPECT_EQ(plan.moves[0].target, 2u);
  EXPECT_DOUBLE_EQ(plan.moves[0].target_load_per_cpu, 1.0);
  EXPECT_EQ(plan.moves[1].target, 3u);
  EXPECT_EQ(plan.moves[1].target_load_per_cpu, std::numeric_limits<double>::infinity());
}

TEST_F(EvictionTest, AGuestCaptureRefusesIsListedAndStays) {
  const auto own = Vector(1, 2.0, 1, kNow, load::kDraining);
  const std::vector peers = {Vector(2, 0.0, 1, kNow)};
  const std::vector processes = {Guest(10, 2, /*movable=*/false), Guest(11, 2)};
  const EvictionPlan plan = ChooseEvictions(own, peers, processes, ledger_, kNow, config_, rng_);
  EXPECT_EQ(plan.unmovable, std::vector<std::uint64_t>{10});
  ASSERT_EQ(plan.moves.size(), 1u);
  EXPECT_EQ(plan.moves[0].id, 11u);
}

TEST_F(EvictionTest, TheOwnerIsPresentAtOnceOnInputAndAwayAfterTheIdleTime) {
  EXPECT_TRUE(OwnerActive(seconds(0), config_));
  EXPECT_TRUE(OwnerActive(seconds(29), config_));
  EXPECT_FALSE(OwnerActive(seconds(30), config_));
}

TEST_F(EvictionTest, FlagsFollowDrainAndOwnerState) {
  EXPECT_EQ(NodeFlags(false, false, true), load::kAccepting);  // owner mode off: owner ignored
  EXPECT_EQ(NodeFlags(false, true, false), load::kAccepting);
  EXPECT_EQ(NodeFlags(false, true, true), load::kOwnerActive);
  EXPECT_EQ(NodeFlags(true, false, false), load::kDraining);
  EXPECT_FALSE(MustEvict(NodeFlags(false, true, false)));
  EXPECT_TRUE(MustEvict(NodeFlags(false, true, true)));
  EXPECT_TRUE(MustEvict(NodeFlags(true, false, false)));
}

}  // namespace
}  // namespace roam::policy
