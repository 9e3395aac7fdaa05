#include "core/ckpt/image/staging_pages.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "roam/base/mapped_memory.h"

namespace roam::ckpt {
namespace {

// ForEach hands out at most this much at a time: a restore writes each run
// with one call, and a gibibyte in one process_vm_writev helps nobody.
constexpr std::size_t kMaxRunBytes = std::size_t{4} << 20;

}  // namespace

Result<std::unique_ptr<StagingPages>> StagingPages::Create(std::size_t capacity) {
  if (capacity == 0) return MakeError(Errc::kInvalidArgument, "staging of 0 bytes");
  capacity = (capacity + kPageSize - 1) / kPageSize * kPageSize;
  // Faulted in now, in one call: that is the point of staging.
  ROAM_ASSIGN_OR_RETURN(void* memory, MapFaultedIn(capacity, "staging"));
  return std::unique_ptr<StagingPages>(new StagingPages(static_cast<std::byte*>(memory), capacity));
}

StagingPages::~StagingPages() { ::munmap(memory_, capacity_); }

void StagingPages::Reset() {
  used_ = 0;
  runs_.clear();
  finished_ = false;
}

Status StagingPages::Add(std::uint64_t vaddr, std::span<const std::byte> pages) {
  if (finished_) return MakeError(Errc::kInvalidArgument, "staging: already finished");
  if (vaddr % kPageSize != 0 || pages.empty() || pages.size() % kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument, "staging: run at {:#x} of {} bytes is not whole pages",
                     vaddr, pages.size());
  }
  if (!runs_.empty() && vaddr < runs_.back().vaddr + runs_.back().bytes) {
    return MakeError(Errc::kInvalidArgument, "staging: run at {:#x} is out of order", vaddr);
  }
  if (pages.size() > capacity_ - used_) {
    return MakeError(Errc::kResourceExhausted,
                     "staging of {} bytes is full ({} used, a run of {} more)", capacity_, used_,
                     pages.size());
  }
  // In place already (read into WritableTail, zero pages before it
  // skipped), or copied to the end.
  std::size_t offset = used_;
  const std::byte* free = memory_ + used_;
  const std::byte* end = memory_ + capacity_;
  if (pages.data() >= free && pages.data() < end) {
    offset = static_cast<std::size_t>(pages.data() - memory_);
    if (pages.size() > capacity_ - offset) {
      return MakeError(Errc::kInvalidArgument, "staging: run at {:#x} overruns the staging", vaddr);
    }
  } else {
    std::memcpy(memory_ + offset, pages.data(), pages.size());
  }
  const bool adjacent = !runs_.empty() && runs_.back().vaddr + runs_.back().bytes == vaddr &&
                        runs_.back().offset + runs_.back().bytes == offset;
  if (adjacent) {
    runs_.back().bytes += pages.size();
  } else {
    runs_.push_back(Run{vaddr, offset, pages.size()});
  }
  used_ = offset + pages.size();
  return Ok();
}

std::span<std::byte> StagingPages::WritableTail(std::size_t bytes) {
  if (finished_ || bytes > capacity_ - used_) return {};
  return {memory_ + used_, bytes};
}

Status StagingPages::Finish() {
  finished_ = true;
  return Ok();
}

Status StagingPages::ForEach(const RunFn& fn) {
  for (const Run& run : runs_) {
    for (std::size_t done = 0; done < run.bytes; done += kMaxRunBytes) {
      const std::size_t n = std::min(kMaxRunBytes, run.bytes - done);
      ROAM_TRY(fn(run.vaddr + done, {memory_ + run.offset + done, n}));
    }
  }
  return Ok();
}

Result<bool> StagingPages::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  if (out4k.size() != kPageSize || vaddr % kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument, "staging: ReadPage wants one aligned page");
  }
  auto it = std::upper_bound(runs_.begin(), runs_.end(), vaddr,
                             [](std::uint64_t a, const Run& r) { return a < r.vaddr; });
  if (it == runs_.begin()) return false;
  --it;
  if (vaddr >= it->vaddr + it->bytes) return false;
  std::memcpy(out4k.data(), memory_ + it->offset + (vaddr - it->vaddr), kPageSize);
  return true;
}

std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> StagingPages::Extent() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  out.reserve(runs_.size());
  for (const Run& run : runs_) out.emplace_back(run.vaddr, run.vaddr + run.bytes);
  return out;
}

}  // namespace roam::ckpt
