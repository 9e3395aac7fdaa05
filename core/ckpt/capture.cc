#include "roam/ckpt/capture.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "core/ckpt/arch/arch.h"
#include "core/ckpt/dirty_tracker.h"
#include "core/ckpt/file_identity.h"
#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/image_dir.h"
#include "core/ckpt/image/page_store.h"
#include "core/ckpt/image/page_stream.h"
#include "core/ckpt/inject/colocation.h"
#include "core/ckpt/inject/syscall_injector.h"
#include "core/ckpt/procfs/procfs.h"
#include "roam/base/range_map.h"
#include "roam/ckpt/refusal.h"

namespace roam::ckpt {

// What sink rounds leave: pages the sink holds as they were read (not
// written since), and pages found all zero.
struct PreCopy::Kept {
  enum class Page : std::uint8_t { kInSink, kZero };
  RangeMap<Page> pages;
};

namespace {

constexpr std::size_t kReadChunk = 4 << 20;  // process_vm_readv granule

std::int64_t NowNs(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Splits `pages` (whole pages read from `address`) into runs of all-zero
// and of other pages, in order: `zero(vaddr, npages)` for the former,
// `data(vaddr, run)` for the latter; stops at the first error of `data`.
template <typename Zero, typename Data>
Status SplitZeroRuns(std::uint64_t address, std::span<const std::byte> pages, Zero zero,
                     Data data) {
  const std::uint64_t npages = pages.size() / kPageSize;
  std::uint64_t i = 0;
  while (i < npages) {
    const bool is_zero = IsZeroPage(pages.data() + i * kPageSize);
    std::uint64_t j = i + 1;
    while (j < npages && IsZeroPage(pages.data() + j * kPageSize) == is_zero) ++j;
    if (is_zero) {
      zero(address + i * kPageSize, j - i);
    } else {
      ROAM_TRY(data(address + i * kPageSize, pages.subspan(i * kPageSize, (j - i) * kPageSize)));
    }
    i = j;
  }
  return Ok();
}

image::Vma::Kind KindOf(const procfs::Vma& v) {
  switch (procfs::SpecialOf(v.path)) {
    case procfs::Special::kVdso:
      return image::Vma::VDSO;
    case procfs::Special::kVvar:
      return image::Vma::VVAR;
    case procfs::Special::kVvarVclock:
      return image::Vma::VVAR_VCLOCK;
    case procfs::Special::kVsyscall:
      return image::Vma::VSYSCALL;
    case procfs::Special::kNone:
      break;
  }
  if (!v.path.empty() && v.path[0] == '/' && v.path != "/dev/zero") {
    // FindRefusals let through only read-only shared file mappings (glibc
    // maps gconv-modules.cache so): the file supplies them again.
    return v.shared ? image::Vma::FILE_SHARED : image::Vma::FILE_PRIVATE;
  }
  return image::Vma::ANONYMOUS;
}

// The id a task knows itself by: its pid in its own pid namespace (the last
// NSpid field). A process restored into a fresh namespace gets these back,
// so one restored so can be captured and restored again.
pid_t IdInOwnNamespace(const procfs::Status& status) {
  return status.ns_pid.empty() ? status.pid : status.ns_pid.back();
}

// One stopped thread and what to put back when it is released.
struct FrozenThread {
  Tracee tracee;
  arch::Regs regs;  // interrupted syscalls already rewritten to restart
  std::uint64_t sigmask;
};

// While it lives, every thread of the process is stopped with all signals
// blocked; on destruction (every error path included) each thread gets its
// registers and mask back and is detached, or the process is killed if
// KillOnRelease() was asked for. Until EndColocation(), the tracer and the
// stopped threads share one CPU (see inject/colocation.h: injected calls
// are several times faster so on a VM).
class FrozenProcess {
 public:
  explicit FrozenProcess(pid_t pid) : pid_(pid) { colocation_.emplace(); }
  FrozenProcess(const FrozenProcess&) = delete;
  FrozenProcess& operator=(const FrozenProcess&) = delete;
  ~FrozenProcess() {
    if (kill_) {
      kill(pid_, SIGKILL);
      for (auto& t : threads_) t.tracee.Kill();
      return;
    }
    for (auto& t : threads_) {
      (void)arch::SetRegs(t.tracee.tid(), t.regs);
      (void)t.tracee.SetSigmask(t.sigmask);
      (void)t.tracee.Detach();
    }
  }

  // Seizes and stops every thread, again until no new thread appeared while
  // the others were being stopped. The leader comes first.
  Status FreezeAll(std::vector<std::string>& notes) {
    for (bool grew = true; grew;) {
      grew = false;
      ROAM_ASSIGN_OR_RETURN(const auto tids, procfs::ListThreads(pid_));
      for (const pid_t tid : tids) {
        const bool known =
            std::any_of(threads_.begin(), threads_.end(),
                        [tid](const FrozenThread& t) { return t.tracee.tid() == tid; });
        if (known) continue;
        ROAM_ASSIGN_OR_RETURN(Tracee tracee, Tracee::Seize(tid));
        // Pinned first: the stop itself is then a wakeup on our CPU.
        if (colocation_) colocation_->Add(tid);
        ROAM_TRY(tracee.Interrupt());
        ROAM_ASSIGN_OR_RETURN(arch::Regs regs, arch::GetRegs(tid));
        ROAM_ASSIGN_OR_RETURN(const std::uint64_t sigmask, tracee.GetSigmask());
        // Resuming with these registers re-issues an interrupted syscall, in
        // this process or in a restored one.
        if (std::string note = arch::FixupInterruptedSyscall(regs); !note.empty()) {
          notes.push_back(fmt::format("thread {}: {}", tid, note));
        }
        threads_.push_back(FrozenThread{std::move(tracee), regs, sigmask});
        // Signals arriving now wait in the queue instead of interrupting the
        // injected calls; the mask is restored on release.
        ROAM_TRY(threads_.back().tracee.SetSigmask(~std::uint64_t{0}));
        grew = true;
      }
    }
    return Ok();
  }

  std::vector<FrozenThread>& threads() { return threads_; }
  void KillOnRelease() { kill_ = true; }
  // Every thread, the tracer included, gets its CPU affinity back.
  void EndColocation() { colocation_.reset(); }
  // No more injected calls: each thread gets its own signal mask back while
  // still stopped, so that if roam dies and the kernel lets the process go,
  // it does not run on with every signal blocked.
  void RestoreSigmasks() {
    for (auto& t : threads_) (void)t.tracee.SetSigmask(t.sigmask);
  }

 private:
  pid_t pid_;
  std::optional<Colocation> colocation_;  // destroyed after the threads are released
  std::vector<FrozenThread> threads_;
  bool kill_ = false;
};

// What only the process itself can tell, asked through injected syscalls.
Status CaptureProcessByInjection(SyscallInjector& injector, const RemoteScratch& scratch,
                                 image::Image* meta) {
  const std::uint64_t out = scratch.address();
  for (int sig = 1; sig <= 64; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ROAM_TRY(injector.Call("rt_sigaction", SYS_rt_sigaction, sig, 0, out, 8));
    arch::KernelSigaction act{};
    ROAM_TRY(scratch.Read(0, WritableBytesOf(act)));
    if (act.handler == 0 && act.flags == 0 && act.mask == 0) continue;  // SIG_DFL, untouched
    auto* a = meta->add_sigactions();
    a->set_signo(sig);
    a->set_handler(act.handler);
    a->set_flags(act.flags);
    a->set_restorer(act.restorer);
    a->set_mask(act.mask);
  }
  ROAM_ASSIGN_OR_RETURN(const long brk, injector.Call("brk", SYS_brk, 0));
  meta->mutable_mm()->set_brk(static_cast<std::uint64_t>(brk));
  for (int which : {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF}) {
    ROAM_TRY(injector.Call("getitimer", SYS_getitimer, which, out));
    itimerval tv{};
    ROAM_TRY(scratch.Read(0, WritableBytesOf(tv)));
    if (tv.it_value.tv_sec == 0 && tv.it_value.tv_usec == 0) continue;
    auto* t = meta->add_itimers();
    t->set_which(which);
    t->set_interval_us(tv.it_interval.tv_sec * 1000000 + tv.it_interval.tv_usec);
    t->set_value_us(tv.it_value.tv_sec * 1000000 + tv.it_value.tv_usec);
  }
  return Ok();
}

// Per-thread facts only the thread can tell.
Status CaptureThreadByInjection(SyscallInjector& injector, const RemoteScratch& scratch,
                                image::Thread* thread) {
  const std::uint64_t out = scratch.address();
  ROAM_TRY(injector.Call("prctl PR_GET_TID_ADDRESS", SYS_prctl, PR_GET_TID_ADDRESS, out));
  std::uint64_t tid_address = 0;
  ROAM_TRY(scratch.Read(0, WritableBytesOf(tid_address)));
  thread->set_clear_child_tid(tid_address);

  ROAM_TRY(injector.Call("sigaltstack", SYS_sigaltstack, 0, out));
  stack_t ss{};
  ROAM_TRY(scratch.Read(0, WritableBytesOf(ss)));
  auto* alt = thread->mutable_altstack();
  alt->set_sp(reinterpret_cast<std::uint64_t>(ss.ss_sp));
  alt->set_size(ss.ss_size);
  alt->set_flags(ss.ss_flags);
  return Ok();
}

Status CaptureThreadState(pid_t tid, image::Thread* thread) {
  __ptrace_rseq_configuration rseq{};
  if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, sizeof(rseq), &rseq) < 0) {
    return ErrnoError(errno, "ptrace GET_RSEQ_CONFIGURATION thread {}", tid);
  }
  if (rseq.rseq_abi_pointer != 0) {
    auto* r = thread->mutable_rseq();
    r->set_address(rseq.rseq_abi_pointer);
    r->set_length(rseq.rseq_abi_size);
    r->set_signature(rseq.signature);
  }
  std::uint64_t head = 0;
  std::size_t len = 0;
  if (syscall(SYS_get_robust_list, tid, &head, &len) != 0) {
    return ErrnoError(errno, "get_robust_list of thread {}", tid);
  }
  thread->set_robust_list(head);
  thread->set_robust_list_len(len);
  return Ok();
}

// Queued signals, thread-private (shared=false) or process-wide.
Result<std::vector<std::string>> PendingSignals(pid_t tid, bool shared) {
  std::vector<std::string> out;
  for (;;) {
    __ptrace_peeksiginfo_args args{};
    args.off = out.size();
    args.flags = shared ? PTRACE_PEEKSIGINFO_SHARED : 0;
    args.nr = 1;
    siginfo_t info{};
    const long n = ptrace(PTRACE_PEEKSIGINFO, tid, &args, &info);
    if (n < 0) return ErrnoError(errno, "ptrace PEEKSIGINFO thread {}", tid);
    if (n == 0) break;
    out.emplace_back(reinterpret_cast<const char*>(&info), sizeof(info));
  }
  return out;
}

class PageCapturer {
 public:
  PageCapturer(pid_t pid, const RemoteMemory& memory, PageSink& sink, CaptureStats& stats)
      : pid_(pid), memory_(memory), sink_(sink), stats_(stats), buffer_(kReadChunk) {}

