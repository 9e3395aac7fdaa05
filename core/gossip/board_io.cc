#include "board_io.h"

#include <algorithm>
#include <utility>

namespace roam::gossip::internal {

BoardIo::BoardIo(load::BoardShape shape, std::uint32_t writer,
                 std::unique_ptr<transport::MemoryRegion> board,
                 std::unique_ptr<transport::MemoryRegion> out, std::size_t buffers)
    : shape_(shape),
      writer_(writer),
      board_(std::move(board)),
      reader_(shape),
      out_(std::move(out)),
      shared_(std::make_shared<Shared>()) {
  shared_->in_flight.assign(buffers, 0);
}

Result<BoardIo> BoardIo::Create(transport::Fabric& fabric, load::BoardShape shape,
                                std::size_t buffers, std::uint32_t writer) {
  ROAM_TRY(shape.Check());
  // Zero-filled: every slot reads as empty until a peer writes it.
  ROAM_ASSIGN_OR_RETURN(auto board, fabric.Allocate(shape.bytes()));
  ROAM_ASSIGN_OR_RETURN(auto out, fabric.Allocate(buffers * shape.slot_bytes()));
  return BoardIo(shape, writer, std::move(board), std::move(out), buffers);
}

Result<std::optional<std::size_t>> BoardIo::Seal(std::span<const load::LoadVector> window) {
  const auto free = std::find(shared_->in_flight.begin(), shared_->in_flight.end(), 0);
  if (free == shared_->in_flight.end()) return std::optional<std::size_t>();
  const auto buffer = static_cast<std::size_t>(free - shared_->in_flight.begin());
  const std::span<std::byte> slot(out_->data() + buffer * shape_.slot_bytes(), shape_.slot_bytes());
  ROAM_TRY(load::SealSlot(shape_, writer_, ++sequence_, window, slot));
  return std::optional<std::size_t>(buffer);
}

Status BoardIo::Put(std::size_t buffer, const BoardPeer& peer) {
  const std::span<const std::byte> slot(out_->data() + buffer * shape_.slot_bytes(),
                                        shape_.slot_bytes());
  auto done = [shared = shared_, buffer](Status status) {
    --shared->in_flight[buffer];
    if (!status) ++shared->failures;
  };
  ROAM_TRY(peer.endpoint->Put(slot, peer.board->base() + load::SlotOffset(shape_, writer_),
                              *peer.board, done));
  ++shared_->in_flight[buffer];
  return Ok();
}

}  // namespace roam::gossip::internal
