#include "roam/base/deadline.h"

#include <gtest/gtest.h>

namespace roam {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

TEST(DeadlineTest, AddsTheTimeout) {
  const Clock::time_point now = Clock::now();
  EXPECT_EQ(DeadlineAfter<Clock>(now, milliseconds(250)), now + milliseconds(250));
  EXPECT_EQ(DeadlineAfter<Clock>(now, milliseconds(0)), now);
  EXPECT_EQ(DeadlineAfter<Clock>(now, milliseconds(-5)), now);
}

TEST(DeadlineTest, SaturatesInsteadOfOverflowing) {
  const Clock::time_point now = Clock::now();
  EXPECT_EQ(DeadlineAfter<Clock>(now, milliseconds::max()), Clock::time_point::max());
  EXPECT_EQ(DeadlineAfter<Clock>(Clock::time_point::max() - milliseconds(1), milliseconds(5)),
            Clock::time_point::max());
  EXPECT_GT(DeadlineAfter(milliseconds::max()), Clock::now());
}

}  // namespace
}  // namespace roam
