#include "roam/ckpt/restore.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "core/ckpt/arch/arch.h"
#include "core/ckpt/file_identity.h"
#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/image_dir.h"
#include "core/ckpt/image/page_stream.h"
#include "core/ckpt/inject/colocation.h"
#include "core/ckpt/inject/syscall_injector.h"
#include "core/ckpt/lazy_pages.h"
#include "core/ckpt/pid_namespace.h"
#include "core/ckpt/procfs/procfs.h"

namespace roam::ckpt {
namespace {

// The trampoline mapping: one page of code, then scratch for arguments.
constexpr std::uint64_t kTrampolineSize = 5 * kPageSize;
constexpr std::uint64_t kScratchOffset = kPageSize;
constexpr std::uint64_t kScratchSize = kTrampolineSize - kScratchOffset;
constexpr int kCapSysAdmin = 21;
constexpr int kCapCheckpointRestore = 40;
constexpr unsigned kRseqFlagUnregister = 1;

std::int64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

bool IsVdsoKind(image::Vma::Kind kind) {
  return kind == image::Vma::VDSO || kind == image::Vma::VVAR || kind == image::Vma::VVAR_VCLOCK;
}

bool IsVdsoName(const std::string& name) { return procfs::InVdsoBlock(procfs::SpecialOf(name)); }

Result<bool> MayCheckpointRestore() {
  ROAM_ASSIGN_OR_RETURN(const procfs::Status self, procfs::ReadStatus(getpid()));
  return ((self.cap_eff >> kCapCheckpointRestore) & 1) != 0 ||
         ((self.cap_eff >> kCapSysAdmin) & 1) != 0;
}

// The vdso-related mappings of this process, "name:size" in address order.
// Every process on this node gets the same layout, so ours stands for the
// stub's.
Result<std::vector<std::string>> OurVdsoLayout() {
  ROAM_ASSIGN_OR_RETURN(const auto vmas, procfs::ReadMaps(getpid()));
  std::vector<std::string> layout;
  for (const auto& v : vmas) {
    if (IsVdsoName(v.path)) layout.push_back(fmt::format("{}:{}", v.path, v.end - v.start));
  }
  return layout;
}

// A page-aligned range of `size` bytes free in every given layout, above
// 4 GiB (clear of non-PIE binaries and brk heaps).
Result<std::uint64_t> FindGap(std::vector<std::pair<std::uint64_t, std::uint64_t>> used,
                              std::uint64_t size) {
  std::sort(used.begin(), used.end());
  std::uint64_t candidate = std::uint64_t{1} << 32;
  const std::uint64_t guard = kPageSize;
  for (const auto& [start, end] : used) {
    if (end + guard <= candidate) continue;
    if (start >= candidate + size + guard) break;
    candidate = ((end + guard + kPageSize - 1) / kPageSize) * kPageSize;
  }
  if (candidate + size > (std::uint64_t{1} << 47)) {
    return MakeError(Errc::kResourceExhausted, "no free gap of {} bytes in the address space",
                     size);
  }
  return candidate;
}

// The stub: a raw clone3 child (optionally with the image's pid, in the pid
// namespace the calling thread's children go to) that wires up fds 0-2,
// closes the rest, asks to be traced and stops itself. Only raw syscalls run
// in the child: glibc state copied from the parent (the cached tid among it)
// is not to be trusted there.
Result<pid_t> SpawnStub(const RestoreOptions& options, pid_t wanted_pid) {
  clone_args args{};
  args.exit_signal = SIGCHLD;
  pid_t set_tid = wanted_pid;
  const bool keep_pid = options.same_pid || options.pid_namespace;
  if (keep_pid) {
    args.set_tid = reinterpret_cast<std::uint64_t>(&set_tid);
    args.set_tid_size = 1;
  }
  const long pid = syscall(SYS_clone3, &args, sizeof(args));
  if (pid < 0) {
    const int err = errno;
    if (keep_pid && err == EEXIST) {
      return Error(
          Errc::kAlreadyExists, err,
          fmt::format("pid {} is in use {}", wanted_pid,
                      options.pid_namespace ? "in the new pid namespace" : "on this node"));
    }
    if (keep_pid && err == EPERM) {
      return Error(Errc::kPermissionDenied, err,
                   fmt::format("keeping pid {} needs CAP_CHECKPOINT_RESTORE", wanted_pid));
    }
    return ErrnoError(err, "clone3 restore stub");
  }
  if (pid == 0) {
    for (int i = 0; i < 3; ++i) {
      if (options.stdio[i] >= 0) syscall(SYS_dup2, options.stdio[i], i);
    }
    syscall(SYS_close_range, 3, ~0U, 0);
    syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0);
    syscall(SYS_kill, syscall(SYS_getpid), SIGSTOP);
    syscall(SYS_exit_group, 127);
  }
  return static_cast<pid_t>(pid);
}

// Owns the stub until it is handed over: any failure kills and reaps it, so
// a failed restore leaves nothing behind.
class StubGuard {
 public:
  explicit StubGuard(pid_t pid) : pid_(pid) {}
  StubGuard(const StubGuard&) = delete;
  StubGuard& operator=(const StubGuard&) = delete;
  ~StubGuard() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    while (waitpid(pid_, nullptr, __WALL) < 0 && errno == EINTR) {
    }
  }
  void Release() { pid_ = -1; }

 private:
  pid_t pid_;
};

// Rebuilds one process inside a stopped stub.
class Rebuilder {
 public:
  Rebuilder(const image::Image& meta, Tracee& tracee, const RemoteMemory& memory,
            SyscallInjector& injector, std::uint64_t trampoline, RestoreStats& stats)
      : meta_(meta),
        tracee_(tracee),
        memory_(memory),
        injector_(injector),
        scratch_(trampoline + kScratchOffset),
        stats_(stats) {}

  Result<long> Call(std::string_view what, long nr, std::uint64_t a0 = 0, std::uint64_t a1 = 0,
                    std::uint64_t a2 = 0, std::uint64_t a3 = 0, std::uint64_t a4 = 0,
                    std::uint64_t a5 = 0) {
    return injector_.Call(what, nr, a0, a1, a2, a3, a4, a5);
  }

