// Binding a process to a Placement (roam/numa/placement.h): its threads to
// the placement's CPUs, its memory to the placement's NUMA node. This is the
// seam between placement and the kernel; nothing else in roam calls
// sched_setaffinity, set_mempolicy or migrate_pages.
//
// What Linux allows, and so what is and is not done:
//  - CPU affinity is per thread and may be set for any thread the caller may
//    signal (same uid, or CAP_SYS_NICE). Threads inherit it at creation, and
//    it survives fork and exec.
//  - A memory policy (set_mempolicy) is per thread too, but only ever of the
//    calling thread: no call sets another process's policy. It is inherited
//    by threads and children and kept across exec.
//  - migrate_pages(2) moves the existing pages of another process between
//    nodes. Pages shared with other processes move only if the caller has
//    CAP_SYS_NICE; pages locked or in use may stay (the call reports them).
// Hence BindSelf (a child before exec) binds CPUs and sets its memory policy
// for good, while BindProcess (a running process) binds CPUs and moves the
// pages it has, but leaves its memory policy as the process set it: under
// the default (local) policy its later allocations land on the node of the
// CPU it runs on, which after the CPU binding is the placement's node.
//
// Every call checks the placement first: every CPU must be online on this
// machine and the node must exist, else kInvalidArgument with a one-line
// message saying which CPU or node is missing ("CPU 7 is not on this machine
// (online: 0-1)"). No thread's affinity has changed when that check fails.
//
// Thread-safety: free functions without shared state; BindProcess on one pid
// from two threads at once leaves it bound to whichever ran last.
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <array>
#include <cstdint>

#include "roam/base/error.h"
#include "roam/numa/placement.h"

namespace roam::numa {

// What to do when memory cannot be bound (tcmalloc's NumaBindMode). CPU
// binding failures are errors in both modes.
enum class BindMode {
  // Memory bound as well, or an error: BindSelf sets MPOL_BIND (allocations
  // fail over to no other node, so the process can run out of memory while
  // other nodes have some); BindProcess requires every page moved.
  kStrict,
  // CPUs bound; memory preferred (BindSelf: MPOL_PREFERRED, other nodes used
  // when the node is full) and moved where the kernel lets us. A memory
  // failure is never an error.
  kBestEffort,
};

// Binds every thread of process `pid` to placement.cpus (threads created
// while this runs are caught by a repeated scan of /proc/PID/task), then moves
// its pages from all other nodes to placement.numa_node with migrate_pages.
// CPUs first, so that pages it allocates meanwhile already land on the node.
// Errors: kNotFound ("no such process"), kPermissionDenied (another user's
// process without CAP_SYS_NICE), kInvalidArgument (see above; also when a
// cgroup cpuset grants the thread fewer CPUs than asked), and with kStrict
// kResourceExhausted when pages could not be moved or the node is outside
// the process's cpuset.
Status BindProcess(pid_t pid, const Placement& placement, BindMode mode);

// A binding of the calling thread, checked and encoded ahead so that applying
// it takes two system calls and allocates nothing: safe in a child forked
// from a multi-threaded parent, before exec, where only async-signal-safe
// functions may run. Prepare() in the parent, Apply() in the child.
class SelfBinding final {
 public:
  // A kernel nodemask: the kernel's unsigned longs, 64-bit on the LP64
  // targets roam builds for.
  using NodeMask = std::array<std::uint64_t, 16>;

  struct Failure {
    int sys_errno = 0;           // 0: applied
    const char* call = nullptr;  // the failed call, a static string
  };

  static Result<SelfBinding> Prepare(const Placement& placement, BindMode mode);

  // Binds the calling thread's CPUs, checks that the kernel granted them all
  // (a cgroup cpuset may narrow an affinity silently: EINVAL then), and sets
  // its memory policy. Async-signal-safe.
  Failure Apply() const noexcept;

  const Placement& placement() const { return placement_; }

 private:
  SelfBinding() = default;

  Placement placement_;
  BindMode mode_ = BindMode::kStrict;
  cpu_set_t cpus_{};
  bool bind_memory_ = false;  // false: best effort on a kernel without NUMA
  NodeMask nodes_{};          // 1024 bits: the node of the placement
};

// Prepare + Apply, for a single-threaded caller (a child forked from a
// single-threaded process, or a test): binds the calling thread, and so every
// thread and child it later creates and the program it execs.
Status BindSelf(const Placement& placement, BindMode mode);

}  // namespace roam::numa
