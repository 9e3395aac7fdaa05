#include "roam/policy/config.h"

#include <gtest/gtest.h>

namespace roam::policy {
namespace {

TEST(PolicyConfigTest, TheDefaultsAreValid) { EXPECT_TRUE(Validate(PolicyConfig{}).has_value()); }

TEST(PolicyConfigTest, AKnobOutOfRangeIsNamed) {
  PolicyConfig c;
  c.hysteresis = 0;
  const Status s = Validate(c);
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(s.error().message().find("hysteresis"), std::string::npos) << s.error().message();
  c = PolicyConfig{};
  c.migration_bytes_per_second = 0;
  EXPECT_FALSE(Validate(c).has_value());
}

}  // namespace
}  // namespace roam::policy