  // Copies bytes into the scratch area; returns their address in the stub.
  Result<std::uint64_t> Stage(std::span<const std::byte> bytes, std::size_t offset = 0) {
    if (offset + bytes.size() > kScratchSize) {
      return MakeError(Errc::kResourceExhausted, "argument of {} bytes exceeds the scratch area",
                       bytes.size());
    }
    ROAM_TRY(memory_.Write(scratch_ + offset, bytes));
    return scratch_ + offset;
  }
  Result<std::uint64_t> StageString(const std::string& s, std::size_t offset = 0) {
    return Stage(std::as_bytes(std::span(s.c_str(), s.size() + 1)), offset);
  }

  Status MapVmas() {
    std::map<std::string, long> open_files;
    for (const auto& v : meta_.vmas()) {
      if (IsVdsoKind(v.kind()) || v.kind() == image::Vma::VSYSCALL) continue;
      const std::uint64_t len = v.end() - v.start();
      const int prot = static_cast<int>(v.prot());
      if (v.kind() == image::Vma::ANONYMOUS) {
        const int flags =
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | (v.grows_down() ? MAP_GROWSDOWN : 0);
        ROAM_TRY(Call(fmt::format("mmap anonymous {:#x}", v.start()), SYS_mmap, v.start(), len,
                      prot, flags, static_cast<std::uint64_t>(-1), 0));
        continue;
      }
      auto it = open_files.find(v.name());
      if (it == open_files.end()) {
        ROAM_ASSIGN_OR_RETURN(const std::uint64_t path, StageString(v.name()));
        ROAM_ASSIGN_OR_RETURN(const long fd, Call(fmt::format("open {}", v.name()), SYS_open, path,
                                                  O_RDONLY | O_CLOEXEC));
        it = open_files.emplace(v.name(), fd).first;
      }
      const int share = v.kind() == image::Vma::FILE_SHARED ? MAP_SHARED : MAP_PRIVATE;
      ROAM_TRY(Call(fmt::format("mmap {} at {:#x}", v.name(), v.start()), SYS_mmap, v.start(), len,
                    prot, share | MAP_FIXED, static_cast<std::uint64_t>(it->second),
                    v.file_offset()));
    }
    for (const auto& [name, fd] : open_files) ROAM_TRY(Call("close", SYS_close, fd));
    return Ok();
  }

  // Stop-copy: allocates the memory the pages will fill before they are
  // written. One MADV_POPULATE_WRITE over a range costs about half of what
  // faulting its pages one at a time during the copy does (1 GiB here:
  // 257 ms to populate + 102 ms to copy, against 676 ms). Only where the
  // source has pages (a sparse mapping stays sparse), only in writable
  // private anonymous mappings, only runs long enough to repay an injected
  // call; best effort: a kernel without MADV_POPULATE_WRITE (before 5.14)
  // just faults during the copy.
  void Populate(const PageSource& pages) {
    const auto extent = pages.Extent();
    if (!extent) return;
    // Touching ranges (a staging's runs split where the bytes lie apart)
    // go in one call: each call is an injected syscall.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> merged;
    for (const auto& [lo, hi] : *extent) AppendRange(merged, lo, hi);
    constexpr std::uint64_t kMinRun = 64 * kPageSize;
    for (const auto& v : meta_.vmas()) {
      if (v.kind() != image::Vma::ANONYMOUS || (v.prot() & PROT_WRITE) == 0) continue;
      for (const auto& [lo, hi] : merged) {
        const std::uint64_t start = std::max(lo, v.start());
        const std::uint64_t end = std::min(hi, v.end());
        if (end <= start || end - start < kMinRun) continue;
        if (!Call("madvise populate", SYS_madvise, start, end - start, MADV_POPULATE_WRITE)) {
          return;
        }
      }
    }
  }

  Status WritePages(PageSource& pages) {
    return pages.ForEach([this](std::uint64_t vaddr, std::span<const std::byte> data) -> Status {
      ROAM_TRY(memory_.Write(vaddr, data));
      stats_.pages_written += data.size() / kPageSize;
      return Ok();
    });
  }

  // Pages held in memory (PageSource::RunsStayValid), split by bytes among
  // `threads` writers. Each write faults its pages in as it goes, so the
  // faults (fresh memory: the larger half of the cost) run in parallel
  // too. 1 GiB here, two threads: 240-258 ms against 492-555 ms for
  // Populate and one writer.
  Status WritePagesInParallel(PageSource& pages, unsigned threads) {
    struct Run {
      std::uint64_t vaddr;
      std::span<const std::byte> data;
    };
    std::vector<Run> runs;
    std::uint64_t total = 0;
    ROAM_TRY(pages.ForEach([&](std::uint64_t vaddr, std::span<const std::byte> data) -> Status {
      runs.push_back({vaddr, data});
      total += data.size();
      return Ok();
    }));
    // Writer i takes the runs from bounds[i] to bounds[i + 1].
    std::vector<std::size_t> bounds = {0};
    std::uint64_t covered = 0;
    for (std::size_t r = 0; r < runs.size(); ++r) {
      covered += runs[r].data.size();
      if (bounds.size() < threads && covered >= total * bounds.size() / threads) {
        bounds.push_back(r + 1);
      }
    }
    bounds.push_back(runs.size());
    std::vector<Status> results(bounds.size() - 1, Ok());
    const auto write = [&](std::size_t i) {
      for (std::size_t r = bounds[i]; r < bounds[i + 1]; ++r) {
        if (auto w = memory_.Write(runs[r].vaddr, runs[r].data); !w) {
          results[i] = std::move(w);
          return;
        }
      }
    };
    std::vector<std::thread> helpers;
    for (std::size_t i = 1; i < results.size(); ++i) helpers.emplace_back(write, i);
    write(0);
    for (auto& h : helpers) h.join();
    for (auto& r : results) ROAM_TRY(std::move(r));
    stats_.pages_written += total / kPageSize;
    return Ok();
  }

