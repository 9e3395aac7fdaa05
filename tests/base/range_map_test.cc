#include "roam/base/range_map.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace roam {
namespace {

// The pieces of [lo, hi) as "lo-hi:value" ("lo-hi:-" for a gap).
template <typename Map>
std::vector<std::string> Pieces(const Map& map, std::uint64_t lo, std::uint64_t hi) {
  std::vector<std::string> out;
  EXPECT_TRUE(map.Visit(lo, hi,
                        [&](std::uint64_t a, std::uint64_t b, const auto* value) -> Status {
                          out.push_back(std::to_string(a) + "-" + std::to_string(b) + ":" +
                                        (value ? std::to_string(*value) : "-"));
                          return Ok();
                        })
                  .has_value());
  return out;
}

using Strings = std::vector<std::string>;

TEST(RangeMapTest, AssignOverwritesAndMergesLabels) {
  RangeMap<int> map;
  map.Assign(0, 10, 1);
  map.Assign(10, 20, 1);
  EXPECT_EQ(map.ranges(), 1u) << "adjacent ranges with one label merge";
  map.Assign(5, 15, 2);
  EXPECT_EQ(Pieces(map, 0, 20), (Strings{"0-5:1", "5-15:2", "15-20:1"}));
  map.Assign(5, 15, 1);
  EXPECT_EQ(map.ranges(), 1u) << "filling the hole back merges both sides";
  EXPECT_EQ(Pieces(map, 0, 30), (Strings{"0-20:1", "20-30:-"}));
}

TEST(RangeMapTest, EraseCutsRangesAcrossItsEnds) {
  RangeMap<int> map;
  map.Assign(0, 100, 7);
  map.Erase(20, 30);
  map.Erase(40, 40);  // empty: nothing
  map.Erase(90, 200);
  EXPECT_EQ(Pieces(map, 0, 100), (Strings{"0-20:7", "20-30:-", "30-90:7", "90-100:-"}));
  map.Erase(10, 50);
  EXPECT_EQ(Pieces(map, 0, 100), (Strings{"0-10:7", "10-50:-", "50-90:7", "90-100:-"}));
  map.Erase(0, 1000);
  EXPECT_TRUE(map.empty());
}

TEST(RangeMapTest, OffsetsShiftWhenCutAndMergeOnlyWhenContinuous) {
  RangeMap<std::uint64_t, OffsetValue> map;
  map.Assign(1000, 1100, 0);    // offsets 0..100
  map.Assign(1100, 1200, 100);  // continues: one range
  EXPECT_EQ(map.ranges(), 1u);
  map.Assign(1200, 1300, 500);  // does not continue
  EXPECT_EQ(map.ranges(), 2u);
  map.Erase(1050, 1060);
  EXPECT_EQ(Pieces(map, 1040, 1250),
            (Strings{"1040-1050:40", "1050-1060:-", "1060-1200:60", "1200-1250:500"}));
  map.Assign(1150, 1160, 900);  // a newer copy of part of a range
  EXPECT_EQ(Pieces(map, 1140, 1170), (Strings{"1140-1150:140", "1150-1160:900", "1160-1170:160"}));
}

TEST(RangeMapTest, VisitStopsAtTheFirstError) {
  RangeMap<int> map;
  map.Assign(0, 10, 1);
  map.Assign(20, 30, 2);
  int calls = 0;
  const Status status = map.Visit(0, 30, [&](std::uint64_t, std::uint64_t, const int*) -> Status {
    ++calls;
    return calls == 2 ? MakeError(Errc::kNotFound, "stop") : Ok();
  });
  ASSERT_FALSE(status.has_value());
  EXPECT_EQ(status.error().code(), Errc::kNotFound);
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace roam
