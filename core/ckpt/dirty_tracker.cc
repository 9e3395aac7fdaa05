#include "core/ckpt/dirty_tracker.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <string>
#include <utility>

#include "core/ckpt/kernel_uapi.h"
#include "core/ckpt/procfs/maps.h"

namespace roam::ckpt {
namespace {

constexpr std::uint64_t kFeatures = UFFD_FEATURE_WP_ASYNC;
// User-mode faults only: with vm.unprivileged_userfaultfd=0 (Debian's
// default) a process that is not root may create no other kind, and async
// write-protect needs no fault handling at all (a write by the kernel, a
// read() into the page say, is still seen: measured on 6.18).
constexpr std::uint64_t kUffdFlags = O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY;
// Regions per PAGEMAP_SCAN call; a fuller buffer makes the kernel stop and
// report walk_end, and the scan goes on from there.
constexpr std::size_t kScanRegions = 256;

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// UFFDIO_API with async write protection; the fd is unusable if it fails.
Status EnableAsyncWriteProtect(int uffd) {
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kFeatures;
  if (::ioctl(uffd, UFFDIO_API, &api) != 0) {
    const int err = errno;
    // Unknown feature bits are EINVAL: the kernel predates 6.7.
    if (err == EINVAL) {
      return MakeError(Errc::kUnsupported, "userfaultfd: no UFFD_FEATURE_WP_ASYNC (Linux >= 6.7)");
    }
    return ErrnoError(err, "UFFDIO_API");
  }
  if ((api.features & kFeatures) != kFeatures) {
    return MakeError(Errc::kUnsupported, "userfaultfd: features {:#x} lack WP_ASYNC",
                     static_cast<std::uint64_t>(api.features));
  }
  return Ok();
}

// The pages of [start, end) that PAGEMAP_SCAN reports as written, protected
// again in the same walk. Returns the ioctl's raw result per call: >= 0
// regions, or -errno.
long ScanOnce(int pagemap, pm_scan_arg& arg) {
  const long n = ::ioctl(pagemap, PAGEMAP_SCAN, &arg);
  return n < 0 ? -errno : n;
}

pm_scan_arg WrittenScan(std::uint64_t start, std::uint64_t end, page_region* vec,
                        std::size_t vec_len) {
  pm_scan_arg arg{};
  arg.size = sizeof(arg);
  // CHECK_WPASYNC: a VMA that is not registered fails the scan (EPERM)
  // instead of being skipped, which would hide every write to it.
  arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
  arg.start = start;
  arg.end = end;
  arg.vec = reinterpret_cast<std::uintptr_t>(vec);
  arg.vec_len = vec_len;
  // Written pages that exist. Holes count as written for the kernel (no
  // uffd-wp bit); matching them would fill in page tables with markers for
  // every never-touched page of a sparse mapping. A page written into a hole
  // later is present without the bit and is reported then.
  arg.category_mask = PAGE_IS_WRITTEN;
  arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
  arg.return_mask = PAGE_IS_WRITTEN;
  return arg;
}

bool Tracked(const procfs::Vma& v) {
  // Read-only ones too: a page written and then mprotect'ed read-only
  // before the next round must still be reported.
  if (v.shared) return false;
  return procfs::SpecialOf(v.path) == procfs::Special::kNone;
}

void Coalesce(PageRuns& runs) {
  std::sort(runs.begin(), runs.end());
  std::size_t out = 0;
  for (const auto& run : runs) {
    if (out > 0 && run.first <= runs[out - 1].second) {
      runs[out - 1].second = std::max(runs[out - 1].second, run.second);
    } else {
      runs[out++] = run;
    }
  }
  runs.resize(out);
}

}  // namespace

Status DirtyTracker::Probe() {
  const int uffd = static_cast<int>(::syscall(SYS_userfaultfd, kUffdFlags));
  if (uffd < 0) return ErrnoError(errno, "userfaultfd");
  DirtyTracker self(::getpid(), uffd, -1);
  ROAM_TRY(EnableAsyncWriteProtect(uffd));
  self.pagemap_ = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (self.pagemap_ < 0) return ErrnoError(errno, "open /proc/self/pagemap");
  const long page = ::sysconf(_SC_PAGESIZE);
  void* mem = ::mmap(nullptr, static_cast<std::size_t>(page), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return ErrnoError(errno, "mmap");
  const auto start = reinterpret_cast<std::uintptr_t>(mem);
  const auto end = start + static_cast<std::uint64_t>(page);
  Status status = self.Arm(start, end);
  if (status) {
    *static_cast<volatile char*>(mem) = 1;
    PageRuns runs;
    auto scanned = self.ScanWritten(start, end, runs);
    if (!scanned) {
      status = tl::unexpected(scanned.error());
    } else if (!*scanned || runs.size() != 1) {
      status = MakeError(Errc::kUnsupported, "PAGEMAP_SCAN did not report a written page");
    }
  }
  ::munmap(mem, static_cast<std::size_t>(page));
  return status;
}

DirtyTracker::DirtyTracker(pid_t pid, int uffd, int pagemap)
    : pid_(pid), uffd_(uffd), pagemap_(pagemap) {}

DirtyTracker::DirtyTracker(DirtyTracker&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      uffd_(std::exchange(other.uffd_, -1)),
      pagemap_(std::exchange(other.pagemap_, -1)),
      stats_(other.stats_) {}

DirtyTracker& DirtyTracker::operator=(DirtyTracker&& other) noexcept {
  if (this != &other) {
    (void)Stop();
    pid_ = std::exchange(other.pid_, -1);
    uffd_ = std::exchange(other.uffd_, -1);
    pagemap_ = std::exchange(other.pagemap_, -1);
    stats_ = other.stats_;
  }
  return *this;
}

DirtyTracker::~DirtyTracker() { (void)Stop(); }

Result<DirtyTracker> DirtyTracker::Start(pid_t pid, SyscallInjector& injector) {
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return ErrnoError(errno, "pidfd_open {}", pid);
  // The userfaultfd must be made by the target: it binds to the creator's mm.
  auto remote = injector.Call("userfaultfd", SYS_userfaultfd, kUffdFlags);
  if (!remote) {
    ::close(pidfd);
    return tl::unexpected(remote.error());
  }
  const int uffd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, *remote, 0));
  const int getfd_errno = errno;
  ::close(pidfd);
  // Out of the target's fd table before it runs again, whatever happened.
  const auto closed =
      injector.Call("close userfaultfd", SYS_close, static_cast<std::uint64_t>(*remote));
  if (uffd < 0) return ErrnoError(getfd_errno, "pidfd_getfd of the userfaultfd of pid {}", pid);
  DirtyTracker tracker(pid, uffd, -1);
  if (!closed) return tl::unexpected(closed.error());
  ROAM_TRY(EnableAsyncWriteProtect(uffd));

  const std::string pagemap_path = "/proc/" + std::to_string(pid) + "/pagemap";
  tracker.pagemap_ = ::open(pagemap_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (tracker.pagemap_ < 0) return ErrnoError(errno, "open {}", pagemap_path);

  ROAM_ASSIGN_OR_RETURN(const auto vmas, procfs::ReadMaps(pid));
  for (const auto& v : vmas) {
    if (!Tracked(v)) continue;
    // One that cannot be registered is reported whole by every Collect.
    if (!tracker.Arm(v.start, v.end)) ++tracker.stats_.unarmable_vmas;
  }
  return tracker;
}

Status DirtyTracker::Arm(std::uint64_t start, std::uint64_t end) {
  uffdio_register reg{};
  reg.range.start = start;
  reg.range.len = end - start;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (::ioctl(uffd_, UFFDIO_REGISTER, &reg) != 0) {
    return ErrnoError(errno, "UFFDIO_REGISTER {:#x}-{:#x} of pid {}", start, end, pid_);
  }
  // Protect every page there is; a page that appears in a hole later has no
  // uffd-wp bit and is reported by the next scan.
  pm_scan_arg arg = WrittenScan(start, end, nullptr, 0);
  ++stats_.scans;
  if (const long n = ScanOnce(pagemap_, arg); n < 0) {
    return ErrnoError(static_cast<int>(-n), "PAGEMAP_SCAN protect {:#x}-{:#x} of pid {}", start,
                      end, pid_);
  }
  ++stats_.armed_vmas;
  return Ok();
}

Result<bool> DirtyTracker::ScanWritten(std::uint64_t start, std::uint64_t end, PageRuns& out) {
  std::array<page_region, kScanRegions> regions;
  while (start < end) {
    pm_scan_arg arg = WrittenScan(start, end, regions.data(), regions.size());
    ++stats_.scans;
    const long n = ScanOnce(pagemap_, arg);
    if (n == -EPERM) return false;
    if (n == -ENOTTY) {
      return MakeError(Errc::kUnsupported, "no PAGEMAP_SCAN ioctl (Linux >= 6.7)");
    }
    if (n < 0) {
      return ErrnoError(static_cast<int>(-n), "PAGEMAP_SCAN {:#x}-{:#x} of pid {}", start, end,
                        pid_);
    }
    for (long i = 0; i < n; ++i) out.emplace_back(regions[i].start, regions[i].end);
    // A full buffer stops the walk early; walk_end says where.
    if (arg.walk_end <= start) break;
    start = arg.walk_end;
  }
  return true;
}

Result<PageRuns> DirtyTracker::Collect() {
  if (uffd_ < 0) return MakeError(Errc::kInvalidArgument, "dirty tracker of pid {} stopped", pid_);
  ROAM_ASSIGN_OR_RETURN(const auto vmas, procfs::ReadMaps(pid_));
  PageRuns runs;
  for (const auto& v : vmas) {
    if (!Tracked(v)) continue;
    ROAM_ASSIGN_OR_RETURN(const bool armed, ScanWritten(v.start, v.end, runs));
    if (armed) continue;
    // New since the last round, moved, mapped over, or never registrable:
    // all of it counts as written. Registered first, so writes after this
    // point show up next round; a failure (the VMA changed again under a
    // running target, or cannot be registered) just repeats this next time.
    if (!Arm(v.start, v.end)) ++stats_.unarmable_vmas;
    runs.emplace_back(v.start, v.end);
  }
  Coalesce(runs);
  return runs;
}

Status DirtyTracker::Stop() {
  // Closing the last reference unregisters every VMA of the context and
  // clears the uffd-wp bits of their pages (userfaultfd_release).
  CloseFd(uffd_);
  CloseFd(pagemap_);
  return Ok();
}

}  // namespace roam::ckpt
