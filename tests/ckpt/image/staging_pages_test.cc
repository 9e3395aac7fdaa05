// StagingPages: pages go in in address order and come back as they went in
// (adjacent runs merged), by run and by page, until Reset reuses the memory.
#include "core/ckpt/image/staging_pages.h"

#include <algorithm>
#include <vector>

#include <gtest/gtest.h>

#include "tests/ckpt/image/test_pages.h"

namespace roam::ckpt {
namespace {

using testing::Pages;

TEST(StagingPagesTest, PagesComeBackAsTheyWentIn) {
  auto staging = StagingPages::Create(16 * kPageSize);
  ASSERT_TRUE(staging.has_value()) << staging.error().ToString();
  StagingPages& s = **staging;
  ASSERT_TRUE(s.Add(0x10000, Pages(2, 1)).has_value());
  ASSERT_TRUE(s.Add(0x12000, Pages(1, 7)).has_value());  // adjacent: one run
  ASSERT_TRUE(s.Add(0x40000, Pages(3, 20)).has_value());
  ASSERT_TRUE(s.Finish().has_value());
  EXPECT_EQ(s.used(), 6 * kPageSize);

  const auto extent = s.Extent();
  ASSERT_TRUE(extent.has_value());
  const std::vector<std::pair<std::uint64_t, std::uint64_t>> want = {{0x10000, 0x13000},
                                                                     {0x40000, 0x43000}};
  EXPECT_EQ(*extent, want);

  std::vector<std::pair<std::uint64_t, std::size_t>> runs;
  ASSERT_TRUE(s.ForEach([&](std::uint64_t vaddr, std::span<const std::byte> pages) {
                 runs.emplace_back(vaddr, pages.size() / kPageSize);
                 return Ok();
               }).has_value());
  const std::vector<std::pair<std::uint64_t, std::size_t>> want_runs = {{0x10000, 3}, {0x40000, 3}};
  EXPECT_EQ(runs, want_runs);

  std::vector<std::byte> page(kPageSize);
  ASSERT_EQ(s.ReadPage(0x12000, page).value_or(false), true);
  EXPECT_EQ(page[0], std::byte{7});
  ASSERT_EQ(s.ReadPage(0x41000, page).value_or(false), true);
  EXPECT_EQ(page[0], std::byte{21});
  EXPECT_EQ(s.ReadPage(0x13000, page).value_or(true), false);
  EXPECT_EQ(s.ReadPage(0x0, page).value_or(true), false);
}

TEST(StagingPagesTest, RefusesDisorderPartialPagesAndOverflow) {
  auto staging = StagingPages::Create(4 * kPageSize);
  ASSERT_TRUE(staging.has_value());
  StagingPages& s = **staging;
  ASSERT_TRUE(s.Add(0x20000, Pages(1, 1)).has_value());
  auto back = s.Add(0x10000, Pages(1, 1));
  ASSERT_FALSE(back.has_value());
  EXPECT_EQ(back.error().code(), Errc::kInvalidArgument);
  EXPECT_FALSE(s.Add(0x30000, std::vector<std::byte>(100)).has_value());
  auto full = s.Add(0x30000, Pages(4, 1));
  ASSERT_FALSE(full.has_value());
  EXPECT_EQ(full.error().code(), Errc::kResourceExhausted);
  EXPECT_NE(full.error().message().find("full"), std::string::npos);
}

TEST(StagingPagesTest, PagesReadIntoTheTailAreKeptWithoutACopy) {
  auto staging = StagingPages::Create(8 * kPageSize);
  ASSERT_TRUE(staging.has_value());
  StagingPages& s = **staging;
  ASSERT_TRUE(s.Add(0x10000, Pages(1, 1)).has_value());
  // A capture reads four pages into the tail; the first is all zero and is
  // left out, the other three are added where they lie.
  std::span<std::byte> tail = s.WritableTail(4 * kPageSize);
  ASSERT_EQ(tail.size(), 4 * kPageSize);
  const auto data = Pages(4, 40);
  std::copy(data.begin(), data.end(), tail.begin());
  ASSERT_TRUE(s.Add(0x21000, tail.subspan(kPageSize)).has_value());
  EXPECT_EQ(s.used(), 5 * kPageSize);  // the skipped page is a hole
  std::vector<std::byte> page(kPageSize);
  ASSERT_EQ(s.ReadPage(0x22000, page).value_or(false), true);
  EXPECT_EQ(page[0], std::byte{42});
  EXPECT_EQ(s.ReadPage(0x20000, page).value_or(true), false);
  EXPECT_TRUE(s.WritableTail(4 * kPageSize).empty());  // only 3 pages left
  EXPECT_EQ(s.WritableTail(3 * kPageSize).size(), 3 * kPageSize);
}

TEST(StagingPagesTest, ResetReusesTheMemory) {
  auto staging = StagingPages::Create(2 * kPageSize);
  ASSERT_TRUE(staging.has_value());
  StagingPages& s = **staging;
  ASSERT_TRUE(s.Add(0x10000, Pages(2, 1)).has_value());
  ASSERT_TRUE(s.Finish().has_value());
  EXPECT_FALSE(s.Add(0x20000, Pages(1, 1)).has_value());  // finished
  s.Reset();
  EXPECT_EQ(s.used(), 0u);
  ASSERT_TRUE(s.Add(0x50000, Pages(2, 9)).has_value());
  std::vector<std::byte> page(kPageSize);
  ASSERT_EQ(s.ReadPage(0x51000, page).value_or(false), true);
  EXPECT_EQ(page[0], std::byte{10});
  EXPECT_EQ(s.ReadPage(0x10000, page).value_or(true), false);
}

}  // namespace
}  // namespace roam::ckpt
