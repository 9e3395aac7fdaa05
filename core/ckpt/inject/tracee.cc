#include "core/ckpt/inject/tracee.h"

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

#include <cerrno>
#include <utility>

namespace roam::ckpt {

Result<Tracee> Tracee::Seize(pid_t tid) {
  if (ptrace(PTRACE_SEIZE, tid, nullptr, PTRACE_O_TRACESYSGOOD) != 0) {
    const int err = errno;
    if (err == EPERM) {
      return Error(Errc::kPermissionDenied, err,
                   fmt::format("cannot trace pid {} (already traced, or not yours)", tid));
    }
    return ErrnoError(err, "ptrace SEIZE pid {}", tid);
  }
  Tracee t(tid);
  t.attached_ = true;
  return t;
}

Result<Tracee> Tracee::AdoptStoppedChild(pid_t pid, bool kill_on_exit, bool trace_clone) {
  Tracee t(pid);
  t.attached_ = true;
  ROAM_ASSIGN_OR_RETURN(const StopInfo stop, t.Wait());
  if (stop.kind != StopInfo::Kind::kSignalStop) {
    t.attached_ = false;
    return MakeError(Errc::kInternal, "restore stub {} did not stop (wait kind {})", pid,
                     static_cast<int>(stop.kind));
  }
  long options = PTRACE_O_TRACESYSGOOD;
  if (kill_on_exit) options |= PTRACE_O_EXITKILL;
  if (trace_clone) options |= PTRACE_O_TRACECLONE;
  if (ptrace(PTRACE_SETOPTIONS, pid, nullptr, options) != 0) {
    return ErrnoError(errno, "ptrace SETOPTIONS pid {}", pid);
  }
  return t;
}

Tracee::Tracee(Tracee&& other) noexcept
    : tid_(other.tid_), attached_(std::exchange(other.attached_, false)) {}

Tracee& Tracee::operator=(Tracee&& other) noexcept {
  if (this != &other) {
    (void)Detach();
    tid_ = other.tid_;
    attached_ = std::exchange(other.attached_, false);
  }
  return *this;
}

Tracee::~Tracee() { (void)Detach(); }

Result<StopInfo> Tracee::Wait() {
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(tid_, &status, __WALL);
    if (r == tid_) break;
    if (r < 0 && errno == EINTR) continue;
    return ErrnoError(errno, "wait for thread {}", tid_);
  }
  if (WIFEXITED(status)) {
    attached_ = false;
    return StopInfo{StopInfo::Kind::kExited, WEXITSTATUS(status), 0};
  }
  if (WIFSIGNALED(status)) {
    attached_ = false;
    return StopInfo{StopInfo::Kind::kKilled, WTERMSIG(status), 0};
  }
  const int sig = WSTOPSIG(status);
  const int event = status >> 16;
  if (sig == (SIGTRAP | 0x80)) return StopInfo{StopInfo::Kind::kSyscallStop, SIGTRAP, 0};
  if (event != 0) return StopInfo{StopInfo::Kind::kEventStop, sig, event};
  return StopInfo{StopInfo::Kind::kSignalStop, sig, 0};
}

Status Tracee::Interrupt() {
  if (ptrace(PTRACE_INTERRUPT, tid_, nullptr, nullptr) != 0) {
    return ErrnoError(errno, "ptrace INTERRUPT thread {}", tid_);
  }
  for (;;) {
    ROAM_ASSIGN_OR_RETURN(const StopInfo stop, Wait());
    switch (stop.kind) {
      case StopInfo::Kind::kEventStop:
        return Ok();
      case StopInfo::Kind::kExited:
      case StopInfo::Kind::kKilled:
        return MakeError(Errc::kNotFound, "thread {} exited while being stopped", tid_);
      case StopInfo::Kind::kSignalStop:
        // A signal arrived before the interrupt took effect: let it be
        // delivered (so nothing is lost) and wait for the interrupt stop.
        if (ptrace(PTRACE_CONT, tid_, nullptr, stop.signal) != 0) {
          return ErrnoError(errno, "ptrace CONT thread {}", tid_);
        }
        break;
      case StopInfo::Kind::kSyscallStop:
        if (ptrace(PTRACE_CONT, tid_, nullptr, nullptr) != 0) {
          return ErrnoError(errno, "ptrace CONT thread {}", tid_);
        }
        break;
    }
  }
}

Result<StopInfo> Tracee::StepSyscall() {
  if (ptrace(PTRACE_SYSCALL, tid_, nullptr, nullptr) != 0) {
    return ErrnoError(errno, "ptrace SYSCALL thread {}", tid_);
  }
  return Wait();
}

Status Tracee::SetSigmask(std::uint64_t mask) {
  if (ptrace(PTRACE_SETSIGMASK, tid_, sizeof(mask), &mask) != 0) {
    return ErrnoError(errno, "ptrace SETSIGMASK thread {}", tid_);
  }
  return Ok();
}

Result<std::uint64_t> Tracee::GetSigmask() {
  std::uint64_t mask = 0;
  if (ptrace(PTRACE_GETSIGMASK, tid_, sizeof(mask), &mask) != 0) {
    return ErrnoError(errno, "ptrace GETSIGMASK thread {}", tid_);
  }
  return mask;
}

Status Tracee::Detach() {
  if (!attached_) return Ok();
  attached_ = false;
  if (ptrace(PTRACE_DETACH, tid_, nullptr, nullptr) != 0 && errno != ESRCH) {
    return ErrnoError(errno, "ptrace DETACH thread {}", tid_);
  }
  return Ok();
}

void Tracee::Kill() {
  if (!attached_) return;
  attached_ = false;
  kill(tid_, SIGKILL);
}

}  // namespace roam::ckpt
