// A PageSink that puts a capture's pages into a peer's staging region while
// the capture runs: the source half of a stop-copy migration's data path.
//
// Pages are read (WritableTail) into a registered send ring and put from
// there into the staging, densely, at increasing offsets from 0; the run
// table (address and length of each run, in order) is what the target needs
// to find them. The ring bounds what is in flight: when it is full, the sink
// progresses the fabric until earlier puts completed locally (flow control;
// over tcp a put completes only as the target progresses). Finish waits for
// every put and flushes, so the pages are visible at the target when it
// returns.
//
// Pre-copy uses one sink for the whole migration, in passes: each kRound
// pass (while the process runs) puts the pages it is given and remembers
// where each page's newest copy went; the kFinal pass (frozen) builds the
// run table from the pages it is given and the ones it is told are kept
// (AddKept: unchanged since a round put them, found where that round put
// them). kStream (stop-copy) puts every page it is given.
//
// Thread-safety: the fabric's thread. Lifetime: the fabric, endpoint, key
// and ring outlive the sink. Destroying it waits (briefly, best effort) for
// puts still in flight, so that the ring can be reused.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/ckpt/image/page_stream.h"
#include "core/migrate/wire.h"
#include "roam/base/error.h"
#include "roam/base/range_map.h"
#include "roam/transport/transport.h"

namespace roam::migrate {

class PutPageSink final : public ckpt::PageSink {
 public:
  enum class Pass { kStream, kRound, kFinal };
  struct Options {
    // Longest wait for ring space, a completion or the flush.
    std::chrono::milliseconds timeout{10000};
    std::uint64_t expected_bytes = 0;  // for `progress`
    std::function<void(std::uint64_t sent, std::uint64_t expected)> progress;
  };

  // `staging_capacity`: bytes of the staging the peer offered (at most the
  // key's length).
  PutPageSink(transport::Fabric& fabric, transport::Endpoint& target,
              const transport::RemoteKey& staging, std::uint64_t staging_capacity,
              std::span<std::byte> ring, Options options);
  ~PutPageSink() override;
  PutPageSink(const PutPageSink&) = delete;
  PutPageSink& operator=(const PutPageSink&) = delete;

  Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) override;
  std::span<std::byte> WritableTail(std::size_t bytes) override;
  // kFinal: pages a kRound pass put, unchanged since.
  Status AddKept(std::uint64_t vaddr, std::uint64_t bytes) override;
  Status Finish() override;

  // Starts a pass: pages start again from the lowest address, and the run
  // table from empty. Puts already issued stay in flight.
  void StartPass(Pass pass);

  const std::vector<wire::Run>& runs() const { return runs_; }
  std::uint64_t bytes_sent() const { return staged_; }
  // The most ring bytes that puts held at once (at most the ring's size).
  std::uint64_t most_in_flight() const { return most_in_flight_; }

 private:
  struct InFlight {
    std::uint64_t start;  // in ring bytes ever reserved (logical offsets)
    std::uint64_t end;
    bool done = false;
  };
  // Shared with the completions, which may run after the sink is gone.
  struct Shared {
    std::deque<InFlight> in_flight;
    Status error;  // the first put that failed
  };

  // Checks a run of a pass and moves the pass past it.
  Status CheckOrder(std::uint64_t vaddr, std::uint64_t bytes);
  // Puts `pages` to the staging at its next offset, returned.
  Result<std::uint64_t> Send(std::span<const std::byte> pages);
  void AddRun(std::uint64_t vaddr, std::uint64_t offset, std::uint64_t bytes);
  // Reserves `bytes` contiguous ring bytes, waiting for puts to complete;
  // returns the logical offset.
  Result<std::uint64_t> Reserve(std::size_t bytes);
  // Puts ring bytes at logical offset `at` to the staging's next offset.
  Status PutFromRing(std::uint64_t at, std::size_t bytes);
  void Retire();
  std::uint64_t InUseFrom() const;
  std::byte* RingAt(std::uint64_t logical) const { return ring_.data() + logical % ring_.size(); }

  transport::Fabric& fabric_;
  transport::Endpoint& target_;
  const transport::RemoteKey& staging_;
  std::uint64_t capacity_;
  std::span<std::byte> ring_;
  Options options_;
  std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  std::uint64_t head_ = 0;  // logical ring offset of the next reservation
  // The span last handed out by WritableTail (pages Added from it are put
  // without a copy).
  std::span<std::byte> tail_;
  std::uint64_t tail_at_ = 0;
  std::uint64_t staged_ = 0;  // staging offset of the next run
  std::uint64_t most_in_flight_ = 0;
  std::vector<wire::Run> runs_;
  // Where the rounds put each page's newest copy (staging offsets).
  RangeMap<std::uint64_t, OffsetValue> put_;
  Pass pass_ = Pass::kStream;
  std::uint64_t next_vaddr_ = 0;  // lowest address the next run may have
  bool finished_ = false;
};

}  // namespace roam::migrate