  // Takes the pages a pre-copy holds instead of reading them again (they
  // were not written since its last round): copied from its store, or
  // referred to where its rounds put them in the sink.
  void UsePreCopied(const PageStore* store, const PreCopy::Kept* kept) {
    known_ = store;
    kept_ = kept;
  }
  // The process runs: a range that cannot be read (unmapped meanwhile) is
  // skipped instead of failing; the final capture reads what is missing.
  void SetBestEffort() { best_effort_ = true; }
  // Records the runs of wanted pages instead of reading them (the process
  // stays frozen and serves them itself).
  void LocateInto(PageRuns* runs) { locate_ = runs; }
  // Also told which pages were all zero (a pre-copy store records them).
  void OnZeroPages(std::function<void(std::uint64_t, std::uint64_t)> fn) {
    on_zero_ = std::move(fn);
  }

  Status CaptureVma(const procfs::Vma& vma, procfs::PagemapReader& pagemap) {
    return CaptureRange(vma.start, vma.end, vma.read, pagemap);
  }

  // The wanted pages of [start, end), which lies inside one VMA: anonymous
  // memory and the COW'd (private, written) pages of file mappings, present
  // or swapped out; clean file pages are mapped from the file again at
  // restore, and the shared zero page (read, never written) reads as zero
  // anyway.
  Status CaptureRange(std::uint64_t start, std::uint64_t end, bool readable,
                      procfs::PagemapReader& pagemap) {
    ROAM_ASSIGN_OR_RETURN(const auto ranges, pagemap.Scan(start, end));
    for (const auto& r : ranges) {
      const std::uint64_t npages = (r.end - r.start) / kPageSize;
      if (r.zero_pfn) {
        stats_.zero_pages_skipped += npages;
        continue;
      }
      if (r.file) {  // a swapped page is always an anonymous or COW copy
        stats_.file_pages_skipped += npages;
        continue;
      }
      for (std::uint64_t at = r.start; at < r.end; at += kReadChunk) {
        const std::uint64_t bytes = std::min<std::uint64_t>(r.end - at, kReadChunk);
        ROAM_TRY(CaptureRun(at, bytes / kPageSize, readable));
      }
    }
    return Ok();
  }

