// PageStore: the newest copy of each page wins, drops forget, and reading
// it back gives runs of adjacent pages in address order.
#include "core/ckpt/image/page_store.h"

#include <vector>

#include <gtest/gtest.h>

#include "tests/ckpt/image/test_pages.h"

namespace roam::ckpt {
namespace {

using testing::Pages;

struct StoredRun {
  std::uint64_t vaddr;
  std::size_t pages;
  std::uint8_t first_byte;
  bool operator==(const StoredRun&) const = default;
};

std::vector<StoredRun> Runs(PageStore& store) {
  std::vector<StoredRun> runs;
  EXPECT_TRUE(store
                  .ForEach([&](std::uint64_t vaddr, std::span<const std::byte> pages) {
                    runs.push_back(
                        {vaddr, pages.size() / kPageSize, std::to_integer<std::uint8_t>(pages[0])});
                    return Ok();
                  })
                  .has_value());
  return runs;
}

TEST(PageStoreTest, NewestCopyWinsAndDropsForget) {
  PageStore store;
  ASSERT_TRUE(store.Put(0x10000, Pages(4, 1)).has_value());
  ASSERT_TRUE(store.Put(0x40000, Pages(1, 9)).has_value());
  ASSERT_TRUE(store.Put(0x11000, Pages(1, 50)).has_value());  // replaces the second page
  EXPECT_EQ(store.page_count(), 5u);
  EXPECT_EQ(Runs(store), (std::vector<StoredRun>{{0x10000, 4, 1}, {0x40000, 1, 9}}));

  std::vector<std::byte> page(kPageSize);
  auto read = store.ReadPage(0x11000, page);
  ASSERT_TRUE(read.has_value());
  EXPECT_TRUE(*read);
  EXPECT_EQ(page[0], std::byte{50});

  store.Drop(0x11000, 2);
  EXPECT_EQ(store.page_count(), 3u);
  EXPECT_EQ(store.Find(0x12000), nullptr);
  EXPECT_EQ(Runs(store),
            (std::vector<StoredRun>{{0x10000, 1, 1}, {0x13000, 1, 4}, {0x40000, 1, 9}}));
  read = store.ReadPage(0x11000, page);
  ASSERT_TRUE(read.has_value());
  EXPECT_FALSE(*read);
}

TEST(PageStoreTest, ZeroPagesAreKnownButNotStored) {
  PageStore store;
  ASSERT_TRUE(store.Put(0x10000, Pages(2, 1)).has_value());
  store.PutZero(0x11000, 2);  // replaces the second page, adds a third
  EXPECT_EQ(store.page_count(), 1u);
  ASSERT_NE(store.Find(0x12000), nullptr);
  EXPECT_EQ(store.Find(0x12000)[0], std::byte{0});
  EXPECT_EQ(Runs(store), (std::vector<StoredRun>{{0x10000, 1, 1}}));
  ASSERT_TRUE(store.Put(0x12000, Pages(1, 7)).has_value());
  EXPECT_EQ(store.Find(0x12000)[0], std::byte{7});
  store.Drop(0x11000, 1);
  EXPECT_EQ(store.Find(0x11000), nullptr);
}

TEST(PageStoreTest, LongRunsComeInBoundedPieces) {
  PageStore store;
  ASSERT_TRUE(store.Put(0x100000, Pages(600, 0)).has_value());
  const auto runs = Runs(store);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].vaddr, 0x100000u);
  EXPECT_EQ(runs[1].vaddr, 0x100000u + 256 * kPageSize);
  EXPECT_EQ(runs[0].pages + runs[1].pages + runs[2].pages, 600u);
}

TEST(PageStoreTest, UnalignedInputIsRefused) {
  PageStore store;
  EXPECT_FALSE(store.Put(0x10001, Pages(1, 0)).has_value());
  std::vector<std::byte> half(kPageSize / 2);
  EXPECT_FALSE(store.Put(0x10000, half).has_value());
  EXPECT_FALSE(store.ReadPage(0x10000, half).has_value());
  EXPECT_EQ(store.page_count(), 0u);
}

}  // namespace
}  // namespace roam::ckpt
