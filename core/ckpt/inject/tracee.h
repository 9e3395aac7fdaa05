// A thread under ptrace control: seize, interrupt, wait for stops, resume,
// detach. The compel-like layer below capture and restore; it knows nothing
// of images.
//
// Thread-safety: the kernel accepts ptrace requests for a tracee only from
// the thread that attached, so a Tracee must be used from one thread.
// Lifetime: move-only; destroying an attached Tracee detaches it (the thread
// resumes), so an error path never leaves a process stopped.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "roam/base/error.h"

namespace roam::ckpt {

// What a wait reported about a tracee.
struct StopInfo {
  enum class Kind { kEventStop, kSyscallStop, kSignalStop, kExited, kKilled };
  Kind kind;
  int signal = 0;  // stop signal (kSignalStop), exit code (kExited), killing signal (kKilled)
  int event = 0;   // PTRACE_EVENT_* for kEventStop
};

class Tracee final {
 public:
  // PTRACE_SEIZE without stopping it (PTRACE_O_TRACESYSGOOD set).
  static Result<Tracee> Seize(pid_t tid);
  // A child that did PTRACE_TRACEME and stopped itself, or a thread it
  // cloned under PTRACE_O_TRACECLONE: waits for that stop and sets the
  // options. kill_on_exit: it dies if roam dies; trace_clone: threads it
  // creates are traced from their first instruction.
  static Result<Tracee> AdoptStoppedChild(pid_t pid, bool kill_on_exit, bool trace_clone = false);

  Tracee(Tracee&& other) noexcept;
  Tracee& operator=(Tracee&& other) noexcept;
  Tracee(const Tracee&) = delete;
  Tracee& operator=(const Tracee&) = delete;
  ~Tracee();

  pid_t tid() const { return tid_; }

  // PTRACE_INTERRUPT, then waits until the thread is in a ptrace stop.
  Status Interrupt();
  // Resumes to the next syscall entry or exit (PTRACE_SYSCALL) and waits.
  Result<StopInfo> StepSyscall();
  Status SetSigmask(std::uint64_t mask);
  Result<std::uint64_t> GetSigmask();

  // Ends tracing; the thread runs on. Safe to call twice.
  Status Detach();
  // SIGKILL, then reaps nothing (the parent does); the Tracee is released.
  void Kill();

 private:
  explicit Tracee(pid_t tid) : tid_(tid) {}
  Result<StopInfo> Wait();

  pid_t tid_ = -1;
  bool attached_ = false;
};

}  // namespace roam::ckpt