 private:
  // Reads [address, +npages) into buffer_ at `out`; false if best effort
  // gave up on it.
  Result<bool> Read(std::uint64_t address, std::uint64_t npages, bool readable, std::byte* out) {
    const std::size_t bytes = npages * kPageSize;
    if (readable) {
      iovec local{out, bytes};
      iovec remote{reinterpret_cast<void*>(address), bytes};
      const ssize_t n = process_vm_readv(pid_, &local, 1, &remote, 1, 0);
      if (n == static_cast<ssize_t>(bytes)) {
        stats_.pages_read += npages;
        return true;
      }
    }
    // Not readable by the process itself (PROT_NONE after mprotect, say):
    // /proc/PID/mem reads it anyway.
    auto read = memory_.Read(address, std::span(out, bytes));
    if (!read && best_effort_) return false;
    ROAM_TRY(read);
    stats_.pages_read += npages;
    return true;
  }

  Status CaptureRun(std::uint64_t address, std::uint64_t npages, bool readable) {
    if (locate_ != nullptr) {
      AppendRange(*locate_, address, address + npages * kPageSize);
      stats_.pages_written += npages;
      return Ok();
    }
    if (kept_ != nullptr) {
      return kept_->pages.Visit(
          address, address + npages * kPageSize,
          [&](std::uint64_t lo, std::uint64_t hi, const PreCopy::Kept::Page* page) -> Status {
            const std::uint64_t n = (hi - lo) / kPageSize;
            if (page == nullptr) return ReadRun(lo, n, readable);
            if (*page == PreCopy::Kept::Page::kZero) {
              stats_.zero_pages_skipped += n;
              return Ok();
            }
            ROAM_TRY(sink_.AddKept(lo, hi - lo));
            stats_.pre_copied_pages += n;
            stats_.pages_written += n;
            return Ok();
          });
    }
    if (known_ == nullptr) return ReadRun(address, npages, readable);
    // Pre-copied pages from the store, the rest read in runs.
    std::uint64_t i = 0;
    while (i < npages) {
      const std::uint64_t page = address + i * kPageSize;
      const std::byte* copy = known_->Find(page);
      if (copy != nullptr) {
        std::memcpy(buffer_.data() + i * kPageSize, copy, kPageSize);
        ++stats_.pre_copied_pages;
        ++i;
        continue;
      }
      std::uint64_t j = i;
      while (j < npages && known_->Find(address + j * kPageSize) == nullptr) {
        ++j;
      }
      ROAM_TRY(Read(page, j - i, readable, buffer_.data() + i * kPageSize));
      i = j;
    }
    return AddNonZero(address, std::span<const std::byte>(buffer_.data(), npages * kPageSize));
  }

  // Reads [address, +npages) and adds its non-zero pages: straight into the
  // sink where it offers a place (staging memory), one copy fewer than
  // through buffer_.
  Status ReadRun(std::uint64_t address, std::uint64_t npages, bool readable) {
    std::span<std::byte> into = buffer_;
    const std::span<std::byte> tail = sink_.WritableTail(npages * kPageSize);
    if (!tail.empty()) into = tail;
    ROAM_ASSIGN_OR_RETURN(const bool read, Read(address, npages, readable, into.data()));
    if (!read) return Ok();
    return AddNonZero(address, std::span<const std::byte>(into.data(), npages * kPageSize));
  }

  // Skips all-zero pages: restore maps fresh anonymous memory, which is zero.
  Status AddNonZero(std::uint64_t address, std::span<const std::byte> pages) {
    return SplitZeroRuns(
        address, pages,
        [this](std::uint64_t vaddr, std::uint64_t n) {
          stats_.zero_pages_skipped += n;
          if (on_zero_) on_zero_(vaddr, n);
        },
        [this](std::uint64_t vaddr, std::span<const std::byte> run) -> Status {
          ROAM_TRY(sink_.Add(vaddr, run));
          stats_.pages_written += run.size() / kPageSize;
          return Ok();
        });
  }

