#include "roam/numa/cpu_set.h"

#include <gtest/gtest.h>

namespace roam::numa {
namespace {

TEST(CpuSetTest, RangesCollapseInText) {
  EXPECT_EQ((CpuSet{8, 0, 1, 2, 3}).ToString(), "0-3,8");
  EXPECT_EQ((CpuSet{5}).ToString(), "5");
  EXPECT_EQ((CpuSet{1, 3, 4}).ToString(), "1,3-4");
  EXPECT_EQ(CpuSet().ToString(), "");
}

TEST(CpuSetTest, MembersAreSortedAndUnique) {
  const CpuSet set = CpuSet::FromList({3, 1, 3, 2});
  EXPECT_EQ(set.cpus(), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(set.size(), 3);
  EXPECT_TRUE(set.contains(2));
  EXPECT_FALSE(set.contains(0));
}

TEST(CpuSetTest, ParseRoundTrip) {
  for (const char* text : {"0-3,8", "0", "1,3-4,6-7,100", "0-1023", ""}) {
    auto set = CpuSet::Parse(text);
    ASSERT_TRUE(set.has_value()) << text << ": " << set.error().ToString();
    EXPECT_EQ(set->ToString(), text);
    EXPECT_EQ(CpuSet::Parse(set->ToString()).value(), *set);
  }
}

TEST(CpuSetTest, ParseTakesKernelFilesAsTheyAre) {
  auto set = CpuSet::Parse("0-1\n");  // /sys/devices/system/cpu/online
  ASSERT_TRUE(set.has_value()) << set.error().ToString();
  EXPECT_EQ(*set, (CpuSet{0, 1}));
  EXPECT_TRUE(CpuSet::Parse(" \n")->empty());
}

TEST(CpuSetTest, ParseRefusesMalformedLists) {
  for (const char* text : {"a", "1,,2", "1,", ",1", "3-1", "-1", "1-", "1-2-3", "0x1", "1 2",
                           "70000", "0-4000000000"}) {
    auto set = CpuSet::Parse(text);
    ASSERT_FALSE(set.has_value()) << text;
    EXPECT_EQ(set.error().code(), Errc::kInvalidArgument);
    EXPECT_NE(set.error().message().find("is not a CPU list"), std::string::npos)
        << set.error().ToString();
  }
}

TEST(CpuSetTest, MinusAndUnion) {
  const CpuSet a{0, 1, 2, 3};
  const CpuSet b{2, 3, 4};
  EXPECT_EQ(a.Minus(b), (CpuSet{0, 1}));
  EXPECT_EQ(b.Minus(a), (CpuSet{4}));
  EXPECT_EQ(a.Union(b), (CpuSet{0, 1, 2, 3, 4}));
  EXPECT_TRUE(a.Minus(a).empty());
}

}  // namespace
}  // namespace roam::numa
