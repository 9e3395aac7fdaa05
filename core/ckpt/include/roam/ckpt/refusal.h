// Why a process cannot be captured (and so cannot migrate), as typed reasons
// with a one-line message each, like openMosix's "DSTAY" reasons. The checks
// read /proc only: the process is never stopped to be refused.
//
// Thread-safety: free functions; safe from any thread.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt {

enum class RefusalReason {
  kSocket,
  kEventfd,
  kEpoll,
  kInotify,
  kFanotify,
  kTimerfd,
  kSignalfd,
  kPidfd,
  kUserfaultfd,
  kIoUring,
  kOtherAnonFd,
  kMemfd,
  kTty,           // a terminal other than on fds 0-2 (job control)
  kExternalPipe,  // a pipe or FIFO shared with another process, on fd >= 3
  kDevice,        // an open device other than /dev/null and friends
  kDeletedFile,   // an open or mapped file that was deleted
  kSysvSharedMemory,
  kPosixSharedMemory,
  kSharedAnonymous,
  kSharedFileMapping,
  kDeviceMapping,
  kChildProcesses,
  kTraced,
  kSeccomp,
  kNamespaces,
  kZombie,
};

std::string_view RefusalReasonName(RefusalReason reason);

struct Refusal {
  RefusalReason reason;
  std::string detail;  // "fd 5 is a socket"

  // kNotMigratable with "pid N: <detail>".
  Error ToError(pid_t pid) const;
};

// Character devices a process may hold open and find again on any node.
bool IsPortableDevice(std::string_view path);

// Every reason `pid` cannot be captured now; empty if it can. Fails only if
// the process cannot be inspected (gone, or not the caller's).
// `our_tracer`: a tracer that is not a reason (the capture itself, when it
// checks again after freezing the process).
Result<std::vector<Refusal>> FindRefusals(pid_t pid, pid_t our_tracer = 0);

// The first refusal as an error, or Ok.
Status CheckCapturable(pid_t pid, pid_t our_tracer = 0);

}  // namespace roam::ckpt