  pid_t pid_;
  const RemoteMemory& memory_;
  PageSink& sink_;
  CaptureStats& stats_;
  std::vector<std::byte> buffer_;
  const PageStore* known_ = nullptr;
  const PreCopy::Kept* kept_ = nullptr;
  PageRuns* locate_ = nullptr;
  bool best_effort_ = false;
  std::function<void(std::uint64_t, std::uint64_t)> on_zero_;
};

Result<std::string> PeekPipe(pid_t pid, int fd) {
  const std::string path = fmt::format("/proc/{}/fd/{}", pid, fd);
  const int in = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (in < 0) return ErrnoError(errno, "open {}", path);
  int avail = 0;
  if (ioctl(in, FIONREAD, &avail) != 0 || avail <= 0) {
    close(in);
    return std::string();
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int err = errno;
    close(in);
    return ErrnoError(err, "pipe2");
  }
  (void)fcntl(p[1], F_SETPIPE_SZ, avail);
  std::string data;
  const ssize_t n = tee(in, p[1], static_cast<std::size_t>(avail), SPLICE_F_NONBLOCK);
  if (n > 0) {
    data.resize(static_cast<std::size_t>(n));
    if (read(p[0], data.data(), data.size()) != n) data.clear();
  }
  const int err = errno;
  close(in);
  close(p[0]);
  close(p[1]);
  if (n < 0) return ErrnoError(err, "tee from {}", path);
  return data;
}

Status CaptureFds(pid_t pid, image::Image* meta) {
  ROAM_ASSIGN_OR_RETURN(const auto fds, procfs::ListFds(pid));
  std::map<std::uint64_t, bool> pipe_data_taken;
  for (const auto& fd : fds) {
    auto* f = meta->add_fds();
    f->set_fd(fd.fd);
    f->set_flags(fd.info.flags);
    f->set_offset(fd.info.pos);
    f->set_file_index(-1);
    f->set_path(fd.target);
    switch (fd.kind) {
      case procfs::FdKind::kRegular:
        f->set_kind(image::Fd::REGULAR);
        break;
      case procfs::FdKind::kDirectory:
        f->set_kind(image::Fd::DIRECTORY);
        break;
      case procfs::FdKind::kCharDevice:
        f->set_kind(IsPortableDevice(fd.target) ? image::Fd::DEV_NULL : image::Fd::STDIO);
        break;
      case procfs::FdKind::kTty:
        f->set_kind(image::Fd::STDIO);
        break;
      case procfs::FdKind::kPipe:
      case procfs::FdKind::kFifo: {
        const bool writer = (fd.info.flags & O_ACCMODE) == O_WRONLY;
        // On fds 0-2 a pipe or FIFO is the process's link to whoever
        // started it: the restorer supplies the new one. Elsewhere
        // FindRefusals let through only pipes with both ends in here.
        f->set_kind(fd.fd <= 2 ? image::Fd::STDIO : image::Fd::PIPE);
        f->set_pipe_inode(fd.inode);
        f->set_pipe_write_end(writer);
        if (f->kind() == image::Fd::PIPE && !writer && !pipe_data_taken[fd.inode]) {
          pipe_data_taken[fd.inode] = true;
          ROAM_ASSIGN_OR_RETURN(const std::string data, PeekPipe(pid, fd.fd));
          f->set_pipe_data(data);
        }
        break;
      }
      default:
        // FindRefusals already refused every other kind.
        return MakeError(Errc::kNotMigratable, "pid {}: fd {} ({}) cannot be captured", pid, fd.fd,
                         procfs::FdKindName(fd.kind));
    }
  }
  return Ok();
}

Status CaptureProcessFacts(pid_t pid, image::Image* meta) {
  ROAM_ASSIGN_OR_RETURN(const procfs::Status st, procfs::ReadStatus(pid));
  ROAM_ASSIGN_OR_RETURN(const procfs::Stat stat, procfs::ReadStat(pid));
  meta->set_pid(IdInOwnNamespace(st));
  meta->set_umask(st.umask);
  ROAM_ASSIGN_OR_RETURN(std::string comm, procfs::ReadComm(pid));
  meta->set_comm(std::move(comm));
  ROAM_ASSIGN_OR_RETURN(std::string exe, procfs::ReadLink(pid, "exe"));
  meta->set_exe(std::move(exe));
  ROAM_ASSIGN_OR_RETURN(std::string cwd, procfs::ReadLink(pid, "cwd"));
  meta->set_cwd(std::move(cwd));
  ROAM_ASSIGN_OR_RETURN(const std::uint32_t personality, procfs::ReadPersonality(pid));
  meta->set_personality(personality);

  auto* creds = meta->mutable_creds();
  for (auto id : st.uid) creds->add_uids(id);
  for (auto id : st.gid) creds->add_gids(id);
  for (auto g : st.groups) creds->add_groups(g);
  creds->set_cap_inheritable(st.cap_inh);
  creds->set_cap_permitted(st.cap_prm);
  creds->set_cap_effective(st.cap_eff);
  creds->set_cap_bounding(st.cap_bnd);
  creds->set_cap_ambient(st.cap_amb);
  creds->set_no_new_privs(st.no_new_privs);

  auto* mm = meta->mutable_mm();
  mm->set_start_code(stat.start_code);
  mm->set_end_code(stat.end_code);
  mm->set_start_data(stat.start_data);
  mm->set_end_data(stat.end_data);
  mm->set_start_brk(stat.start_brk);
  mm->set_start_stack(stat.start_stack);
  mm->set_arg_start(stat.arg_start);
  mm->set_arg_end(stat.arg_end);
  mm->set_env_start(stat.env_start);
  mm->set_env_end(stat.env_end);
  ROAM_ASSIGN_OR_RETURN(const auto auxv, procfs::ReadAuxv(pid));
  for (auto v : auxv) mm->add_auxv(v);

  for (int r = 0; r < RLIM_NLIMITS; ++r) {
    rlimit lim{};
    if (prlimit(pid, static_cast<__rlimit_resource>(r), nullptr, &lim) != 0) {
      return ErrnoError(errno, "prlimit {} of pid {}", r, pid);
    }
    auto* l = meta->add_rlimits();
    l->set_resource(r);
    l->set_soft(lim.rlim_cur);
    l->set_hard(lim.rlim_max);
  }
  return Ok();
}

Status CaptureCompat(image::Image* meta, std::size_t xstate_size) {
  auto* compat = meta->mutable_compat();
  utsname uts{};
  if (uname(&uts) != 0) return ErrnoError(errno, "uname");
  compat->set_kernel_release(uts.release);
  compat->set_machine(uts.machine);
  for (auto w : arch::CpuFeatureWords()) compat->add_cpuid_feature_words(w);
  compat->set_xstate_features(arch::XstateFeatures());
  compat->set_xstate_size(static_cast<std::uint32_t>(xstate_size));
  return Ok();
}

// Pages of these kinds travel; the others are mapped again at restore.
bool CarriesPages(image::Vma::Kind kind) {
  return kind == image::Vma::ANONYMOUS || kind == image::Vma::FILE_PRIVATE;
}

// A pre-copy round's output: the newest copy of each page replaces the old.
class StoreSink final : public PageSink {
 public:
  explicit StoreSink(PageStore& store) : store_(store) {}
  Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) override {
    return store_.Put(vaddr, pages);
  }
  Status Finish() override { return Ok(); }

