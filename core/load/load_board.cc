#include "roam/load/load_board.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

namespace roam::load {
namespace {

using fb::SlotSeal;
static_assert(sizeof(SlotSeal) == 24);

constexpr std::uint32_t kMaxWindow = 64;
constexpr std::uint32_t kMaxSlots = 1 << 16;

// splitmix64's finalizer: writers' ids are handed out in order (ranks), and
// a fixed function puts each at the same slot on every node of the pool.
std::uint64_t Mix(std::uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

SlotSeal ReadSeal(const std::byte* at) {
  SlotSeal seal;
  std::memcpy(&seal, at, sizeof seal);
  return seal;
}

bool Same(const SlotSeal& a, const SlotSeal& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

Status BoardShape::Check() const {
  if (window == 0 || window > kMaxWindow) {
    return MakeError(Errc::kInvalidArgument, "load board: a window of {} vectors (1 to {})", window,
                     kMaxWindow);
  }
  if (slots == 0 || slots > kMaxSlots) {
    return MakeError(Errc::kInvalidArgument, "load board: {} slots (1 to {})", slots, kMaxSlots);
  }
  return Ok();
}

std::size_t BoardShape::slot_bytes() const {
  return 2 * sizeof(SlotSeal) + std::size_t{window} * sizeof(LoadVector);
}

std::size_t SlotOffset(const BoardShape& shape, std::uint32_t writer) {
  return Mix(writer) % shape.slots * shape.slot_bytes();
}

Status SealSlot(const BoardShape& shape, std::uint32_t writer, std::uint64_t sequence,
                std::span<const LoadVector> window, std::span<std::byte> slot) {
  ROAM_TRY(shape.Check());
  if (slot.size() != shape.slot_bytes()) {
    return MakeError(Errc::kInvalidArgument, "load board: a slot of {} bytes, not {}", slot.size(),
                     shape.slot_bytes());
  }
  if (window.empty() || window.size() > shape.window) {
    return MakeError(Errc::kInvalidArgument, "load board: a window of {} vectors (1 to {})",
                     window.size(), shape.window);
  }
  if (sequence == 0) {
    return MakeError(Errc::kInvalidArgument, "load board: write sequence 0 is reserved");
  }
  const std::span<const std::byte> vectors = std::as_bytes(window);
  const SlotSeal seal(writer, static_cast<std::uint16_t>(window.size()), kBoardFormatVersion,
                      sequence, XXH3_64bits(vectors.data(), vectors.size()));
  std::byte* at = slot.data();
  std::memcpy(at, &seal, sizeof seal);
  std::memcpy(at + sizeof seal, vectors.data(), vectors.size());
  // No bytes of an earlier, longer window travel along.
  std::fill(at + sizeof seal + vectors.size(), at + slot.size() - sizeof seal, std::byte{0});
  std::memcpy(at + slot.size() - sizeof seal, &seal, sizeof seal);
  return Ok();
}

BoardReader::BoardReader(BoardShape shape)
    : shape_(shape), last_(shape.slots), copy_(shape.slot_bytes()) {}

void BoardReader::Scan(std::span<const std::byte> board,
                       const std::function<void(const LoadVector&)>& take) {
  ScanWindows(board, [&take](std::uint32_t, std::span<const LoadVector> window) {
    for (const LoadVector& v : window) take(v);
  });
}

void BoardReader::ScanWindows(
    std::span<const std::byte> board,
    const std::function<void(std::uint32_t writer, std::span<const LoadVector> window)>& take) {
  const std::size_t slot_bytes = shape_.slot_bytes();
  const std::size_t slots = std::min<std::size_t>(shape_.slots, board.size() / slot_bytes);
  static const SlotSeal kNone;
  for (std::size_t i = 0; i < slots; ++i) {
    const std::byte* slot = board.data() + i * slot_bytes;
    // In the order the writer's put lays it down: the first seal, the
    // vectors, the last seal; only the copies are checked and used.
    const SlotSeal first = ReadSeal(slot);
    LastRead& last = last_[i];
    if (Same(first, kNone)) {
      ++counts_.empty;
      continue;
    }
    const bool same_writer = last.sequence != 0 && first.writer() == last.writer;
    if (same_writer && first.sequence() == last.sequence) {
      ++counts_.unchanged;
      continue;
    }
    if (first.version() != kBoardFormatVersion || first.count() == 0 ||
        first.count() > shape_.window || first.sequence() == 0) {
      ++counts_.foreign;
      continue;
    }
    const std::size_t vector_bytes = std::size_t{first.count()} * sizeof(LoadVector);
    std::memcpy(copy_.data(), slot + sizeof(SlotSeal), vector_bytes);
    const SlotSeal end = ReadSeal(slot + slot_bytes - sizeof(SlotSeal));
    if (!Same(first, end) || XXH3_64bits(copy_.data(), vector_bytes) != first.checksum()) {
      ++counts_.torn;
      continue;
    }
    if (same_writer && first.sequence() < last.sequence) {
      ++counts_.stale;
      continue;
    }
    last = LastRead{first.writer(), first.sequence()};
    ++counts_.windows;
    window_.resize(first.count());
    std::memcpy(window_.data(), copy_.data(), vector_bytes);
    counts_.vectors += first.count();
    take(first.writer(), window_);
  }
}

}  // namespace roam::load
