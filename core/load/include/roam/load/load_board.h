// The load board: a fixed-size region of registered memory on every node
// that its peers fill with one-sided puts (MOSIX dissemination, core/gossip).
// It is a few times the window size, not one slot per peer, so that it stays
// small in a pool of 100,000 nodes: a writer's slot is chosen by a hash of
// its id, and two writers that share a slot overwrite each other (the
// reader takes whichever window it finds whole).
//
// A slot holds one writer's window: its own load vector and the freshest
// few it knows, between two equal seals (load.fbs SlotSeal). A put of the
// whole slot is not atomic, and two writers may race into one slot: a
// reader takes the window only when the seal written first and the one
// written last are equal and the checksum of the vectors in between matches
// (else the slot is torn), when its sequence is newer than the one it last
// read from that slot's writer there (an older one is stale), and when the
// format version is its own. Torn and stale slots are skipped and counted;
// a torn slot is read again at the next scan, once its writer rewrote it.
//
// Thread-safety: BoardReader is used by one thread at a time. Lifetime: a
// scan reads the board only during the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "roam/base/error.h"
#include "roam/load/load_vector.h"

namespace roam::load {

inline constexpr std::uint16_t kBoardFormatVersion = 1;

struct BoardShape {
  // Vectors per slot: the writer's own, and others. A short window carries
  // mostly fresh vectors (roam-sim, docs/policy.md: at fanout 4 and window
  // 4 the policy reads entries 2 ticks old at the median, at window 8 and
  // fanout 2, 4).
  std::uint32_t window = 4;
  std::uint32_t slots = 32;  // a few times the window

  // The one-line reason the shape is unusable, if it is.
  Status Check() const;
  std::size_t slot_bytes() const;
  std::size_t bytes() const { return slot_bytes() * slots; }
};

// Where `writer`'s window goes on every board of a pool of this shape.
std::size_t SlotOffset(const BoardShape& shape, std::uint32_t writer);

// Fills `slot` (shape.slot_bytes() bytes, what is put at SlotOffset) with
// the window (1..shape.window vectors, the writer's own first), sealed
// with `sequence` (increasing with every write of this writer).
Status SealSlot(const BoardShape& shape, std::uint32_t writer, std::uint64_t sequence,
                std::span<const LoadVector> window, std::span<std::byte> slot);

struct BoardCounts {
  std::uint64_t windows = 0;    // new, whole windows read
  std::uint64_t vectors = 0;    // the vectors in them
  std::uint64_t unchanged = 0;  // slots read before, not written since
  std::uint64_t empty = 0;      // never written
  std::uint64_t torn = 0;       // seals differ, or the checksum does not match
  std::uint64_t stale = 0;      // older than what was read from that writer there
  std::uint64_t foreign = 0;    // another format version, or an impossible count
};

class BoardReader {
 public:
  explicit BoardReader(BoardShape shape);

  // Reads every slot of `board` (shape.bytes() bytes) and calls `take` for
  // each vector of each new, whole window. The board may be written while
  // it is read: each slot is copied out and checked before use.
  void Scan(std::span<const std::byte> board, const std::function<void(const LoadVector&)>& take);
  // The same, a window at a time: `take` gets the slot's writer and its
  // vectors in the order written (valid during the call only).
  void ScanWindows(
      std::span<const std::byte> board,
      const std::function<void(std::uint32_t writer, std::span<const LoadVector> window)>& take);

  const BoardCounts& counts() const { return counts_; }

 private:
  struct LastRead {
    std::uint32_t writer = 0;
    std::uint64_t sequence = 0;  // 0: nothing read from the slot yet
  };

  BoardShape shape_;
  std::vector<LastRead> last_;      // per slot
  std::vector<std::byte> copy_;     // one slot
  std::vector<LoadVector> window_;  // its vectors, aligned
  BoardCounts counts_;
};

}  // namespace roam::load
