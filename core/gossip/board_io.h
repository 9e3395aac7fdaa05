// What the disseminator and anti-tasks share: a node's own load board
// (registered memory peers put into, zeroed, scanned for new windows) and
// the writing side: board windows sealed into a few buffers of registered
// memory and put from there into peers' boards, at the writer's slot. A peer that does not progress
// (over tcp a put completes only as its target progresses) holds the buffer its put reads until its
// endpoint fails; the other buffers keep the node writing.
//
// Thread-safety: one thread, the fabric's. Completions may run after the
// object is gone: they find its counters through a process-wide registry
// (board_io.cc), and do nothing once it is gone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "roam/base/error.h"
#include "roam/gossip/dissemination.h"
#include "roam/load/load_board.h"
#include "roam/transport/transport.h"

namespace roam::gossip::internal {

class BoardIo final {
 public:
  // The board and `buffers` sealed windows of `shape`, allocated on
  // `fabric`; `writer` is this node.
  static Result<BoardIo> Create(transport::Fabric& fabric, load::BoardShape shape,
                                std::size_t buffers, std::uint32_t writer);

  Result<transport::Bytes> PackBoardKey() const { return board_->PackKey(); }
  // The new, whole windows peers wrote into this node's board since the
  // last scan (load::BoardReader::ScanWindows).
  void Scan(
      const std::function<void(std::uint32_t writer, std::span<const load::LoadVector>)>& take) {
    reader_.ScanWindows(std::span<const std::byte>(board_->data(), shape_.bytes()), take);
  }
  const load::BoardCounts& board_counts() const { return reader_.counts(); }

  // Seals `window` (the writer's next sequence) into a buffer no put reads;
  // nullopt when every buffer is still read.
  Result<std::optional<std::size_t>> Seal(std::span<const load::LoadVector> window);
  // Puts sealed buffer `buffer` into `peer`'s board at the writer's slot.
  // A refusal at issue is returned; a failure at completion is counted.
  Status Put(std::size_t buffer, const BoardPeer& peer);
  // Puts that completed with an error.
  std::uint64_t failures() const { return counters_->failures; }

  // What the completions of this object's puts update.
  struct Counters {
    std::vector<std::uint64_t> in_flight;  // puts reading each buffer
    std::uint64_t failures = 0;
  };
  // Names a BoardIo's counters in the registry: a slot, and the slot's
  // generation when it was taken (a later BoardIo may reuse the slot).
  struct Handle {
    std::uint32_t slot = 0;
    std::uint32_t generation = 0;
  };
  // Holds a slot of the registry for its lifetime (movable).
  class Registration {
   public:
    explicit Registration(Counters* counters);
    Registration(Registration&& other) noexcept;
    Registration& operator=(Registration&&) = delete;
    Registration(const Registration&) = delete;
    ~Registration();
    Handle handle() const { return handle_; }

   private:
    Handle handle_;
    bool held_ = true;
  };

 private:
  BoardIo(load::BoardShape shape, std::uint32_t writer,
          std::unique_ptr<transport::MemoryRegion> board,
          std::unique_ptr<transport::MemoryRegion> out, std::size_t buffers);

  load::BoardShape shape_;
  std::uint32_t writer_;
  std::unique_ptr<transport::MemoryRegion> board_;
  load::BoardReader reader_;
  std::unique_ptr<transport::MemoryRegion> out_;
  std::uint64_t sequence_ = 0;
  // A completion names the counters by a Handle, not by a shared_ptr: a
  // std::function keeps a callable inline only when it is trivially
  // copyable and at most two words (libstdc++), so a shared_ptr costs a
  // heap block for every put, and a simulated pool puts 400,000 times a
  // tick. The counters stay where they are while the object moves.
  std::unique_ptr<Counters> counters_;
  Registration registration_;
};

}  // namespace roam::gossip::internal
