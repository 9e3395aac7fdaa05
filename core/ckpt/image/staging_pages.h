// The pages of one capture held in memory that was allocated and faulted in
// ahead of time and is reused from one capture to the next: a stop-copy
// migration's staging area. Filling it while a process is frozen costs a
// copy and no allocation (a fresh page costs more than copying 4 KiB into
// it on this kind of VM), and the restore reads the pages from it as from
// any PageSource. The pool's migration protocol puts pages into such a
// region on the target; here it is the stop-copy path without an image
// file.
//
// Thread-safety: one thread at a time. Lifetime: a span handed to a ForEach
// callback is valid until the next Reset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "core/ckpt/image/page_stream.h"
#include "roam/base/error.h"

namespace roam::ckpt {

class StagingPages final : public PageSink, public PageSource {
 public:
  // Maps `capacity` bytes (rounded up to pages) and faults them in now.
  static Result<std::unique_ptr<StagingPages>> Create(std::size_t capacity);
  ~StagingPages() override;
  StagingPages(const StagingPages&) = delete;
  StagingPages& operator=(const StagingPages&) = delete;

  // Empties it for the next capture; the memory stays mapped and faulted.
  void Reset();

  // Runs in increasing address order, as for every PageSink; more than fits
  // is kResourceExhausted.
  // Pages that already lie in the free part (read there through
  // WritableTail) are recorded where they are, without a copy.
  Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) override;
  std::span<std::byte> WritableTail(std::size_t bytes) override;
  Status Finish() override;

  Status ForEach(const RunFn& fn) override;
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;
  std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> Extent() const override;

  std::size_t capacity() const { return capacity_; }
  std::size_t used() const { return used_; }

 private:
  StagingPages(std::byte* memory, std::size_t capacity) : memory_(memory), capacity_(capacity) {}

  struct Run {
    std::uint64_t vaddr;
    std::size_t offset;  // into memory_
    std::size_t bytes;
  };
  std::byte* memory_;
  std::size_t capacity_;
  std::size_t used_ = 0;
  std::vector<Run> runs_;  // in address order, adjacent ones merged
  bool finished_ = false;
};

}  // namespace roam::ckpt