 private:
  PageStore& store_;
};

// A syscall instruction in the process's [vdso], for injection.
Result<std::uint64_t> VdsoSyscall(pid_t pid, const RemoteMemory& memory,
                                  const std::vector<procfs::Vma>& vmas) {
  const auto vdso = std::find_if(vmas.begin(), vmas.end(), [](const procfs::Vma& v) {
    return procfs::SpecialOf(v.path) == procfs::Special::kVdso;
  });
  if (vdso == vmas.end()) return MakeError(Errc::kUnsupported, "pid {} has no [vdso]", pid);
  return FindSyscallInstruction(memory, vdso->start, vdso->end);
}

}  // namespace

Result<PreCopy> PreCopy::Start(pid_t pid) {
  ROAM_TRY(CheckCapturable(pid));
  ROAM_TRY(DirtyTracker::Probe());
  std::vector<std::string> notes;
  FrozenProcess frozen(pid);
  ROAM_TRY(frozen.FreezeAll(notes));
  ROAM_TRY(CheckCapturable(pid, /*our_tracer=*/gettid()));
  ROAM_ASSIGN_OR_RETURN(RemoteMemory memory, RemoteMemory::Open(pid));
  ROAM_ASSIGN_OR_RETURN(const auto vmas, procfs::ReadMaps(pid));
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t insn, VdsoSyscall(pid, memory, vmas));
  auto& leader = frozen.threads().front();
  SyscallInjector injector(leader.tracee, leader.regs, insn);
  ROAM_ASSIGN_OR_RETURN(DirtyTracker tracker, DirtyTracker::Start(pid, injector));
  return PreCopy(pid, std::make_unique<DirtyTracker>(std::move(tracker)));
}

PreCopy::PreCopy(pid_t pid, std::unique_ptr<DirtyTracker> tracker)
    : pid_(pid), tracker_(std::move(tracker)) {}
PreCopy::PreCopy(PreCopy&&) noexcept = default;
PreCopy& PreCopy::operator=(PreCopy&&) noexcept = default;
PreCopy::~PreCopy() = default;

namespace {

// A round's pages on their way to the final capture's sink: what the sink
// took is recorded as kept.
class KeepingSink final : public PageSink {
 public:
  KeepingSink(PageSink& sink, PreCopy::Kept& kept) : sink_(sink), kept_(kept) {}
  Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) override {
    ROAM_TRY(sink_.Add(vaddr, pages));
    kept_.pages.Assign(vaddr, vaddr + pages.size(), PreCopy::Kept::Page::kInSink);
    return Ok();
  }
  std::span<std::byte> WritableTail(std::size_t bytes) override {
    return sink_.WritableTail(bytes);
  }
  // The final capture finishes the sink.
  Status Finish() override { return Ok(); }

 private:
  PageSink& sink_;
  PreCopy::Kept& kept_;
};

}  // namespace

Result<PreCopy::Round> PreCopy::ReadRound(
    PageSink& sink, const std::function<void(std::uint64_t, std::uint64_t)>& on_zero,
    const std::function<bool(std::uint64_t bytes)>& admit) {
  const std::int64_t started = NowNs(CLOCK_MONOTONIC);
  // Collect first, read after: a write racing with the read is reported by
  // the next round. The first round takes every VMA whole (Start protected
  // them all).
  PageRuns written;
  if (!first_round_) {
    ROAM_ASSIGN_OR_RETURN(written, tracker_->Collect());
  }
  // What was written is stale in what the rounds hold, all of it before
  // anything is read: a round that fails halfway (or is declined) must not
  // leave old copies that the next Collect no longer names (the final
  // capture reads what is missing).
  Forget(written);
  if (!first_round_ && admit) {
    std::uint64_t bytes = 0;
    for (const auto& [lo, hi] : written) bytes += hi - lo;
    if (!admit(bytes)) return Round{.declined = true};
  }
  ROAM_ASSIGN_OR_RETURN(const auto vmas, procfs::ReadMaps(pid_));
  ROAM_ASSIGN_OR_RETURN(RemoteMemory memory, RemoteMemory::Open(pid_));
  ROAM_ASSIGN_OR_RETURN(procfs::PagemapReader pagemap, procfs::PagemapReader::Open(pid_));
  CaptureStats stats;
  PageCapturer capturer(pid_, memory, sink, stats);
  capturer.SetBestEffort();
  capturer.OnZeroPages(on_zero);
  auto run = written.begin();
  for (const auto& v : vmas) {
    const auto kind = KindOf(v);
    if (!CarriesPages(kind)) continue;
    if (first_round_) {
      ROAM_TRY(capturer.CaptureVma(v, pagemap));
      continue;
    }
    while (run != written.end() && run->second <= v.start) ++run;
    for (auto r = run; r != written.end() && r->first < v.end; ++r) {
      const std::uint64_t lo = std::max(r->first, v.start), hi = std::min(r->second, v.end);
      ROAM_TRY(capturer.CaptureRange(lo, hi, v.read, pagemap));
    }
  }
  first_round_ = false;
  return Round{stats.pages_read, static_cast<std::uint64_t>(NowNs(CLOCK_MONOTONIC) - started)};
}