  // Post-copy: the memory left to the page server (private anonymous
  // writable mappings), page-aligned, sorted.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> LazyRanges() const {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (const auto& v : meta_.vmas()) {
      if (v.kind() == image::Vma::ANONYMOUS && (v.prot() & PROT_WRITE) != 0) {
        ranges.emplace_back(v.start(), v.end());
      }
    }
    return ranges;
  }

  // Post-copy: writes now what must be there before the process runs: every
  // page outside the lazy ranges, each thread's rseq area (the kernel writes
  // it at registration) and the page under each stack pointer.
  Status WriteEagerPages(PageSource& pages,
                         const std::vector<std::pair<std::uint64_t, std::uint64_t>>& lazy) {
    const auto is_lazy = [&lazy](std::uint64_t a) {
      return std::any_of(lazy.begin(), lazy.end(),
                         [a](const auto& r) { return a >= r.first && a < r.second; });
    };
    // Where the source may have pages: only those are asked for (walking
    // every page of every library mapping cost ~7 ms at each restore).
    const auto extent = pages.Extent();
    const auto may_have = [&extent](std::uint64_t start, std::uint64_t end) {
      std::vector<std::pair<std::uint64_t, std::uint64_t>> parts;
      if (!extent) {
        parts.emplace_back(start, end);
        return parts;
      }
      for (const auto& [lo, hi] : *extent) {
        if (hi <= start || lo >= end) continue;
        parts.emplace_back(std::max(lo, start), std::min(hi, end));
      }
      return parts;
    };
    std::vector<std::uint64_t> must;
    for (const auto& t : meta_.threads()) {
      if (t.has_rseq()) must.push_back(t.rseq().address() & ~(kPageSize - 1));
      must.push_back(t.x86().rsp() & ~(kPageSize - 1));
    }
    for (const auto& v : meta_.vmas()) {
      if (IsVdsoKind(v.kind()) || v.kind() == image::Vma::VSYSCALL ||
          v.kind() == image::Vma::FILE_SHARED || is_lazy(v.start())) {
        continue;
      }
      for (const auto& [lo, hi] : may_have(v.start(), v.end())) {
        for (std::uint64_t a = lo; a < hi; a += kPageSize) must.push_back(a);
      }
    }
    std::sort(must.begin(), must.end());
    must.erase(std::unique(must.begin(), must.end()), must.end());
    std::vector<std::pair<std::uint64_t, std::uint64_t>> wanted;
    for (const std::uint64_t a : must) AppendRange(wanted, a, a + kPageSize);
    ROAM_TRY(pages.Prefetch(wanted));
    // Adjacent pages go in one write (of at most 4 MiB).
    constexpr std::size_t kEagerWriteMax = 4 << 20;
    std::vector<std::byte> run;
    std::uint64_t run_start = 0;
    const auto flush = [&]() -> Status {
      if (run.empty()) return Ok();
      ROAM_TRY(memory_.Write(run_start, run));
      stats_.pages_written += run.size() / kPageSize;
      run.clear();
      return Ok();
    };
    std::vector<std::byte> page(kPageSize);
    for (const std::uint64_t a : must) {
      ROAM_ASSIGN_OR_RETURN(const bool present, pages.ReadPage(a, page));
      if (!present) continue;
      if (!run.empty() && (run_start + run.size() != a || run.size() >= kEagerWriteMax)) {
        ROAM_TRY(flush());
      }
      if (run.empty()) run_start = a;
      run.insert(run.end(), page.begin(), page.end());
    }
    return flush();
  }

  // A userfaultfd of the restored process, taken out of it (pidfd_getfd) so
  // that only roam holds it. Created while the stub still has the
  // restorer's credentials: a uffd made after dropping to a user could not
  // serve kernel-mode faults where vm.unprivileged_userfaultfd is 0.
  Result<int> TakeUserfaultfd(pid_t pid) {
    ROAM_ASSIGN_OR_RETURN(const long remote, Call("userfaultfd", SYS_userfaultfd, O_CLOEXEC));
    const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) return ErrnoError(errno, "pidfd_open {}", pid);
    const int local = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, remote, 0));
    const int err = errno;
    close(pidfd);
    if (local < 0) return ErrnoError(err, "pidfd_getfd of the userfaultfd of pid {}", pid);
    ROAM_TRY(Call("close userfaultfd", SYS_close, remote));
    return local;
  }

  // Moves the stub's vdso block, parked at `parked`, onto the image's
  // addresses, keeping the pieces' relative layout.
  Status PlaceVdso(std::uint64_t parked, std::uint64_t stub_block_start,
                   const std::vector<procfs::Vma>& stub_vdso) {
    std::vector<const image::Vma*> saved;
    for (const auto& v : meta_.vmas()) {
      if (IsVdsoKind(v.kind())) saved.push_back(&v);
    }
    if (saved.size() != stub_vdso.size()) {
      return MakeError(Errc::kIncompatible, "the image has {} vdso mappings, this node {}",
                       saved.size(), stub_vdso.size());
    }
    for (std::size_t i = 0; i < saved.size(); ++i) {
      const std::uint64_t from = parked + (stub_vdso[i].start - stub_block_start);
      const std::uint64_t size = stub_vdso[i].end - stub_vdso[i].start;
      ROAM_TRY(Call(fmt::format("mremap {} to {:#x}", stub_vdso[i].path, saved[i]->start()),
                    SYS_mremap, from, size, size, MREMAP_MAYMOVE | MREMAP_FIXED,
                    saved[i]->start()));
    }
    return Ok();
  }

  Status SetMm(bool may_set_exe) {
    const auto& mm = meta_.mm();
    std::vector<std::uint64_t> auxv(mm.auxv().begin(), mm.auxv().end());
    long exe_fd = -1;
    if (StubRunsImageExe()) {
      // Already the right link; and the kernel refuses (EBUSY) to replace an
      // exe link whose file is still mapped, as the image's own text is.
    } else if (may_set_exe) {
      ROAM_ASSIGN_OR_RETURN(const std::uint64_t path, StageString(meta_.exe(), 2048));
      ROAM_ASSIGN_OR_RETURN(exe_fd, Call("open exe", SYS_open, path, O_RDONLY | O_CLOEXEC));
    } else {
      stats_.notes.push_back("exe link not restored: needs CAP_CHECKPOINT_RESTORE");
    }
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t auxv_at,
                          Stage(std::as_bytes(std::span(auxv)), sizeof(prctl_mm_map)));
    prctl_mm_map map{};
    map.start_code = mm.start_code();
    map.end_code = mm.end_code();
    map.start_data = mm.start_data();
    map.end_data = mm.end_data();
    map.start_brk = mm.start_brk();
    map.brk = mm.brk();
    map.start_stack = mm.start_stack();
    map.arg_start = mm.arg_start();
    map.arg_end = mm.arg_end();
    map.env_start = mm.env_start();
    map.env_end = mm.env_end();
    map.auxv = reinterpret_cast<__u64*>(auxv_at);
    map.auxv_size = static_cast<__u32>(auxv.size() * sizeof(std::uint64_t));
    map.exe_fd = static_cast<__u32>(exe_fd);
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t map_at, Stage(BytesOf(map)));
    ROAM_TRY(
        Call("prctl PR_SET_MM_MAP", SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, map_at, sizeof(map), 0));
    if (exe_fd >= 0) ROAM_TRY(Call("close exe", SYS_close, exe_fd));
    return Ok();
  }

  bool StubRunsImageExe() const {
    struct stat ours {
    }, theirs{};
    const std::string link = fmt::format("/proc/{}/exe", tracee_.tid());
    return stat(link.c_str(), &ours) == 0 && stat(meta_.exe().c_str(), &theirs) == 0 &&
           ours.st_dev == theirs.st_dev && ours.st_ino == theirs.st_ino;
  }

  Status RestoreFds() {
    int highest = 2;
    for (const auto& f : meta_.fds()) highest = std::max(highest, f.fd());
    // New fds are parked above every fd the image uses, so that creating
    // one never lands on a number still to be filled.
    const std::uint64_t park = static_cast<std::uint64_t>(highest) + 1;
    // fds 0-2 the process did not have are closed.
    for (int i = 0; i < 3; ++i) {
      const bool present = std::any_of(meta_.fds().begin(), meta_.fds().end(),
                                       [i](const image::Fd& f) { return f.fd() == i; });
      if (!present) ROAM_TRY(Call("close", SYS_close, i));
    }
    std::map<std::uint64_t, std::pair<long, long>> pipes;  // inode -> parked (read, write)
    for (const auto& f : meta_.fds()) {
      if (f.kind() != image::Fd::PIPE || pipes.count(f.pipe_inode()) != 0) continue;
      ROAM_ASSIGN_OR_RETURN(const std::uint64_t fds_at,
                            Stage(std::as_bytes(std::span<const int>(std::array<int, 2>{}))));
      ROAM_TRY(Call("pipe2", SYS_pipe2, fds_at, 0));
      std::array<int, 2> ends{};
      ROAM_TRY(memory_.Read(fds_at, std::as_writable_bytes(std::span(ends))));
      ROAM_ASSIGN_OR_RETURN(const long r, Call("fcntl F_DUPFD", SYS_fcntl, ends[0], F_DUPFD, park));
      ROAM_ASSIGN_OR_RETURN(const long w, Call("fcntl F_DUPFD", SYS_fcntl, ends[1], F_DUPFD, park));
      ROAM_TRY(Call("close", SYS_close, ends[0]));
      ROAM_TRY(Call("close", SYS_close, ends[1]));
      pipes[f.pipe_inode()] = {r, w};
    }
    for (const auto& f : meta_.fds()) {
      if (f.kind() != image::Fd::PIPE || f.pipe_data().empty()) continue;
      ROAM_TRY(FillPipe(pipes[f.pipe_inode()].second, f.pipe_data()));
    }
    for (const auto& f : meta_.fds()) {
      const std::uint64_t cloexec = (f.flags() & O_CLOEXEC) != 0 ? O_CLOEXEC : 0;
      switch (f.kind()) {
        case image::Fd::STDIO:
          break;  // the restorer's stdio, wired up by the stub
        case image::Fd::PIPE: {
          const auto [r, w] = pipes[f.pipe_inode()];
          const long end = f.pipe_write_end() ? w : r;
          ROAM_TRY(Call(fmt::format("dup3 pipe to fd {}", f.fd()), SYS_dup3, end, f.fd(), cloexec));
          ROAM_TRY(Call("fcntl F_SETFL", SYS_fcntl, f.fd(), F_SETFL, f.flags() & ~O_ACCMODE));
          break;
        }
        case image::Fd::REGULAR:
        case image::Fd::DIRECTORY:
        case image::Fd::DEV_NULL: {
          ROAM_ASSIGN_OR_RETURN(const std::uint64_t path, StageString(f.path()));
          const std::uint64_t flags =
              f.flags() & ~static_cast<std::uint32_t>(O_CREAT | O_EXCL | O_TRUNC);
          ROAM_ASSIGN_OR_RETURN(
              const long fd,
              Call(fmt::format("open {} for fd {}", f.path(), f.fd()), SYS_open, path, flags));
          if (fd != f.fd()) {
            ROAM_TRY(Call("dup3", SYS_dup3, fd, f.fd(), cloexec));
            ROAM_TRY(Call("close", SYS_close, fd));
          }
          if (f.kind() == image::Fd::REGULAR) {
            ROAM_TRY(
                Call(fmt::format("lseek fd {}", f.fd()), SYS_lseek, f.fd(), f.offset(), SEEK_SET));
          }
          break;
        }
        default:
          return MakeError(Errc::kCorrupt, "fd {} has an unknown kind {}", f.fd(),
                           static_cast<int>(f.kind()));
      }
    }
    for (const auto& [inode, ends] : pipes) {
      ROAM_TRY(Call("close", SYS_close, ends.first));
      ROAM_TRY(Call("close", SYS_close, ends.second));
    }
    return Ok();
  }

  Status RestoreProcessState(pid_t pid) {
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t cwd, StageString(meta_.cwd()));
    ROAM_TRY(Call(fmt::format("chdir {}", meta_.cwd()), SYS_chdir, cwd));
    ROAM_TRY(Call("umask", SYS_umask, meta_.umask()));
    ROAM_TRY(Call("personality", SYS_personality, meta_.personality()));
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t comm, StageString(meta_.comm()));
    ROAM_TRY(Call("prctl PR_SET_NAME", SYS_prctl, PR_SET_NAME, comm));
    for (const auto& a : meta_.sigactions()) {
      const arch::KernelSigaction act{a.handler(), a.flags(), a.restorer(), a.mask()};
      ROAM_ASSIGN_OR_RETURN(const std::uint64_t at, Stage(BytesOf(act)));
      ROAM_TRY(
          Call(fmt::format("rt_sigaction {}", a.signo()), SYS_rt_sigaction, a.signo(), at, 0, 8));
    }
    for (const auto& t : meta_.itimers()) {
      itimerval tv{};
      tv.it_interval.tv_sec = t.interval_us() / 1000000;
      tv.it_interval.tv_usec = t.interval_us() % 1000000;
      tv.it_value.tv_sec = t.value_us() / 1000000;
      tv.it_value.tv_usec = t.value_us() % 1000000;
      ROAM_ASSIGN_OR_RETURN(const std::uint64_t at, Stage(BytesOf(tv)));
      ROAM_TRY(Call("setitimer", SYS_setitimer, t.which(), at, 0));
    }
    for (const auto& l : meta_.rlimits()) {
      const rlimit lim{l.soft(), l.hard()};
      if (prlimit(pid, static_cast<__rlimit_resource>(l.resource()), &lim, nullptr) != 0) {
        stats_.notes.push_back(
            fmt::format("rlimit {} not restored: {}", l.resource(), strerror(errno)));
      }
    }
    return Ok();
  }

  Status RestoreThreadState(const image::Thread& t) {
    const auto& alt = t.altstack();
    if ((alt.flags() & SS_DISABLE) == 0 && alt.size() != 0) {
      stack_t ss{};
      ss.ss_sp = reinterpret_cast<void*>(alt.sp());
      ss.ss_size = alt.size();
      ss.ss_flags = 0;
      ROAM_ASSIGN_OR_RETURN(const std::uint64_t at, Stage(BytesOf(ss)));
      ROAM_TRY(Call("sigaltstack", SYS_sigaltstack, at, 0));
    }
    if (t.has_rseq()) {
      // The kernel writes the rseq area right after registration, so its
      // page must already be in place: pages are written before this.
      ROAM_TRY(
          Call("rseq", SYS_rseq, t.rseq().address(), t.rseq().length(), 0, t.rseq().signature()));
    }
    if (t.robust_list() != 0) {
      ROAM_TRY(Call("set_robust_list", SYS_set_robust_list, t.robust_list(), t.robust_list_len()));
    }
    ROAM_TRY(Call("set_tid_address", SYS_set_tid_address, t.clear_child_tid()));
    return Ok();
  }

  Status QueueSharedSignals(pid_t pid) {
    for (const auto& s : meta_.shared_pending_signals()) {
      if (s.size() != sizeof(siginfo_t))
        return MakeError(Errc::kCorrupt, "pending signal record of {} bytes", s.size());
      siginfo_t info{};
      std::memcpy(&info, s.data(), sizeof(info));
      ROAM_ASSIGN_OR_RETURN(const std::uint64_t at, Stage(BytesOf(info)));
      ROAM_TRY(Call("rt_sigqueueinfo", SYS_rt_sigqueueinfo, pid, info.si_signo, at));
    }
    return Ok();
  }

  // `tid`: the thread as the process knows it (its image tid when the ids
  // were kept, the new pid for a single-threaded process that got one).
  Status QueueThreadSignals(pid_t pid, pid_t tid, const image::Thread& t) {
    for (const auto& s : t.pending_signals()) {
      if (s.size() != sizeof(siginfo_t))
        return MakeError(Errc::kCorrupt, "pending signal record of {} bytes", s.size());
      siginfo_t info{};
      std::memcpy(&info, s.data(), sizeof(info));
      ROAM_ASSIGN_OR_RETURN(const std::uint64_t at, Stage(BytesOf(info)));
      ROAM_TRY(Call("rt_tgsigqueueinfo", SYS_rt_tgsigqueueinfo, pid, tid, info.si_signo, at));
    }
    return Ok();
  }

  // Creates thread `t` with its own tid (clone3 set_tid) from this thread,
  // stopped and traced; the caller rebuilds its per-thread state.
  Result<Tracee> CloneThread(const image::Thread& t) {
    clone_args args{};
    args.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    const pid_t tid = t.tid();
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t tid_at, Stage(BytesOf(tid), 512));
    args.set_tid = tid_at;
    args.set_tid_size = 1;
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t args_at, Stage(BytesOf(args)));
    ROAM_ASSIGN_OR_RETURN(const long created, Call(fmt::format("clone3 thread {}", tid), SYS_clone3,
                                                   args_at, sizeof(args)));
    if (created != tid) {
      return MakeError(Errc::kInternal, "clone3 made thread {} instead of {}", created, tid);
    }
    // In a pid namespace of its own the thread has another id out here.
    const pid_t ours = injector_.last_clone_child();
    if (ours <= 0) return MakeError(Errc::kInternal, "clone3 of thread {} was not traced", tid);
    return Tracee::AdoptStoppedChild(ours, /*kill_on_exit=*/true);
  }

  // A root restorer gives the process the image's ids; anyone else restores
  // it as themselves (the image's ids are never trusted to grant anything).
  Status SetCredentials() {
    if (geteuid() != 0) return Ok();
    const auto& c = meta_.creds();
    if (c.uids_size() != 4 || c.gids_size() != 4)
      return MakeError(Errc::kCorrupt, "credentials record is incomplete");
    if (c.uids(0) == 0 && c.uids(1) == 0) return Ok();  // root stays root
    std::vector<gid_t> groups(c.groups().begin(), c.groups().end());
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t at, Stage(std::as_bytes(std::span(groups))));
    ROAM_TRY(Call("setgroups", SYS_setgroups, groups.size(), at));
    ROAM_TRY(Call("setresgid", SYS_setresgid, c.gids(0), c.gids(1), c.gids(2)));
    ROAM_TRY(Call("setresuid", SYS_setresuid, c.uids(0), c.uids(1), c.uids(2)));
    return Ok();
  }

 private:
  Status FillPipe(long parked_write_end, const std::string& data) {
    const std::string path = fmt::format("/proc/{}/fd/{}", tracee_.tid(), parked_write_end);
    const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(errno, "open {}", path);
    (void)fcntl(fd, F_SETPIPE_SZ, static_cast<int>(data.size()));
    const ssize_t n = write(fd, data.data(), data.size());
    const int err = errno;
    close(fd);
    if (n != static_cast<ssize_t>(data.size()))
      return ErrnoError(n < 0 ? err : EIO, "refill pipe {}", path);
    return Ok();
  }

  const image::Image& meta_;
  Tracee& tracee_;
  const RemoteMemory& memory_;
  SyscallInjector& injector_;
  std::uint64_t scratch_;
  RestoreStats& stats_;
};

}  // namespace

