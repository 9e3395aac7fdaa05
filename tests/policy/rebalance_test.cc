#include "roam/policy/rebalance.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "policy_testing.h"

namespace roam::policy {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::kSecond;
using testing::Vector;

constexpr std::uint64_t kNow = 100 * kSecond;
constexpr std::uint64_t kMiB = 1 << 20;

// A process that has used `cpu` of CPU, arrived long ago.
Candidate Process(std::uint64_t id, std::chrono::nanoseconds cpu, std::uint64_t resident = kMiB) {
  return Candidate{
      .id = id, .home = 1, .cpu_age = cpu, .resident_bytes = resident, .arrived_ns = 0};
}

class RebalanceTest : public ::testing::Test {
 protected:
  PolicyConfig config_;
  LoadLedger ledger_{config_.load_half_life};
  std::mt19937_64 rng_{11};
};

TEST_F(RebalanceTest, MigrationCostIsTheFixedPartPlusTheBytesAtTheRate) {
  EXPECT_EQ(MigrationCost(0, config_), milliseconds(100));
  EXPECT_EQ(MigrationCost(500'000'000, config_), milliseconds(600));
}

TEST_F(RebalanceTest, ANodeWithACpuForEveryTaskShedsNothing) {
  const auto own = Vector(1, 2.0, 2, kNow);
  const std::vector peers = {Vector(2, 0, 4, kNow)};
  const std::vector candidates = {Process(10, seconds(100)), Process(11, seconds(100))};
  EXPECT_TRUE(ChooseMoves(own, peers, candidates, ledger_, kNow, config_, rng_).empty());
}

TEST_F(RebalanceTest, MovesTheOldestProcessPerCostToTheLightestPeer) {
  const auto own = Vector(1, 4.0, 1, kNow);
  const std::vector peers = {Vector(2, 3.0, 1, kNow), Vector(3, 0.0, 1, kNow)};
  const std::vector candidates = {Process(10, seconds(5)), Process(11, seconds(50), 512 * kMiB),
                                  Process(12, seconds(20), kMiB), Process(13, seconds(1))};
  const std::vector<Move> moves = ChooseMoves(own, peers, candidates, ledger_, kNow, config_, rng_);
  ASSERT_EQ(moves.size(), 1u);
  // 20 s over 0.1 s beats 50 s over 0.64 s.
  EXPECT_EQ(moves[0].id, 12u);
  EXPECT_EQ(moves[0].target, 3u);
  EXPECT_DOUBLE_EQ(moves[0].source_load_per_cpu, 4.0);
  EXPECT_DOUBLE_EQ(moves[0].target_load_per_cpu, 1.0);
}

TEST_F(RebalanceTest, AProcessYoungerThanItsCostOverTheLoadGapStays) {
  // Gap 2 - 0 = 2; cost 0.1 s + 400 MB / 1 GB/s = 0.5 s: eligible from 0.25 s of CPU.
  const auto own = Vector(1, 2.0, 1, kNow);
  const std::vector peers = {Vector(2, 0.0, 1, kNow)};
  const std::vector young = {Process(10, milliseconds(240), 400'000'000)};
  EXPECT_TRUE(ChooseMoves(own, peers, young, ledger_, kNow, config_, rng_).empty());
  const std::vector old = {Process(10, milliseconds(260), 400'000'000)};
  EXPECT_EQ(ChooseMoves(own, peers, old, ledger_, kNow, config_, rng_).size(), 1u);
}

TEST_F(RebalanceTest, AMoveThatWouldBeWorthReversingIsNotMade) {
  // 2 tasks against 1 on one CPU each: after a move it would be 1 against 2.
  const auto own = Vector(1, 2.0, 1, kNow);
  const std::vector peers = {Vector(2, 1.0, 1, kNow)};
  const std::vector candidates = {Process(10, seconds(100))};
  EXPECT_TRUE(ChooseMoves(own, peers, candidates, ledger_, kNow, config_, rng_).empty());
}

TEST_F(RebalanceTest, ARecentArrivalAndAnUnmovableProcessStay) {
  const auto own = Vector(1, 3.0, 1, kNow);
  const std::vector peers = {Vector(2, 0.0, 1, kNow)};
  Candidate recent = Process(10, seconds(100));
  recent.arrived_ns = kNow - 1 * kSecond;
  Candidate unmovable = Process(11, seconds(100));
  unmovable.movable = false;
  const std::vector candidates = {recent, unmovable};
  EXPECT_TRUE(ChooseMoves(own, peers, candidates, ledger_, kNow, config_, rng_).empty());
}

TEST_F(RebalanceTest, MovesOfOneRoundSpreadOverTargetsAndStopWhenBalanced) {
  config_.max_moves_per_round = 10;
  const auto own = Vector(1, 6.0, 1, kNow);
  const std::vector peers = {Vector(2, 0.0, 1, kNow), Vector(3, 0.0, 1, kNow)};
  std::vector<Candidate> candidates;
  for (std::uint64_t id = 10; id < 16; ++id) candidates.push_back(Process(id, seconds(id)));
  const std::vector<Move> moves = ChooseMoves(own, peers, candidates, ledger_, kNow, config_, rng_);
  std::map<std::uint32_t, int> to;
  for (const Move& m : moves) ++to[m.target];
  // 6/0/0 becomes 2/2/2: a fifth move would leave 1 against 3.
  EXPECT_EQ(to, (std::map<std::uint32_t, int>{{2, 2}, {3, 2}}));
}

TEST_F(RebalanceTest, MovesAlreadyMadeCountUntilTheVectorsShowThem) {
  const auto own = Vector(1, 3.0, 1, kNow);
  const std::vector peers = {Vector(2, 0.0, 1, kNow)};
  const std::vector candidates = {Process(10, seconds(100)), Process(11, seconds(100))};
  ledger_.Record(1, kNow, -1000);
  ledger_.Record(2, kNow, 1000);
  // 2 against 1 by the ledger: nothing more to gain.
  EXPECT_TRUE(ChooseMoves(own, peers, candidates, ledger_, kNow, config_, rng_).empty());
}

// A closed loop of rounds on exact vectors: nine processes started on one
// of three nodes settle at three each and then never move again.
TEST_F(RebalanceTest, ABurstSpreadsAndThenNothingPingPongs) {
  std::map<std::uint64_t, std::uint32_t> where;
  std::map<std::uint64_t, std::uint64_t> arrived;
  for (std::uint64_t id = 0; id < 9; ++id) where[id] = 1;
  int moves_made = 0;
  int last_move_round = -1;
  for (int round = 0; round < 100; ++round) {
    const std::uint64_t now = kNow + round * kSecond;
    std::map<std::uint32_t, int> count;
    for (auto [id, node] : where) ++count[node];
    std::vector<load::LoadVector> all;
    for (std::uint32_t n = 1; n <= 3; ++n) all.push_back(Vector(n, count[n], 1, now));
    for (std::uint32_t n = 1; n <= 3; ++n) {
      std::vector<Candidate> here;
      for (auto [id, node] : where) {
        if (node != n) continue;
        Candidate c = Process(id, seconds(10 + round));
        c.arrived_ns = arrived[id];
        here.push_back(c);
      }
      const LoadLedger fresh(config_.load_half_life);
      for (const Move& m : ChooseMoves(all[n - 1], all, here, fresh, now, config_, rng_)) {
        where[m.id] = m.target;
        arrived[m.id] = now;
        ++moves_made;
        last_move_round = round;
      }
    }
  }
  std::map<std::uint32_t, int> count;
  for (auto [id, node] : where) ++count[node];
  EXPECT_EQ(count, (std::map<std::uint32_t, int>{{1, 3}, {2, 3}, {3, 3}}));
  EXPECT_EQ(moves_made, 6);
  EXPECT_LT(last_move_round, 10);
}

}  // namespace
}  // namespace roam::policy
