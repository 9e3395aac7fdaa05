// The load board as peers write it with one-sided puts: whole windows are
// read once, torn, stale and foreign slots are skipped and counted.
#include "roam/load/load_board.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <vector>

namespace roam::load {
namespace {

LoadVector Vector(std::uint32_t node, std::uint64_t sequence, std::uint32_t load_milli = 500) {
  return LoadVector(node, /*epoch=*/1, sequence, /*sampled_ns=*/sequence * 1000, load_milli,
                    /*capacity_milli=*/1000, /*free_memory_mib=*/1024, /*guests=*/0,
                    /*processes=*/1, kAccepting);
}

class LoadBoardTest : public ::testing::Test {
 protected:
  // A peer puts its window into this board, as a one-sided put would.
  void Put(std::uint32_t writer, std::uint64_t sequence, std::vector<LoadVector> window) {
    std::vector<std::byte> slot(shape_.slot_bytes());
    ASSERT_TRUE(SealSlot(shape_, writer, sequence, window, slot).has_value());
    std::memcpy(board_.data() + SlotOffset(shape_, writer), slot.data(), slot.size());
  }
  std::vector<LoadVector> Scan() {
    std::vector<LoadVector> got;
    reader_.Scan(board_, [&](const LoadVector& v) { got.push_back(v); });
    return got;
  }
  std::byte* SlotOf(std::uint32_t writer) { return board_.data() + SlotOffset(shape_, writer); }

  BoardShape shape_{.window = 4, .slots = 16};
  std::vector<std::byte> board_ = std::vector<std::byte>(shape_.bytes());
  BoardReader reader_{shape_};
};

TEST_F(LoadBoardTest, AWholeWindowIsReadOnceInOrder) {
  Put(7, 1, {Vector(7, 3), Vector(2, 9), Vector(4, 1)});
  auto got = Scan();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].node(), 7u);
  EXPECT_EQ(got[0].sequence(), 3u);
  EXPECT_EQ(got[1].node(), 2u);
  EXPECT_EQ(got[2].node(), 4u);
  EXPECT_EQ(reader_.counts().windows, 1u);
  EXPECT_EQ(reader_.counts().vectors, 3u);
  EXPECT_EQ(reader_.counts().empty, shape_.slots - 1);

  // Not written since: nothing new.
  EXPECT_TRUE(Scan().empty());
  EXPECT_EQ(reader_.counts().unchanged, 1u);

  // Written again: read again.
  Put(7, 2, {Vector(7, 4)});
  got = Scan();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].sequence(), 4u);
}

TEST_F(LoadBoardTest, ATornSlotIsSkippedAndReadOnceWhole) {
  Put(5, 1, {Vector(5, 1), Vector(6, 1)});
  // A second put of the slot landed its first seal and half its vectors.
  std::vector<std::byte> next(shape_.slot_bytes());
  ASSERT_TRUE(SealSlot(shape_, 5, 2, std::vector{Vector(5, 2), Vector(6, 2)}, next).has_value());
  std::memcpy(SlotOf(5), next.data(), sizeof(fb::SlotSeal) + sizeof(LoadVector));
  EXPECT_TRUE(Scan().empty());
  EXPECT_EQ(reader_.counts().torn, 1u);

  // The rest lands.
  std::memcpy(SlotOf(5), next.data(), next.size());
  auto got = Scan();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[1].sequence(), 2u);
}

TEST_F(LoadBoardTest, EqualSealsAroundDamagedVectorsAreTorn) {
  Put(5, 1, {Vector(5, 1)});
  // Two writers raced: both seals are one writer's, a vector the other's.
  SlotOf(5)[sizeof(fb::SlotSeal) + 30] ^= std::byte{0x40};
  EXPECT_TRUE(Scan().empty());
  EXPECT_EQ(reader_.counts().torn, 1u);
}

TEST_F(LoadBoardTest, AnOlderWriteOfTheSameWriterIsStale) {
  std::vector<std::byte> old_slot(shape_.slot_bytes());
  ASSERT_TRUE(SealSlot(shape_, 3, 4, std::vector{Vector(3, 4)}, old_slot).has_value());
  Put(3, 5, {Vector(3, 5)});
  ASSERT_EQ(Scan().size(), 1u);
  // A delayed put of an earlier window lands after the newer one was read.
  std::memcpy(SlotOf(3), old_slot.data(), old_slot.size());
  EXPECT_TRUE(Scan().empty());
  EXPECT_EQ(reader_.counts().stale, 1u);
}

TEST_F(LoadBoardTest, AnotherFormatVersionIsForeign) {
  Put(3, 1, {Vector(3, 1)});
  // The version field of both seals says 2.
  for (std::size_t at : {std::size_t{6}, shape_.slot_bytes() - sizeof(fb::SlotSeal) + 6}) {
    SlotOf(3)[at] = std::byte{2};
  }
  EXPECT_TRUE(Scan().empty());
  EXPECT_EQ(reader_.counts().foreign, 1u);
}

TEST_F(LoadBoardTest, WritersSharingASlotOverwriteEachOtherAndBothAreRead) {
  // Find two writers whose windows go to the same slot.
  std::uint32_t a = 1;
  std::uint32_t b = 2;
  while (SlotOffset(shape_, b) != SlotOffset(shape_, a)) ++b;
  Put(a, 1, {Vector(a, 1)});
  ASSERT_EQ(Scan().size(), 1u);
  Put(b, 1, {Vector(b, 1)});
  auto got = Scan();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].node(), b);
  Put(a, 2, {Vector(a, 2)});
  got = Scan();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].node(), a);
}

TEST_F(LoadBoardTest, ManyWritersSpreadOverTheSlots) {
  std::set<std::size_t> used;
  for (std::uint32_t writer = 0; writer < 1000; ++writer) used.insert(SlotOffset(shape_, writer));
  EXPECT_EQ(used.size(), shape_.slots);
  for (std::size_t offset : used) EXPECT_EQ(offset % shape_.slot_bytes(), 0u);
}

TEST(LoadBoardShapeTest, BadShapesAndWindowsAreRefusedWithTheReason) {
  for (const BoardShape bad :
       {BoardShape{.window = 0, .slots = 4}, BoardShape{.window = 65, .slots = 4},
        BoardShape{.window = 4, .slots = 0}}) {
    EXPECT_FALSE(bad.Check().has_value()) << bad.window << "x" << bad.slots;
  }
  const BoardShape shape{.window = 2, .slots = 4};
  EXPECT_EQ(shape.slot_bytes(), 2 * 24 + 2 * 64u);
  std::vector<std::byte> slot(shape.slot_bytes());
  const std::vector<LoadVector> three{Vector(1, 1), Vector(2, 1), Vector(3, 1)};
  auto too_many = SealSlot(shape, 1, 1, three, slot);
  ASSERT_FALSE(too_many.has_value());
  EXPECT_EQ(too_many.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(too_many.error().message().find("window of 3"), std::string::npos);
  EXPECT_FALSE(SealSlot(shape, 1, 0, std::vector{Vector(1, 1)}, slot).has_value());
  EXPECT_FALSE(SealSlot(shape, 1, 1, {}, slot).has_value());
  EXPECT_FALSE(
      SealSlot(shape, 1, 1, std::vector{Vector(1, 1)}, std::span(slot).subspan(1)).has_value());
}

}  // namespace
}  // namespace roam::load
