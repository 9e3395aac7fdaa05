// Capture: freeze a running, unmodified process with ptrace and record its
// whole state: metadata into an image::Image, page contents into a PageSink.
// The process is left exactly as it was (leave_running) or killed once the
// capture is complete; on any failure it is resumed unharmed.
//
// Thread-safety: one capture per thread; ptrace ties the tracee to the
// calling thread for the duration of the call.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/ckpt/image/page_stream.h"
#include "roam/base/error.h"

namespace roam::image {
class Image;
}

namespace roam::ckpt {

class PageStore;
class DirtyTracker;
class PreCopy;

struct CaptureOptions {
  // Resume the process after capture instead of killing it.
  bool leave_running = false;
  // The pre-copy that ran before: while frozen, only pages written since its
  // last round are read; the rest come from its store.
  PreCopy* pre_copy = nullptr;
};

struct CaptureStats {
  std::size_t vmas = 0;
  std::uint64_t pages_written = 0;  // pages in the page stream
  std::uint64_t zero_pages_skipped = 0;
  std::uint64_t file_pages_skipped = 0;  // clean pages of private file mappings
  std::uint64_t frozen_ns = 0;           // how long the process was stopped
  std::size_t injected_syscalls = 0;
  std::uint64_t pages_read = 0;        // read out of the process
  std::uint64_t pre_copied_pages = 0;  // taken from the pre-copy's store
  std::vector<std::string> notes;      // what was adjusted, one line each
};

// Pre-copy: copies a process's memory while it runs, in rounds, each one
// reading only the pages written since the round before (dirty tracking by
// asynchronous userfaultfd write-protect and PAGEMAP_SCAN, see
// core/ckpt/dirty_tracker.h). A Capture given the PreCopy then reads, while
// the process is frozen, only what was written after the last round.
// Correctness does not depend on the rounds: the final capture walks the
// whole layout and reads every page no round holds a current copy of.
//
// The rounds' pages go either to a store in this object (CopyRound(): a
// checkpoint to a file, whose final capture copies them from there) or
// straight to the final capture's own sink as they are read
// (CopyRound(sink): a migration, which puts them to the target at once; the
// final capture then refers the sink to them, PageSink::AddKept, and reads
// and sends nothing for them). One PreCopy uses one of the two.
//
// Thread-safety: one thread; Start and the final Capture on the same one.
class PreCopy final {
 public:
  struct Round {
    std::uint64_t pages_read = 0;  // pages read out of the process in this round
    std::uint64_t ns = 0;          // how long it took
    bool declined = false;         // `admit` said no: nothing was read
  };

  // Checks the process could be captured, stops it for a moment to start
  // tracking (two injected syscalls), and lets it run on. Errc::kUnsupported
  // when the kernel cannot track writes.
  static Result<PreCopy> Start(pid_t pid);

  PreCopy(PreCopy&&) noexcept;
  PreCopy& operator=(PreCopy&&) noexcept;
  ~PreCopy();

  // One round into the store while the process runs: everything the first
  // time, then what was written since the previous round.
  Result<Round> CopyRound();
  // One round into `sink`, the sink the final Capture is given. After the
  // first, `admit` (if set) is told how many bytes were written since the
  // round before (an upper bound of what the round reads) and may decline
  // the round: nothing is read, and the final capture reads those pages.
  Result<Round> CopyRound(PageSink& sink,
                          const std::function<bool(std::uint64_t bytes)>& admit = {});
  // Store rounds until one copies fewer than `enough_pages` pages or
  // `max_rounds` ran; returns them all.
  Result<std::vector<Round>> Converge(int max_rounds, std::uint64_t enough_pages);

  pid_t pid() const { return pid_; }
  DirtyTracker& tracker() { return *tracker_; }
  // For the final capture: what the rounds hold (one of the two is null).
  struct Kept;
  const PageStore* store() const { return store_.get(); }
  const Kept* kept() const { return kept_.get(); }
  // Drops these runs from what the rounds hold (written since).
  void Forget(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs);

 private:
  PreCopy(pid_t pid, std::unique_ptr<DirtyTracker> tracker);
  // A round into `sink` (a store's or the final capture's); zero pages
  // reported to `on_zero`.
  Result<Round> ReadRound(PageSink& sink,
                          const std::function<void(std::uint64_t, std::uint64_t)>& on_zero,
                          const std::function<bool(std::uint64_t bytes)>& admit = {});
  pid_t pid_;
  std::unique_ptr<DirtyTracker> tracker_;
  std::unique_ptr<PageStore> store_;  // store rounds
  std::unique_ptr<Kept> kept_;        // sink rounds
  bool first_round_ = true;
};

// Called after the pages are finished, while the process is still frozen:
// storing the metadata here means a process killed after capture is never
// lost, and never ran on past the image. An error resumes the process.
using CaptureCommit = std::function<Status(const image::Image& meta)>;

Result<CaptureStats> Capture(pid_t pid, const CaptureOptions& options, image::Image* meta,
                             PageSink& pages, const CaptureCommit& commit = {});

// Post-copy from the frozen process itself: records everything but the
// pages and leaves the process frozen; the source reads its pages where they
// are (process_vm_readv), for a Restore with `lazy` set, or a stop-copy one.
// Nothing is written anywhere, so the freeze is as short as the metadata.
//
// The source must be released on the thread that called CaptureAsSource
// (ptrace ties the frozen threads to it): Kill() once the restored process
// runs with all its pages (never two copies running), Resume() if the
// restore failed before the new process ran (the original goes on as it
// was). Destroying it without either resumes the process. Reads (ForEach,
// ReadPage) may come from another thread, one at a time (the page server).
class FrozenSource final : public PageSource {
 public:
  struct Impl;
  explicit FrozenSource(std::unique_ptr<Impl> impl);
  ~FrozenSource() override;
  FrozenSource(const FrozenSource&) = delete;
  FrozenSource& operator=(const FrozenSource&) = delete;

  Status ForEach(const RunFn& fn) override;
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;
  std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> Extent() const override;
  void Kill();
  void Resume();

  pid_t pid() const;
  // Pages that travel (zero ones written by the process included); walks
  // the anonymous mappings if that was not done yet.
  std::uint64_t pages();

 private:
  std::unique_ptr<Impl> impl_;
};

Result<std::unique_ptr<FrozenSource>> CaptureAsSource(pid_t pid, image::Image* meta,
                                                      CaptureStats* stats);

// Capture into an image directory (created with mode 0700).
Result<CaptureStats> CheckpointToDirectory(pid_t pid, const std::filesystem::path& dir,
                                           const CaptureOptions& options);

}  // namespace roam::ckpt
