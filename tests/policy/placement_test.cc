#include "roam/policy/placement.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "policy_testing.h"

namespace roam::policy {
namespace {

using testing::kSecond;
using testing::Vector;

constexpr std::uint64_t kNow = 100 * kSecond;

class PlacementTest : public ::testing::Test {
 protected:
  PolicyConfig config_;
  LoadLedger ledger_{config_.load_half_life};
  std::mt19937_64 rng_{7};
};

TEST_F(PlacementTest, StaysLocalWhenNoPeerIsBetterByTheMargin) {
  const auto own = Vector(1, 0.0, 1, kNow);
  const std::vector peers = {Vector(2, 0.0, 1, kNow), Vector(3, 0.9, 1, kNow)};
  EXPECT_EQ(ChoosePlacement(own, peers, ledger_, kNow, config_, rng_).node, 1u);
}

TEST_F(PlacementTest, GoesToTheLightestPeer) {
  const auto own = Vector(1, 3.0, 1, kNow);
  const std::vector peers = {Vector(2, 2.0, 1, kNow), Vector(3, 0.0, 1, kNow),
                             Vector(4, 1.0, 1, kNow)};
  const PlacementChoice choice = ChoosePlacement(own, peers, ledger_, kNow, config_, rng_);
  EXPECT_EQ(choice.node, 3u);
  EXPECT_DOUBLE_EQ(choice.load_per_cpu, 1.0);
}

TEST_F(PlacementTest, CountsCpusNotJustTasks) {
  // Two tasks on four CPUs are lighter than one on one.
  const auto own = Vector(1, 3.0, 1, kNow);
  const std::vector peers = {Vector(2, 1.0, 1, kNow), Vector(3, 2.0, 4, kNow)};
  EXPECT_EQ(ChoosePlacement(own, peers, ledger_, kNow, config_, rng_).node, 3u);
}

TEST_F(PlacementTest, SkipsStaleAndNonAcceptingPeers) {
  const auto own = Vector(1, 3.0, 1, kNow);
  const std::uint64_t stale = kNow - config_.max_info_age.count() - 1;
  const std::vector peers = {Vector(2, 0.0, 1, stale), Vector(3, 0.0, 1, kNow, load::kDraining),
                             Vector(4, 0.0, 1, kNow, load::kOwnerActive)};
  EXPECT_EQ(ChoosePlacement(own, peers, ledger_, kNow, config_, rng_).node, 1u);
}

TEST_F(PlacementTest, ANodeThatTakesNoGuestsSendsItsOwnProcessesAway) {
  const auto own = Vector(1, 0.0, 1, kNow, load::kDraining);
  const std::vector peers = {Vector(2, 1.0, 1, kNow)};
  EXPECT_EQ(ChoosePlacement(own, peers, ledger_, kNow, config_, rng_).node, 2u);
}

TEST_F(PlacementTest, TheLedgerReservesTheTargetSoPlacementsSpread) {
  // Eight processes started at once at a loaded node with four idle peers,
  // before any new vector arrives: recorded placements spread them.
  const auto own = Vector(1, 8.0, 1, kNow);
  const std::vector peers = {Vector(2, 0, 1, kNow), Vector(3, 0, 1, kNow), Vector(4, 0, 1, kNow),
                             Vector(5, 0, 1, kNow)};
  std::map<std::uint32_t, int> placed;
  for (int i = 0; i < 8; ++i) {
    const PlacementChoice choice = ChoosePlacement(own, peers, ledger_, kNow, config_, rng_);
    ++placed[choice.node];
    ledger_.Record(choice.node, kNow, 1000);
  }
  EXPECT_EQ(placed, (std::map<std::uint32_t, int>{{2, 2}, {3, 2}, {4, 2}, {5, 2}}));
}

TEST_F(PlacementTest, WithoutTheLedgerEveryPlacementPicksTheSameFewTargets) {
  // The counterpart of the test above: what the ledger prevents.
  config_.choice_spread = 0;
  const auto own = Vector(1, 8.0, 1, kNow);
  const std::vector peers = {Vector(2, 0, 1, kNow), Vector(3, 0.5, 1, kNow)};
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(ChoosePlacement(own, peers, ledger_, kNow, config_, rng_).node, 2u);
  }
}

TEST_F(PlacementTest, NearEqualTargetsAreDrawnAtRandom) {
  const auto own = Vector(1, 8.0, 1, kNow);
  const std::vector peers = {Vector(2, 0, 1, kNow), Vector(3, 0.1, 1, kNow),
                             Vector(4, 0.2, 1, kNow), Vector(5, 2.0, 1, kNow)};
  std::map<std::uint32_t, int> placed;
  for (int i = 0; i < 300; ++i)
    ++placed[ChoosePlacement(own, peers, ledger_, kNow, config_, rng_).node];
  EXPECT_EQ(placed.count(5), 0u);
  for (std::uint32_t node : {2u, 3u, 4u}) EXPECT_GT(placed[node], 60) << node;
}

TEST_F(PlacementTest, AdmitChecksTheTargetsFreshLoadAgainstTheAskers) {
  const auto target = Vector(2, 1.0, 1, kNow);
  EXPECT_TRUE(Admit(target, ledger_, 3.0));
  EXPECT_FALSE(Admit(target, ledger_, 2.0));  // equal is no gain
  ledger_.Record(2, kNow, 1000);              // it admitted one before
  EXPECT_FALSE(Admit(target, ledger_, 3.0));
  EXPECT_FALSE(
      Admit(Vector(2, 0, 1, kNow, load::kDraining), LoadLedger(config_.load_half_life), 9));
}

TEST_F(PlacementTest, IdleNodesListsRoomMostFirst) {
  const auto own = Vector(1, 0.5, 2, kNow);
  const std::uint64_t stale = kNow - config_.max_info_age.count() - 1;
  const std::vector peers = {Vector(2, 1.5, 2, kNow), Vector(3, 0.0, 4, kNow),
                             Vector(4, 0.0, 4, stale), Vector(5, 0.0, 4, kNow, load::kDraining),
                             Vector(6, 4.0, 4, kNow)};
  const std::vector<IdleNode> idle = IdleNodes(own, peers, ledger_, kNow, config_);
  ASSERT_EQ(idle.size(), 2u);
  EXPECT_EQ(idle[0].node, 3u);
  EXPECT_DOUBLE_EQ(idle[0].free_cpus, 4.0);
  EXPECT_EQ(idle[1].node, 1u);
  EXPECT_DOUBLE_EQ(idle[1].free_cpus, 1.5);
}

}  // namespace
}  // namespace roam::policy