Result<PreCopy::Round> PreCopy::CopyRound() {
  if (kept_) {
    return MakeError(Errc::kInvalidArgument, "pre-copy of pid {}: rounds went to a sink", pid_);
  }
  if (!store_) store_ = std::make_unique<PageStore>();
  StoreSink sink(*store_);
  return ReadRound(
      sink, [this](std::uint64_t vaddr, std::uint64_t npages) { store_->PutZero(vaddr, npages); });
}

Result<PreCopy::Round> PreCopy::CopyRound(PageSink& sink,
                                          const std::function<bool(std::uint64_t bytes)>& admit) {
  if (store_) {
    return MakeError(Errc::kInvalidArgument, "pre-copy of pid {}: rounds went to a store", pid_);
  }
  if (!kept_) kept_ = std::make_unique<Kept>();
  KeepingSink keeping(sink, *kept_);
  return ReadRound(
      keeping,
      [this](std::uint64_t vaddr, std::uint64_t npages) {
        kept_->pages.Assign(vaddr, vaddr + npages * kPageSize, Kept::Page::kZero);
      },
      admit);
}

void PreCopy::Forget(const PageRuns& runs) {
  for (const auto& [lo, hi] : runs) {
    if (store_) store_->Drop(lo, (hi - lo) / kPageSize);
    if (kept_) kept_->pages.Erase(lo, hi);
  }
}

Result<std::vector<PreCopy::Round>> PreCopy::Converge(int max_rounds, std::uint64_t enough_pages) {
  std::vector<Round> rounds;
  while (static_cast<int>(rounds.size()) < max_rounds) {
    ROAM_ASSIGN_OR_RETURN(const Round round, CopyRound());
    rounds.push_back(round);
    if (rounds.size() > 1 && round.pages_read < enough_pages) break;
  }
  return rounds;
}

namespace {

// The mapped files, identified while the process still runs: reading ELF
// notes of every library is the slowest part of the metadata, and a file
// does not change because its user is frozen. Mappings that appear in the
// meantime are identified after the freeze.
Result<std::map<std::string, image::FileIdentity>> IdentifyMappedFiles(pid_t pid) {
  std::map<std::string, image::FileIdentity> identities;
  ROAM_ASSIGN_OR_RETURN(const auto early, procfs::ReadMaps(pid));
  for (const auto& v : early) {
    const auto kind = KindOf(v);
    if ((kind == image::Vma::FILE_PRIVATE || kind == image::Vma::FILE_SHARED) &&
        identities.count(v.path) == 0) {
      ROAM_ASSIGN_OR_RETURN(identities[v.path], IdentifyFile(v.path));
    }
  }
  return identities;
}

// Where the pages of a process kept frozen are: runs of pages that travel,
// and writable anonymous mappings not walked yet (walking a gibibyte of page
// tables takes 15-30 ms here: done after the freeze, when pages are wanted).
struct Located {
  PageRuns runs;
  PageRuns unscanned;
};

// Everything of a capture while `frozen` holds the process. Pages go to
// `pages`, or with `locate` set only where they are is noted, unread.
Status CaptureFrozen(pid_t pid, const CaptureOptions& options, FrozenProcess& frozen,
                     std::map<std::string, image::FileIdentity>& identities, image::Image* meta,
                     PageSink& pages, Located* locate, CaptureStats& stats) {
  meta->Clear();
  std::size_t xstate_size = 0;
  for (const auto& t : frozen.threads()) {
    const pid_t tid = t.tracee.tid();
    auto* thread = meta->add_threads();
    ROAM_ASSIGN_OR_RETURN(const procfs::Status thread_status, procfs::ReadStatus(tid));
    thread->set_tid(IdInOwnNamespace(thread_status));
    thread->set_blocked_signals(t.sigmask);
    ROAM_ASSIGN_OR_RETURN(const auto xstate, arch::GetXstate(tid));
    xstate_size = xstate.size();
    arch::ToProto(t.regs, xstate, thread->mutable_x86());
    ROAM_TRY(CaptureThreadState(tid, thread));
    ROAM_ASSIGN_OR_RETURN(const auto pending, PendingSignals(tid, false));
    for (const auto& p : pending) thread->add_pending_signals(p);
  }
  ROAM_ASSIGN_OR_RETURN(const auto shared_pending, PendingSignals(pid, true));
  for (const auto& s : shared_pending) meta->add_shared_pending_signals(s);

  ROAM_ASSIGN_OR_RETURN(RemoteMemory memory, RemoteMemory::Open(pid));
  ROAM_ASSIGN_OR_RETURN(auto vmas, procfs::ReadMaps(pid));
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t insn, VdsoSyscall(pid, memory, vmas));
  {
    // The leader maps one scratch page for every thread (they share the mm).
    auto& threads = frozen.threads();
    SyscallInjector leader(threads.front().tracee, threads.front().regs, insn);
    ROAM_ASSIGN_OR_RETURN(RemoteScratch scratch, RemoteScratch::Map(leader, memory, kPageSize));
    ROAM_TRY(CaptureProcessByInjection(leader, scratch, meta));
    for (std::size_t i = 0; i < threads.size(); ++i) {
      SyscallInjector injector(threads[i].tracee, threads[i].regs, insn);
      ROAM_TRY(
          CaptureThreadByInjection(injector, scratch, meta->mutable_threads(static_cast<int>(i))));
      stats.injected_syscalls += injector.calls();
    }
    ROAM_TRY(scratch.Release(leader));
    stats.injected_syscalls += leader.calls();
  }

