#include "roam/base/check.h"

#include <gtest/gtest.h>

namespace roam {
namespace {

TEST(CheckDeathTest, PassingCheckDoesNothing) {
  int evaluations = 0;
  ROAM_CHECK(++evaluations == 1);
  ROAM_CHECK(evaluations == 1, "evaluated {} times", evaluations);
  EXPECT_EQ(evaluations, 1);  // the condition is evaluated exactly once
}

TEST(CheckDeathTest, FailingCheckAbortsWithLocationConditionAndMessage) {
  EXPECT_DEATH(ROAM_CHECK(1 + 1 == 3, "slot {} torn", 7),
               "roam: invariant failed at .*check_test.cc:[0-9]+: 1 \\+ 1 == 3: slot 7 torn");
  EXPECT_DEATH(ROAM_CHECK(false), "invariant failed at .*: false");
}

TEST(CheckDeathTest, CheckOkPrintsTheError) {
  const Status failed = MakeError(Errc::kCorrupt, "page stream checksum mismatch");
  EXPECT_DEATH(ROAM_CHECK_OK(failed), "failed: corrupt: page stream checksum mismatch");
  ROAM_CHECK_OK(Ok());
}

}  // namespace
}  // namespace roam
