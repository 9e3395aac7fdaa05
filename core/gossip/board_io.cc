#include "board_io.h"

#include <algorithm>
#include <mutex>
#include <type_traits>
#include <utility>

namespace roam::gossip::internal {
namespace {

// The counters of every live BoardIo of the process, by slot. Completions
// may run on the thread of any fabric, hence the lock. Never destroyed: a
// completion may run during static destruction.
class Registry {
 public:
  static Registry& Get() {
    static auto* const registry = new Registry;
    return *registry;
  }

  BoardIo::Handle Add(BoardIo::Counters* counters) {
    const std::lock_guard lock(mu_);
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back();
    }
    slots_[slot].counters = counters;
    return {slot, slots_[slot].generation};
  }

  void Remove(BoardIo::Handle handle) {
    const std::lock_guard lock(mu_);
    Slot& s = slots_[handle.slot];
    s.counters = nullptr;
    ++s.generation;
    free_.push_back(handle.slot);
  }

  // A completion's outcome, counted if its BoardIo is still there.
  void Complete(BoardIo::Handle handle, std::uint32_t buffer, bool ok) {
    const std::lock_guard lock(mu_);
    const Slot& s = slots_[handle.slot];
    if (s.generation != handle.generation || s.counters == nullptr) return;
    --s.counters->in_flight[buffer];
    if (!ok) ++s.counters->failures;
  }

 private:
  struct Slot {
    BoardIo::Counters* counters = nullptr;
    std::uint32_t generation = 0;
  };
  std::mutex mu_;
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_;
};

}  // namespace

BoardIo::Registration::Registration(Counters* counters) : handle_(Registry::Get().Add(counters)) {}

BoardIo::Registration::Registration(Registration&& other) noexcept
    : handle_(other.handle_), held_(other.held_) {
  other.held_ = false;
}

BoardIo::Registration::~Registration() {
  if (held_) Registry::Get().Remove(handle_);
}

BoardIo::BoardIo(load::BoardShape shape, std::uint32_t writer,
                 std::unique_ptr<transport::MemoryRegion> board,
                 std::unique_ptr<transport::MemoryRegion> out, std::size_t buffers)
    : shape_(shape),
      writer_(writer),
      board_(std::move(board)),
      reader_(shape),
      out_(std::move(out)),
      counters_(std::make_unique<Counters>()),
      registration_(counters_.get()) {
  counters_->in_flight.assign(buffers, 0);
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
  const auto free = std::find(counters_->in_flight.begin(), counters_->in_flight.end(), 0);
  if (free == counters_->in_flight.end()) return std::optional<std::size_t>();
  const auto buffer = static_cast<std::size_t>(free - counters_->in_flight.begin());
  const std::span<std::byte> slot(out_->data() + buffer * shape_.slot_bytes(), shape_.slot_bytes());
  ROAM_TRY(load::SealSlot(shape_, writer_, ++sequence_, window, slot));
  return std::optional<std::size_t>(buffer);
}

Status BoardIo::Put(std::size_t buffer, const BoardPeer& peer) {
  const std::span<const std::byte> slot(out_->data() + buffer * shape_.slot_bytes(),
                                        shape_.slot_bytes());
  // Trivially copyable and two words: kept inside the std::function.
  auto done = [handle = registration_.handle(),
               buffer = static_cast<std::uint32_t>(buffer)](const Status& status) {
    Registry::Get().Complete(handle, buffer, status.has_value());
  };
  static_assert(std::is_trivially_copyable_v<decltype(done)> && sizeof(done) <= 16);
  ROAM_TRY(peer.endpoint->Put(slot, peer.board->base() + load::SlotOffset(shape_, writer_),
                              *peer.board, done));
  ++counters_->in_flight[buffer];
  return Ok();
}

}  // namespace roam::gossip::internal