  // The layout after the scratch mapping is gone.
  ROAM_ASSIGN_OR_RETURN(vmas, procfs::ReadMaps(pid));
  ROAM_ASSIGN_OR_RETURN(procfs::PagemapReader pagemap, procfs::PagemapReader::Open(pid));
  PageCapturer capturer(pid, memory, pages, stats);
  capturer.LocateInto(locate != nullptr ? &locate->runs : nullptr);
  // After a pre-copy, only what was written since its last round is read.
  if (options.pre_copy != nullptr) {
    if (options.pre_copy->pid() != pid) {
      return MakeError(Errc::kInvalidArgument, "pre-copy of pid {} given to capture pid {}",
                       options.pre_copy->pid(), pid);
    }
    ROAM_ASSIGN_OR_RETURN(const PageRuns written, options.pre_copy->tracker().Collect());
    // Forgotten at once: the store then holds only current pages, also for
    // a capture that fails later and is tried again (the next Collect would
    // not name them).
    options.pre_copy->Forget(written);
    capturer.UsePreCopied(options.pre_copy->store(), options.pre_copy->kept());
  }
  std::map<std::string, int> file_index;
  for (const auto& v : vmas) {
    const auto kind = KindOf(v);
    auto* out = meta->add_vmas();
    out->set_start(v.start);
    out->set_end(v.end);
    out->set_prot((v.read ? PROT_READ : 0) | (v.write ? PROT_WRITE : 0) | (v.exec ? PROT_EXEC : 0));
    out->set_kind(kind);
    out->set_name(v.path);
    out->set_file_offset(v.offset);
    out->set_file_index(-1);
    out->set_grows_down(v.path == "[stack]");
    if (kind == image::Vma::FILE_PRIVATE || kind == image::Vma::FILE_SHARED) {
      auto [it, inserted] = file_index.try_emplace(v.path, meta->compat().mapped_files_size());
      if (inserted) {
        auto known = identities.find(v.path);
        if (known == identities.end()) {
          ROAM_ASSIGN_OR_RETURN(image::FileIdentity id, IdentifyFile(v.path));
          known = identities.emplace(v.path, std::move(id)).first;
        }
        *meta->mutable_compat()->add_mapped_files() = known->second;
      }
      out->set_file_index(it->second);
    }
    if (kind == image::Vma::VDSO || kind == image::Vma::VVAR || kind == image::Vma::VVAR_VCLOCK) {
      meta->mutable_compat()->add_vdso_layout(fmt::format("{}:{}", v.path, v.end - v.start));
      continue;
    }
    if (!CarriesPages(kind)) continue;
    // Writable anonymous memory is what post-copy serves later; the rest
    // (mostly empty reservations) is walked now, which is quick.
    if (locate != nullptr && kind == image::Vma::ANONYMOUS && v.write) {
      locate->unscanned.emplace_back(v.start, v.end);
      continue;
    }
    ROAM_TRY(capturer.CaptureVma(v, pagemap));
  }
  stats.vmas = vmas.size();
  // Tracking is over: the process runs on (or dies) without it.
  if (options.pre_copy != nullptr) ROAM_TRY(options.pre_copy->tracker().Stop());
  if (auto it = file_index.find(meta->exe()); it != file_index.end()) {
    meta->set_exe_file_index(it->second);
  } else {
    meta->set_exe_file_index(-1);
  }

  ROAM_TRY(CaptureFds(pid, meta));
  ROAM_TRY(CaptureProcessFacts(pid, meta));
  ROAM_TRY(CaptureCompat(meta, xstate_size));
  meta->set_format_version(kImageFormatVersion);
  meta->set_captured_at_ns(NowNs(CLOCK_REALTIME));
  meta->set_page_bytes(stats.pages_written * kPageSize);
  return Ok();
}

// A sink for a capture that writes no pages.
class NoPages final : public PageSink {
 public:
  Status Add(std::uint64_t, std::span<const std::byte>) override {
    return MakeError(Errc::kInternal, "pages written by a capture that keeps them in place");
  }
  Status Finish() override { return Ok(); }
};

}  // namespace

Result<CaptureStats> Capture(pid_t pid, const CaptureOptions& options, image::Image* meta,
                             PageSink& pages, const CaptureCommit& commit) {
  ROAM_TRY(CheckCapturable(pid));
  CaptureStats stats;
  ROAM_ASSIGN_OR_RETURN(auto identities, IdentifyMappedFiles(pid));
  const std::int64_t frozen_at = NowNs(CLOCK_MONOTONIC);
  FrozenProcess frozen(pid);
  ROAM_TRY(frozen.FreezeAll(stats.notes));
  // What was checked before stopping may have changed since.
  ROAM_TRY(CheckCapturable(pid, /*our_tracer=*/gettid()));
  ROAM_TRY(CaptureFrozen(pid, options, frozen, identities, meta, pages, nullptr, stats));
  ROAM_TRY(pages.Finish());
  if (commit) ROAM_TRY(commit(*meta));

  if (!options.leave_running) frozen.KillOnRelease();
  stats.frozen_ns = static_cast<std::uint64_t>(NowNs(CLOCK_MONOTONIC) - frozen_at);
  return stats;
}

struct FrozenSource::Impl {
  pid_t pid;
  std::unique_ptr<FrozenProcess> frozen;
  Located located;  // runs sorted; unscanned walked on first need
  std::optional<procfs::PagemapReader> pagemap;
  std::uint64_t pages = 0;
  std::vector<std::byte> buffer = std::vector<std::byte>(kReadChunk);