Status CheckCompatibility(const image::Image& meta) {
  const auto& compat = meta.compat();
  utsname uts{};
  if (uname(&uts) != 0) return ErrnoError(errno, "uname");
  if (compat.machine() != uts.machine) {
    return MakeError(Errc::kIncompatible, "image is for {}, this node is {}", compat.machine(),
                     uts.machine);
  }
  if (compat.kernel_release() != uts.release) {
    return MakeError(Errc::kIncompatible, "image was taken on kernel {}, this node runs {}",
                     compat.kernel_release(), uts.release);
  }
  const std::vector<std::uint32_t> words(compat.cpuid_feature_words().begin(),
                                         compat.cpuid_feature_words().end());
  if (const auto missing = arch::MissingCpuFeatures(words, arch::CpuFeatureWords());
      !missing.empty()) {
    return MakeError(Errc::kIncompatible, "this CPU lacks features the process may use: {}",
                     fmt::join(missing, ", "));
  }
  if ((compat.xstate_features() & ~arch::XstateFeatures()) != 0) {
    return MakeError(Errc::kIncompatible, "xstate features {:#x} are not all enabled here ({:#x})",
                     compat.xstate_features(), arch::XstateFeatures());
  }
  ROAM_ASSIGN_OR_RETURN(const auto layout, OurVdsoLayout());
  const std::vector<std::string> theirs(compat.vdso_layout().begin(), compat.vdso_layout().end());
  if (layout != theirs) {
    return MakeError(Errc::kIncompatible, "vdso layout differs: image [{}], this node [{}]",
                     fmt::join(theirs, " "), fmt::join(layout, " "));
  }
  for (const auto& file : compat.mapped_files()) ROAM_TRY(CheckFileIdentity(file));
  return Ok();
}

