#include "roam/policy/load_ledger.h"

#include <gtest/gtest.h>

#include "policy_testing.h"

namespace roam::policy {
namespace {

using testing::kSecond;
using testing::Vector;

TEST(LoadLedgerTest, AChangeCountsWhollyInVectorsSampledBeforeIt) {
  LoadLedger ledger(std::chrono::seconds(2));
  ledger.Record(3, 10 * kSecond, 1000);
  EXPECT_DOUBLE_EQ(ledger.Adjusted(Vector(3, 1.0, 1, 9 * kSecond)), 2000);
  EXPECT_DOUBLE_EQ(ledger.Adjusted(Vector(3, 1.0, 1, 10 * kSecond)), 2000);
}

TEST(LoadLedgerTest, LaterVectorsShowTheChangeAsTheSamplerDecays) {
  LoadLedger ledger(std::chrono::seconds(2));
  ledger.Record(3, 10 * kSecond, 1000);
  // One half-life later the smoothed load shows half of it; two, three quarters.
  EXPECT_NEAR(ledger.Adjusted(Vector(3, 1.5, 1, 12 * kSecond)), 2000, 1e-6);
  EXPECT_NEAR(ledger.Adjusted(Vector(3, 1.75, 1, 14 * kSecond)), 2000, 1e-6);
}

TEST(LoadLedgerTest, OnlyTheNodeOfTheChangeIsAdjusted) {
  LoadLedger ledger(std::chrono::seconds(2));
  ledger.Record(3, 10 * kSecond, 1000);
  EXPECT_DOUBLE_EQ(ledger.Adjusted(Vector(4, 1.0, 1, 9 * kSecond)), 1000);
}

TEST(LoadLedgerTest, DeparturesLowerTheLoadButNeverBelowZero) {
  LoadLedger ledger(std::chrono::seconds(2));
  ledger.Record(1, 10 * kSecond, -1000);
  ledger.Record(1, 10 * kSecond, -1000);
  EXPECT_DOUBLE_EQ(ledger.Adjusted(Vector(1, 3.0, 2, 10 * kSecond)), 1000);
  EXPECT_DOUBLE_EQ(ledger.AdjustedPerCpu(Vector(1, 3.0, 2, 10 * kSecond)), 0.5);
  EXPECT_DOUBLE_EQ(ledger.Adjusted(Vector(1, 1.0, 2, 10 * kSecond)), 0);
}

TEST(LoadLedgerTest, ExpireDropsOnlyWhatEveryReadVectorShows) {
  LoadLedger ledger(std::chrono::seconds(2));
  ledger.Record(1, 10 * kSecond, 1000);
  ledger.Record(2, 30 * kSecond, 1000);
  // 2^-10 < 1% after ten half-lives (20 s): the first change is shown.
  ledger.Expire(30 * kSecond);
  EXPECT_EQ(ledger.size(), 1u);
  EXPECT_DOUBLE_EQ(ledger.Adjusted(Vector(2, 0, 1, 30 * kSecond)), 1000);
  ledger.Expire(29 * kSecond);
  EXPECT_EQ(ledger.size(), 1u);
}

TEST(LoadLedgerTest, ANodeOfferingNoCpuIsInfinitelyLoaded) {
  LoadLedger ledger(std::chrono::seconds(2));
  EXPECT_EQ(ledger.AdjustedPerCpu(Vector(1, 0, 0, 0)), std::numeric_limits<double>::infinity());
}

}  // namespace
}  // namespace roam::policy
