#include "roam/load/load_view.h"

#include <gtest/gtest.h>

namespace roam::load {
namespace {

LoadVector Vector(std::uint32_t node, std::uint64_t sequence, std::uint64_t sampled_ns,
                  std::uint32_t epoch = 1) {
  return LoadVector(node, epoch, sequence, sampled_ns, 0, 1000, 0, 0, 0, 0);
}

TEST(LoadViewTest, KeepsTheNewestOfEachNode) {
  LoadView view(/*self=*/0, 8);
  EXPECT_TRUE(view.Merge(Vector(1, 5, 500)));
  EXPECT_FALSE(view.Merge(Vector(1, 4, 400)));  // older
  EXPECT_FALSE(view.Merge(Vector(1, 5, 500)));  // the same
  EXPECT_TRUE(view.Merge(Vector(1, 6, 600)));
  ASSERT_TRUE(view.Find(1).has_value());
  EXPECT_EQ(view.Find(1)->sequence(), 6u);
  // A restarted daemon's first sample beats the old incarnation's last.
  EXPECT_TRUE(view.Merge(Vector(1, 1, 700, /*epoch=*/2)));
  EXPECT_EQ(view.Find(1)->epoch(), 2u);
  EXPECT_EQ(view.peers().size(), 1u);
}

TEST(LoadViewTest, ItsOwnVectorFromOthersIsIgnored) {
  LoadView view(/*self=*/3, 8);
  EXPECT_FALSE(view.Merge(Vector(3, 9, 900)));
  EXPECT_FALSE(view.Find(3).has_value());
  view.SetOwn(Vector(3, 10, 1000));
  EXPECT_EQ(view.Find(3)->sequence(), 10u);
  EXPECT_TRUE(view.peers().empty());
}

TEST(LoadViewTest, AFullViewReplacesTheOldestSample) {
  LoadView view(/*self=*/0, 3);
  view.Merge(Vector(1, 1, 100));
  view.Merge(Vector(2, 1, 300));
  view.Merge(Vector(3, 1, 200));
  EXPECT_FALSE(view.Merge(Vector(4, 1, 50)));  // older than everything known
  EXPECT_TRUE(view.Merge(Vector(5, 1, 400)));
  EXPECT_EQ(view.peers().size(), 3u);
  EXPECT_FALSE(view.Find(1).has_value());
  EXPECT_TRUE(view.Find(5).has_value());
  view.Forget(5);
  EXPECT_FALSE(view.Find(5).has_value());
  EXPECT_EQ(view.peers().size(), 2u);
}

TEST(LoadViewTest, TheWindowIsItsOwnThenTheFreshest) {
  LoadView view(/*self=*/0, 8);
  for (std::uint32_t n = 1; n <= 5; ++n) view.Merge(Vector(n, 1, n * 100));
  view.SetOwn(Vector(0, 1, 1000));
  auto window = view.Window(4);
  ASSERT_EQ(window.size(), 4u);
  EXPECT_EQ(window[0].node(), 0u);
  EXPECT_EQ(window[1].node(), 5u);
  EXPECT_EQ(window[2].node(), 4u);
  EXPECT_EQ(window[3].node(), 3u);
  EXPECT_EQ(view.Window(20).size(), 6u);
  EXPECT_TRUE(view.Window(0).empty());
}

}  // namespace
}  // namespace roam::load
