// Keeps the tracer and its tracees on one CPU while syscalls are injected.
//
// Every injected call is a ptrace round trip: the tracer resumes the tracee
// and waits, the tracee stops and wakes the tracer. With the two on
// different CPUs each of those wakeups is a cross-CPU interrupt, and on a
// virtual machine waking an idle vCPU is slow: checkpointing a sleeping
// process measured 14-40 ms frozen with roam on another CPU, 5-7 ms on the
// same one (this 2-vCPU VM). So while a Colocation lives, the calling thread
// and every thread added are pinned to the CPU the caller runs on; each
// gets its own affinity mask back when it ends, in every case.
//
// Giving a mask back makes it the thread's requested mask (Linux >= 6.2),
// which a later widening of its cpuset does not reach. A thread that could
// use every online CPU therefore gets all CPUs back, which keeps it as
// unrestricted as before; one that was narrower (its own sched_setaffinity,
// or a cpuset) gets exactly its list, and may miss CPUs its cpuset gains
// later.
//
// Best effort: a CPU a thread may not use (cpuset) or a failing call leaves
// that thread as it was; it only costs speed. If roam dies meanwhile, the
// threads keep the pin (still correct, just confined to one CPU).
//
// Thread-safety: one thread (the tracer); not movable.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <vector>

namespace roam::ckpt {

class Colocation final {
 public:
  Colocation();  // pins the calling thread to the CPU it runs on
  ~Colocation();
  Colocation(const Colocation&) = delete;
  Colocation& operator=(const Colocation&) = delete;

  // Pins thread `tid` to the same CPU, remembering its mask.
  void Add(pid_t tid);
  // Gives thread `tid` its mask back now (it is leaving, or a hook wants to
  // set its own); no-op for a thread not added.
  void Release(pid_t tid);

  int cpu() const { return cpu_; }

 private:
  struct Saved {
    pid_t tid;  // 0: the calling thread
    cpu_set_t mask;
  };
  int cpu_ = -1;
  std::vector<Saved> saved_;
};

}  // namespace roam::ckpt
