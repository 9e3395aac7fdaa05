// The post-copy page server: a restored process runs at once while its
// private anonymous memory is still missing; a userfaultfd (MISSING mode) on
// those ranges turns each first touch into a request that this server fills
// from a PageSource, while a background stream places everything else in
// large batches. When every page is in place the userfaultfd is closed and
// the process no longer depends on us.
//
// A child the process forks while pages are missing is served too: the
// userfaultfd asks for fork events, whose message brings the child's own
// userfaultfd (already registered over the child's copies of the ranges).
// The child's missing pages are those the parent lacked at the fork (minus
// what it had discarded); they get their own fault handling and stream,
// taking turns with the parent's. Children of children likewise.
//
// Thread-safety and lifetime: Start() spawns one server thread, the only user
// of `source` and of the userfaultfd until Wait() returns; `source` must
// outlive the server and must not be used by anyone else meanwhile. Wait()
// is called once, from one thread. Destroying a server that was not waited
// for stops its thread (pages not yet placed stay missing, see Options) and
// joins it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "core/ckpt/image/page_stream.h"
#include "roam/base/error.h"

namespace roam::ckpt {

struct LazyStats {
  std::uint64_t faults = 0;          // page-fault messages read from the userfaultfd
  std::uint64_t pages_on_fault = 0;  // pages placed by fault batches (zero pages included)
  std::uint64_t pages_streamed = 0;  // pages placed by the background stream (zero pages included)
  std::uint64_t zero_pages = 0;      // pages placed as zeros (absent from the source)
  std::uint64_t first_fault_ns = 0;  // Start() to the first fault being served (0: no fault)
  std::uint64_t total_ns = 0;        // Start() to the end of serving
  std::uint64_t pages_total = 0;     // pages in the ranges
  std::uint64_t pages_unplaced = 0;  // never placed (the process exited first, or stopped early)
  std::uint64_t pages_dropped = 0;   // discarded by the process (madvise, munmap) before placement
  bool process_exited = false;       // serving ended because the process went away
  // Children (and their children) forked while pages were missing. Their
  // pages are not in the counts above.
  std::uint64_t forks = 0;
  std::uint64_t child_pages_placed = 0;    // pages placed into those children
  std::uint64_t child_pages_unplaced = 0;  // never placed: the child exited (or exec'd) first
  std::uint64_t children_exited = 0;       // children that went away before all were placed
};

class LazyPageServer final {
 public:
  struct Options {
    // Pages placed per fault: the aligned block around the faulting page (only
    // pages not yet placed). One 4 KiB UFFDIO_COPY costs ~10 us; 64 pages
    // (256 KiB) go at ~3.8 GB/s, so a block costs ~70 us and saves up to 63
    // further faults nearby. A power of two, 1..512.
    std::uint32_t fault_batch_pages = 64;
    // Pages per background stream batch; faults wait at most one batch. 0 turns
    // the stream off: pages are placed only on fault (a measurement mode; the
    // server then ends when every page is placed or the process exits, and
    // needs `pid` or `pidfd` to notice the exit). Forked children are always
    // streamed (256 pages when this is 0): their exit is noticed only by a
    // copy failing, the fork event names no pid.
    std::uint32_t stream_batch_pages = 256;
    // A run of at least this many pages absent from the source is placed with
    // UFFDIO_ZEROPAGE (maps the shared zero page, no memory used); shorter
    // runs between present pages are copied as zeros inside the same
    // UFFDIO_COPY. Measured on this VM, 64 MiB half zero in runs of 4 pages:
    // zero pages 16 ms, zeros copied 20-27 ms.
    std::uint32_t zeropage_min_run = 4;
    // The process whose memory this is: a pidfd (borrowed, duplicated by
    // Start) or a pid (Start opens a pidfd). Used to notice the exit while
    // waiting for faults, and to SIGKILL the process when serving fails. With
    // neither, an exit is noticed by the next UFFDIO_COPY failing (ESRCH).
    // getpid() names this very process (in-process use, tests): no pidfd, no
    // kill.
    int pidfd = -1;
    pid_t pid = 0;
    // Longest single wait for a fault when the stream is idle; exits and
    // Stop requests are noticed at this period.
    int poll_timeout_ms = 50;
    // The stream waits for ReleaseStream(): a restore holds it back until
    // the process resumes, so that its pages do not compete with the last
    // steps of the restore (downtime). Faults are served meanwhile.
    bool hold_stream = false;
  };

  // `uffd`: a fresh userfaultfd (from userfaultfd(2) or an injected call,
  // O_CLOEXEC or not, UFFDIO_API NOT yet done) whose mm owns `ranges`:
  // page-aligned [start, end) of private anonymous VMAs already mapped there,
  // sorted and disjoint. The server takes ownership of the fd and closes it
  // when it is done (or on failure here). It does the UFFDIO_API call itself,
  // asking for the non-cooperative events FORK, REMOVE, UNMAP and REMAP (so a
  // fork, madvise(DONTNEED), munmap or mremap of a missing page is seen
  // instead of later being overwritten or silently zero-filled) and for
  // POISON where the kernel has it (6.6+). Fork events need CAP_SYS_PTRACE
  // in the caller: without it Start fails with kPermissionDenied and
  // nothing is registered (restore then falls back to stop-copy). Any other user of the same fd (a
  // copy left in the target process) must be closed by the caller, or the registrations outlive the
  // server and a later discard makes a fault nobody serves. Pages absent from `source` are zero.
  // Registers the ranges (UFFDIO_REGISTER_MODE_MISSING) and starts the server thread.
  static Result<std::unique_ptr<LazyPageServer>> Start(
      int uffd, std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges, PageSource& source,
      Options options);
  static Result<std::unique_ptr<LazyPageServer>> Start(
      int uffd, std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges, PageSource& source) {
    return Start(uffd, std::move(ranges), source, Options{});
  }

  ~LazyPageServer();
  LazyPageServer(const LazyPageServer&) = delete;
  LazyPageServer& operator=(const LazyPageServer&) = delete;

  // Joins the server: the stats once every page is placed or the process went
  // away, and the same for every child it forked meanwhile (a normal end;
  // pages_unplaced says what was never placed), or the
  // first error. On an error (a source that fails to read, an unexpected
  // ioctl failure) the server first SIGKILLs the process when it has its
  // pidfd, then poisons every unplaced page (UFFDIO_POISON, where available)
  // and closes the userfaultfd: a faulting thread never hangs and never reads
  // a zero page where data was lost; it dies of SIGKILL or SIGBUS. Restore
  // would kill such a process anyway. Forked children (no pid is known for
  // them) are poisoned the same way; a child leaving serving (exit, exec)
  // is a normal end of that child, never an error.
  Result<LazyStats> Wait();

  // Asks the server to stop early (Wait then reports unplaced pages). Pages
  // left missing read as zero once the userfaultfd is closed: only for
  // teardown of a process that is being killed, or for tests.
  void Stop() { stop_.store(true, std::memory_order_relaxed); }

  // Lets a held stream (Options::hold_stream) begin; thread-safe.
  void ReleaseStream() { stream_held_.store(false, std::memory_order_relaxed); }

 private:
  class Engine;
  explicit LazyPageServer(std::unique_ptr<Engine> engine);

  std::unique_ptr<Engine> engine_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> stream_held_{false};
  std::thread thread_;
  std::optional<Result<LazyStats>> result_;  // set by the thread before it ends
};

}  // namespace roam::ckpt
