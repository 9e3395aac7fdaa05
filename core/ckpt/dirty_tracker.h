// Dirty-page tracking for pre-copy migration: which pages of a live process
// were written since the previous round, so that each round resends only
// those while the process keeps running.
//
// Soft-dirty bits are absent on the kernels we run on, so writes are tracked
// with a userfaultfd in asynchronous write-protect mode (UFFD_FEATURE_WP_ASYNC,
// Linux >= 6.7) and found with the PAGEMAP_SCAN ioctl on /proc/PID/pagemap
// (Linux >= 6.7). In async mode a write to a protected page never produces a
// userfaultfd event: the kernel drops the page's uffd-wp bit and the write
// goes on, so nobody has to read the userfaultfd and the target never
// blocks. PAGEMAP_SCAN with PM_SCAN_WP_MATCHING reports the pages whose bit
// is gone (PAGE_IS_WRITTEN) and sets it again in the same page-table walk,
// so no write is lost between "collect" and "re-arm".
//
// Kernel facts this relies on (measured on 6.18, see dirty_tracker_test.cc):
// - The userfaultfd is created inside the target (injected userfaultfd(2))
//   because a userfaultfd is bound to the mm of the process that creates it;
//   roam takes it out with pidfd_getfd and closes the target's copy at once.
//   Every ioctl on it then acts on the target's mm from roam's process.
//   UFFDIO_REGISTER and PAGEMAP_SCAN take the target's mmap lock themselves,
//   so they work while the target runs: only Start, which injects, needs it
//   frozen.
// - Only pages that exist (present or swapped) are matched: the kernel
//   counts a hole as written, and protecting holes (markers, as with
//   UFFD_FEATURE_WP_UNPOPULATED) fills in page tables for every untouched
//   page: 128 MiB of them for a 64 GiB sparse mapping (measured). A page
//   that appears in a hole later carries no uffd-wp bit and is reported.
// - PAGEMAP_SCAN over a range that runs from a registered VMA into one that
//   is not fails with EPERM *after* re-protecting the first part: the writes
//   found there are lost (measured). Hence one scan per VMA, and a VMA whose
//   scan fails is reported whole.
// - A VMA that mremap moves loses its registration (no UFFD_FEATURE_EVENT_REMAP),
//   brk growth and mmap create VMAs that are not registered, and so does
//   anything mapped over a registered range. PM_SCAN_CHECK_WPASYNC makes the
//   scan of such a VMA fail with EPERM instead of silently skipping it; the
//   tracker then reports the whole VMA as written and registers it.
// - Closing the userfaultfd unregisters every VMA and clears the uffd-wp
//   bits (the kernel's userfaultfd_release): the process carries on as if
//   never tracked, also when roam dies.
//
// What is tracked: every private VMA except [vdso]/[vvar]/[vsyscall],
// read-only ones included (a page written and then made read-only before
// the next round is still reported). Not tracked: shared mappings (refused
// for migration anyway). A VMA that cannot be registered (already
// registered with another userfaultfd: EBUSY; VM_IO or VM_PFNMAP: EINVAL)
// is reported whole in every Collect.
//
// Not reported: pages that went away (MADV_DONTNEED, munmap); they are holes
// now, and a pre-copy round finds them missing in pagemap. Unmapped ranges
// simply vanish; the final round takes the layout from /proc/PID/maps. A
// write fault on a protected transparent huge page splits it, so reports
// stay per page. After execve the pagemap and userfaultfd still refer to the
// old mm: Collect then fails or reports nothing, so callers re-Start.
//
// Thread-safety: a DirtyTracker is used from one thread at a time. Start
// needs the thread that attached the injector's Tracee; Collect and Stop can
// run on any thread and need no ptrace.
// Lifetime: move-only; destroying it is Stop.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "core/ckpt/inject/syscall_injector.h"
#include "roam/base/error.h"

namespace roam::ckpt {

// Page-aligned [start, end) address ranges, sorted and coalesced.
using PageRuns = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

class DirtyTracker final {
 public:
  // What the tracker did so far, for benchmarks and logs.
  struct Stats {
    std::uint64_t scans = 0;           // PAGEMAP_SCAN ioctls
    std::uint64_t armed_vmas = 0;      // VMAs registered and write-protected
    std::uint64_t unarmable_vmas = 0;  // registration refused: reported whole
  };

  // Errc::kUnsupported naming what is missing when this kernel lacks
  // UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN; tried on a
  // private mapping of roam's own process.
  static Status Probe();

  // `pid` is frozen (every thread in a ptrace stop) and `injector` drives one
  // of its threads. Injects userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY), takes it out
  // with pidfd_getfd and closes it in the target right away (2 injected
  // calls), enables async write protection and registers and write-protects
  // every tracked VMA. The target may be resumed as soon as this returns.
  static Result<DirtyTracker> Start(pid_t pid, SyscallInjector& injector);

  DirtyTracker(DirtyTracker&& other) noexcept;
  DirtyTracker& operator=(DirtyTracker&& other) noexcept;
  DirtyTracker(const DirtyTracker&) = delete;
  DirtyTracker& operator=(const DirtyTracker&) = delete;
  ~DirtyTracker();

  // Pages written since Start or the previous Collect, re-protected for the
  // next round in the same walk. VMAs that appeared since (mmap, mremap, brk
  // growth, a mapping placed over a tracked one) are
  // reported whole and registered. The target may run meanwhile: a write
  // racing with the scan lands in this round or the next, never in none.
  // Fails when the process is gone.
  Result<PageRuns> Collect();

  // Unregisters everything (by closing the userfaultfd) and closes the
  // pagemap; the process carries on unaffected. Safe to call twice.
  Status Stop();

  pid_t pid() const { return pid_; }
  const Stats& stats() const { return stats_; }

 private:
  DirtyTracker(pid_t pid, int uffd, int pagemap);
  // Registers [start, end) for write protection and protects its pages.
  Status Arm(std::uint64_t start, std::uint64_t end);
  // Appends the written pages of [start, end) to `out` and re-protects them;
  // false when part of the range is not registered (EPERM).
  Result<bool> ScanWritten(std::uint64_t start, std::uint64_t end, PageRuns& out);

  pid_t pid_ = -1;
  int uffd_ = -1;
  int pagemap_ = -1;
  Stats stats_;
};

}  // namespace roam::ckpt