Result<RestoreStats> Restore(const image::Image& meta, PageSource& pages,
                             const RestoreOptions& options, const RestoreHooks& hooks) {
  const std::int64_t started = NowNs();
  if (meta.threads_size() > 1 && !options.same_pid && !options.pid_namespace) {
    // glibc caches each thread's tid (pthread_kill, robust mutexes): new
    // tids would break the process in ways it cannot notice.
    return MakeError(Errc::kUnsupported,
                     "image has {} threads, whose ids can only be kept with --same-pid or --pid-ns",
                     meta.threads_size());
  }
  const image::Thread& thread = meta.threads(0);
  ROAM_ASSIGN_OR_RETURN(const bool privileged, MayCheckpointRestore());
  RestoreStats stats;

  // The namespace (and its init) outlives the stub's guard: a failure reaps
  // the stub first, then kills the init, whose exit waits for that reap.
  std::optional<PidNamespace> pid_ns;
  if (options.pid_namespace) {
    ROAM_ASSIGN_OR_RETURN(
        PidNamespace created,
        PidNamespace::Create(options.init_ends_with_restorer ? InitLifetime::kEndsWithCreatorThread
                                                             : InitLifetime::kOutlivesCreator));
    pid_ns.emplace(std::move(created));
  }
  const auto spawn = [&options, &meta] { return SpawnStub(options, meta.pid()); };
  ROAM_ASSIGN_OR_RETURN(const pid_t stub, pid_ns ? pid_ns->SpawnInside(spawn) : spawn());
  StubGuard guard(stub);
  // The ~160 injected calls go several times faster with the stub on our
  // CPU (inject/colocation.h); it gets its own mask back before it runs.
  Colocation colocation;
  colocation.Add(stub);
  // Calls injected into the process name it (and its threads) by the ids of
  // its own pid namespace; roam's own calls use `stub`.
  const pid_t pid_inside = options.pid_namespace ? meta.pid() : stub;
  stats.pid = stub;
  stats.ns_pid = pid_inside;
  ROAM_ASSIGN_OR_RETURN(Tracee tracee,
                        Tracee::AdoptStoppedChild(stub, /*kill_on_exit=*/true,
                                                  /*trace_clone=*/meta.threads_size() > 1));
  // Nothing may interrupt the injected calls; the image's mask comes last.
  ROAM_TRY(tracee.SetSigmask(~std::uint64_t{0}));
  ROAM_ASSIGN_OR_RETURN(const arch::Regs stub_regs, arch::GetRegs(stub));
  ROAM_ASSIGN_OR_RETURN(const auto stub_xstate, arch::GetXstate(stub));
  if (stub_xstate.size() != thread.x86().xstate().size()) {
    return MakeError(Errc::kIncompatible, "xstate is {} bytes here, {} in the image",
                     stub_xstate.size(), thread.x86().xstate().size());
  }
  ROAM_ASSIGN_OR_RETURN(RemoteMemory memory, RemoteMemory::Open(stub));
  ROAM_ASSIGN_OR_RETURN(const auto stub_vmas, procfs::ReadMaps(stub));

  // The layout both the stub and the image occupy.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> used;
  std::vector<procfs::Vma> stub_vdso;
  std::uint64_t syscall_insn = 0;
  for (const auto& v : stub_vmas) {
    used.emplace_back(v.start, v.end);
    if (IsVdsoName(v.path)) stub_vdso.push_back(v);
  }
  for (const auto& v : meta.vmas()) used.emplace_back(v.start(), v.end());
  if (stub_vdso.empty()) return MakeError(Errc::kUnsupported, "restore stub has no vdso");
  for (const auto& v : stub_vdso) {
    if (procfs::SpecialOf(v.path) == procfs::Special::kVdso) {
      ROAM_ASSIGN_OR_RETURN(syscall_insn, FindSyscallInstruction(memory, v.start, v.end));
    }
  }
  SyscallInjector injector(tracee, stub_regs, syscall_insn);

  // 1. A trampoline page (syscall; int3) plus scratch, in a gap of both layouts.
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t trampoline, FindGap(used, kTrampolineSize));
  used.emplace_back(trampoline, trampoline + kTrampolineSize);
  ROAM_TRY(injector.Call(
      "mmap trampoline", SYS_mmap, trampoline, kTrampolineSize, PROT_READ | PROT_WRITE | PROT_EXEC,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, static_cast<std::uint64_t>(-1), 0));
  ROAM_TRY(memory.Write(trampoline, std::as_bytes(std::span(arch::kSyscallTrampoline))));
  injector.set_syscall_instruction(trampoline);
  Rebuilder rebuild(meta, tracee, memory, injector, trampoline, stats);

  // 2. The stub's own rseq registration must go before its memory does, or
  // the kernel faults writing to it.
  __ptrace_rseq_configuration rseq{};
  if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION, stub, sizeof(rseq), &rseq) < 0) {
    return ErrnoError(errno, "ptrace GET_RSEQ_CONFIGURATION of stub {}", stub);
  }
  if (rseq.rseq_abi_pointer != 0) {
    ROAM_TRY(rebuild.Call("rseq unregister", SYS_rseq, rseq.rseq_abi_pointer, rseq.rseq_abi_size,
                          kRseqFlagUnregister, rseq.signature));
  }

  // 3. Park the stub's vdso block where neither layout is.
  const std::uint64_t block_start = stub_vdso.front().start;
  const std::uint64_t block_size = stub_vdso.back().end - block_start;
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t parked, FindGap(used, block_size));
  for (const auto& v : stub_vdso) {
    const std::uint64_t size = v.end - v.start;
    ROAM_TRY(rebuild.Call(fmt::format("park {}", v.path), SYS_mremap, v.start, size, size,
                          MREMAP_MAYMOVE | MREMAP_FIXED, parked + (v.start - block_start)));
  }

  // 4. Empty the stub: everything of its own but the trampoline and vdso.
  // One munmap spans every mapping up to the next thing kept (the holes
  // between mappings go too): the stub is a copy of the restorer's ~130
  // mappings, and a call for each cost ~1.5 ms in all.
  const std::array<std::pair<std::uint64_t, std::uint64_t>, 2> kept = {
      {{trampoline, trampoline + kTrampolineSize}, {parked, parked + block_size}}};
  std::vector<std::pair<std::uint64_t, std::uint64_t>> unmap;
  for (const auto& v : stub_vmas) {
    if (procfs::SpecialOf(v.path) != procfs::Special::kNone) continue;
    const auto kept_before = [&](const auto& k) {
      return k.first < v.start && k.second > unmap.back().second;
    };
    if (!unmap.empty() && std::none_of(kept.begin(), kept.end(), kept_before)) {
      unmap.back().second = v.end;
    } else {
      unmap.emplace_back(v.start, v.end);
    }
  }
  for (const auto& [start, end] : unmap) {
    ROAM_TRY(rebuild.Call(fmt::format("munmap stub [{:#x}, {:#x})", start, end), SYS_munmap, start,
                          end - start));
  }

  // 5. The image's mappings, then its pages.
  ROAM_TRY(rebuild.MapVmas());
  if (hooks.before_pages) {
    colocation.Release(stub);  // the hook may bind it to CPUs of its own
    ROAM_TRY(hooks.before_pages(stub));
    colocation.Add(stub);
  }
  std::unique_ptr<LazyPageServer> server;
  if (options.lazy) {
    auto uffd = rebuild.TakeUserfaultfd(stub);
    if (!uffd) {
      stats.notes.push_back("post-copy unavailable, restored by stop-copy: " +
                            uffd.error().ToString());
    } else {
      const auto ranges = rebuild.LazyRanges();
      if (auto eager = rebuild.WriteEagerPages(pages, ranges); !eager) {
        close(*uffd);  // the server never took it
        return tl::unexpected(eager.error());
      }
      LazyPageServer::Options lazy_options;
      lazy_options.pid = stub;
      lazy_options.hold_stream = true;  // released once the process runs
      // From here the server alone reads `pages`.
      // Its thread must not inherit our pin.
      colocation.Release(0);
      auto serving = LazyPageServer::Start(*uffd, ranges, pages, lazy_options);
      colocation.Add(0);
      if (!serving && serving.error().code() == Errc::kPermissionDenied) {
        // No fork events for us: a fork before the last page would hand the
        // child zeros. Nothing was registered; every page is written below.
        stats.notes.push_back("post-copy unavailable, restored by stop-copy: " +
                              serving.error().ToString());
      } else {
        ROAM_ASSIGN_OR_RETURN(server, std::move(serving));
        for (const auto& [start, end] : ranges) stats.lazy_pages += (end - start) / kPageSize;
      }
    }
  }
  if (!server) {
    const unsigned writers = std::min(4U, std::max(1U, std::thread::hardware_concurrency()));
    if (pages.RunsStayValid() && writers > 1) {
      // The writers must not inherit our pin (nor the stub's CPU).
      colocation.Release(0);
      Status written = rebuild.WritePagesInParallel(pages, writers);
      colocation.Add(0);
      ROAM_TRY(std::move(written));
    } else {
      rebuild.Populate(pages);
      ROAM_TRY(rebuild.WritePages(pages));
    }
  }
  ROAM_TRY(rebuild.PlaceVdso(parked, block_start, stub_vdso));

  // 6. mm fields, files, process and thread state, credentials.
  ROAM_TRY(rebuild.SetMm(privileged));
  ROAM_TRY(rebuild.RestoreFds());
  ROAM_TRY(rebuild.RestoreProcessState(stub));
  ROAM_TRY(rebuild.RestoreThreadState(thread));
  ROAM_TRY(rebuild.QueueSharedSignals(pid_inside));
  const bool ids_kept = options.same_pid || options.pid_namespace;
  ROAM_TRY(rebuild.QueueThreadSignals(pid_inside, ids_kept ? thread.tid() : pid_inside, thread));

  // 7. The other threads, cloned from the leader with their own tids; each
  // gets its per-thread state through its own injector.
  struct Extra {
    Tracee tracee;
    const image::Thread* image;
  };
  std::vector<Extra> extras;
  for (int i = 1; i < meta.threads_size(); ++i) {
    ROAM_ASSIGN_OR_RETURN(Tracee t, rebuild.CloneThread(meta.threads(i)));
    extras.push_back(Extra{std::move(t), &meta.threads(i)});
  }
  for (auto& e : extras) {
    ROAM_TRY(e.tracee.SetSigmask(~std::uint64_t{0}));
    ROAM_ASSIGN_OR_RETURN(const arch::Regs regs, arch::GetRegs(e.tracee.tid()));
    SyscallInjector thread_injector(e.tracee, regs, trampoline);
    Rebuilder thread_rebuild(meta, e.tracee, memory, thread_injector, trampoline, stats);
    ROAM_TRY(thread_rebuild.RestoreThreadState(*e.image));
    ROAM_TRY(thread_rebuild.QueueThreadSignals(pid_inside, e.image->tid(), *e.image));
    // Credentials are per thread in the kernel (glibc broadcasts setuid).
    ROAM_TRY(thread_rebuild.SetCredentials());
    stats.injected_syscalls += thread_injector.calls();
  }
  ROAM_TRY(rebuild.SetCredentials());
  // Every thread gets the leader's own mask (the threads were cloned from
  // it while it was pinned).
  colocation.Release(stub);
  if (cpu_set_t mask; sched_getaffinity(stub, sizeof(mask), &mask) == 0) {
    for (auto& e : extras) (void)sched_setaffinity(e.tracee.tid(), sizeof(mask), &mask);
  }
  if (hooks.before_resume) ROAM_TRY(hooks.before_resume(stub));

  // 8. Drop the trampoline (the call returns to a stop, never to the page),
  // load the registers, and let every thread run.
  ROAM_TRY(rebuild.Call("munmap trampoline", SYS_munmap, trampoline, kTrampolineSize));
  stats.injected_syscalls += injector.calls();
  const auto load = [](Tracee& t, const image::Thread& image) -> Status {
    ROAM_TRY(arch::SetRegs(t.tid(), arch::RegsFromProto(image.x86())));
    const std::string& xs = image.x86().xstate();
    ROAM_TRY(arch::SetXstate(t.tid(), std::vector<std::uint8_t>(xs.begin(), xs.end())));
    return t.SetSigmask(image.blocked_signals());
  };
  ROAM_TRY(load(tracee, thread));
  for (auto& e : extras) ROAM_TRY(load(e.tracee, *e.image));
  if (meta.pid() != pid_inside) {
    stats.notes.push_back(
        fmt::format("pid changed from {} to {}: the thread id glibc cached is stale (raise() and "
                    "pthread_kill() may misfire); restore with --same-pid or --pid-ns to keep it",
                    meta.pid(), pid_inside));
  }
  for (auto& e : extras) ROAM_TRY(e.tracee.Detach());
  ROAM_TRY(tracee.Detach());
  if (pid_ns) {
    ROAM_TRY(pid_ns->Serve(pid_inside));
    stats.init_pid = pid_ns->Release();
  }
  guard.Release();
  stats.restore_ns = static_cast<std::uint64_t>(NowNs() - started);
  if (server) server->ReleaseStream();
  stats.post_copy = std::move(server);
  return stats;
}

Result<RestoreStats> RestoreFromDirectory(const std::filesystem::path& dir,
                                          const RestoreOptions& options,
                                          const RestoreHooks& hooks) {
  ROAM_ASSIGN_OR_RETURN(const image::Image meta, ReadImageMeta(dir));
  ROAM_TRY(ValidateImageMeta(meta));
  ROAM_TRY(CheckCompatibility(meta));
  // Opening the page stream checks its structure (every record header, the
  // trailer and its header chain), so a truncated or damaged layout is
  // refused before anything starts. Payload checksums are checked as pages
  // are read: stop-copy reads every page before the process runs; post-copy
  // reads most of them after it resumed, and a damaged one then ends the
  // process (the page server kills it and poisons what is missing) instead
  // of hashing the whole page file first (see page_stream.h).
  ROAM_ASSIGN_OR_RETURN(std::unique_ptr<PageSource> opened, OpenPageFileReader(PagesPath(dir)));
  std::shared_ptr<PageSource> pages = std::move(opened);
  ROAM_ASSIGN_OR_RETURN(RestoreStats stats, Restore(meta, *pages, options, hooks));
  if (stats.post_copy) stats.post_copy_source = std::move(pages);
  return stats;
}

}  // namespace roam::ckpt