  static bool In(const PageRuns& runs, std::uint64_t page) {
    auto it = std::upper_bound(runs.begin(), runs.end(), page,
                               [](std::uint64_t a, const auto& run) { return a < run.first; });
    return it != runs.begin() && page < std::prev(it)->second;
  }
  // Present or swapped, for a page of an anonymous mapping not walked yet.
  Result<bool> Exists(std::uint64_t page) const {
    ROAM_ASSIGN_OR_RETURN(const auto entry, pagemap->Read(page, 1));
    return procfs::IsPresent(entry[0]) || procfs::IsSwapped(entry[0]);
  }
  // Walks the anonymous mappings: every page that exists travels.
  Status ScanAll() {
    PageRuns found = located.runs;
    std::uint64_t count = 0;
    for (const auto& [start, end] : located.unscanned) {
      ROAM_ASSIGN_OR_RETURN(const auto ranges, pagemap->Scan(start, end));
      for (const auto& r : ranges) {
        if (r.zero_pfn || r.file) continue;
        found.emplace_back(r.start, r.end);
        count += (r.end - r.start) / kPageSize;
      }
    }
    // Only complete walks replace what is known (the runs stay sorted).
    std::sort(found.begin(), found.end());
    located.runs = std::move(found);
    located.unscanned.clear();
    pages += count;
    return Ok();
  }
  Status Read(std::uint64_t address, std::span<std::byte> out) const {
    iovec local{out.data(), out.size()};
    iovec remote{reinterpret_cast<void*>(address), out.size()};
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(out.size())) {
      return Ok();
    }
    // Not readable by the process itself (PROT_NONE): /proc/PID/mem is.
    ROAM_ASSIGN_OR_RETURN(RemoteMemory memory, RemoteMemory::Open(pid));
    return memory.Read(address, out);
  }
};

Result<std::unique_ptr<FrozenSource>> CaptureAsSource(pid_t pid, image::Image* meta,
                                                      CaptureStats* stats) {
  ROAM_TRY(CheckCapturable(pid));
  *stats = CaptureStats{};
  ROAM_ASSIGN_OR_RETURN(auto identities, IdentifyMappedFiles(pid));
  const std::int64_t frozen_at = NowNs(CLOCK_MONOTONIC);
  auto impl = std::make_unique<FrozenSource::Impl>();
  impl->pid = pid;
  impl->frozen = std::make_unique<FrozenProcess>(pid);
  ROAM_TRY(impl->frozen->FreezeAll(stats->notes));
  ROAM_TRY(CheckCapturable(pid, /*our_tracer=*/gettid()));
  NoPages none;
  ROAM_TRY(CaptureFrozen(pid, CaptureOptions{}, *impl->frozen, identities, meta, none,
                         &impl->located, *stats));
  impl->pages = stats->pages_written;
  ROAM_ASSIGN_OR_RETURN(auto pagemap, procfs::PagemapReader::Open(pid));
  impl->pagemap.emplace(std::move(pagemap));
  // No more injection: the restore that follows must not inherit the pin.
  impl->frozen->EndColocation();
  impl->frozen->RestoreSigmasks();
  stats->frozen_ns = static_cast<std::uint64_t>(NowNs(CLOCK_MONOTONIC) - frozen_at);
  return std::unique_ptr<FrozenSource>(new FrozenSource(std::move(impl)));
}

FrozenSource::FrozenSource(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FrozenSource::~FrozenSource() = default;

pid_t FrozenSource::pid() const { return impl_->pid; }
std::uint64_t FrozenSource::pages() {
  (void)impl_->ScanAll();  // on failure, what is known so far
  return impl_->pages;
}

Status FrozenSource::ForEach(const RunFn& fn) {
  if (!impl_->frozen) return MakeError(Errc::kInvalidArgument, "frozen source already released");
  ROAM_TRY(impl_->ScanAll());
  for (const auto& [start, end] : impl_->located.runs) {
    for (std::uint64_t at = start; at < end;) {
      const std::uint64_t bytes = std::min<std::uint64_t>(end - at, kReadChunk);
      auto buffer = std::span(impl_->buffer.data(), bytes);
      ROAM_TRY(impl_->Read(at, buffer));
      // Zero pages stay out, as in a page stream.
      ROAM_TRY(SplitZeroRuns(
          at, buffer, [](std::uint64_t, std::uint64_t) {}, fn));
      at += bytes;
    }
  }
  return Ok();
}

Result<bool> FrozenSource::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  if (!impl_->frozen) return MakeError(Errc::kInvalidArgument, "frozen source already released");
  if (out4k.size() != kPageSize || vaddr % kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument, "ReadPage needs an aligned page and a page buffer");
  }
  if (!Impl::In(impl_->located.runs, vaddr)) {
    if (!Impl::In(impl_->located.unscanned, vaddr)) return false;
    ROAM_ASSIGN_OR_RETURN(const bool exists, impl_->Exists(vaddr));
    if (!exists) return false;
  }
  ROAM_TRY(impl_->Read(vaddr, out4k));
  return !IsZeroPage(out4k.data());
}

std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> FrozenSource::Extent() const {
  // The runs found so far and the anonymous mappings not walked yet.
  PageRuns all = impl_->located.runs;
  all.insert(all.end(), impl_->located.unscanned.begin(), impl_->located.unscanned.end());
  std::sort(all.begin(), all.end());
  return all;
}

void FrozenSource::Kill() {
  if (!impl_->frozen) return;
  impl_->frozen->KillOnRelease();
  impl_->frozen.reset();
}

void FrozenSource::Resume() { impl_->frozen.reset(); }

Result<CaptureStats> CheckpointToDirectory(pid_t pid, const std::filesystem::path& dir,
                                           const CaptureOptions& options) {
  // Refuse before creating anything.
  ROAM_TRY(CheckCapturable(pid));
  ROAM_TRY(PrepareImageDir(dir));
  // The page file's space is taken now, while the process still runs: on
  // tmpfs allocating a gibibyte inside the frozen window costs ~0.5 s. The
  // resident anonymous memory is what travels, plus a record header per 64
  // pages; a wrong guess costs only speed.
  std::uint64_t reserve = 0;
  if (auto status = procfs::ReadStatus(pid)) {
    const std::uint64_t anon = status->rss_anon_kb * 1024;
    reserve = anon + anon / 256 + (std::uint64_t{1} << 20);
  }
  ROAM_ASSIGN_OR_RETURN(auto sink, OpenPageFileWriter(PagesPath(dir), reserve));
  image::Image meta;
  auto stats = Capture(pid, options, &meta, *sink,
                       [&dir](const image::Image& m) { return WriteImageMeta(dir, m); });
  if (!stats) {
    // Nothing half-written stays behind under the image's name.
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return stats;
}

}  // namespace roam::ckpt
