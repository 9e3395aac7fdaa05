// The open file descriptors of a process, from /proc/PID/fd and fdinfo: what
// capture must recreate on restore, and what kind each is, since a socket, an
// io_uring or a userfaultfd decides whether the process can move at all.
//
// Thread-safety: plain functions; safe from any thread. The table is a
// snapshot: it is only stable while the target is frozen.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt::procfs {

enum class FdKind {
  kRegular,
  kDirectory,
  kPipe,
  kFifo,
  kTty,
  kCharDevice,
  kBlockDevice,
  kSocket,
  kEventfd,
  kEpoll,
  kInotify,
  kFanotify,
  kTimerfd,
  kSignalfd,
  kPidfd,
  kMemfd,
  kUserfaultfd,
  kIoUring,
  kOtherAnon,  // any other anon_inode, and whatever fits nothing above
};

// Lowercase and hyphenated, for messages: "char-device", "io-uring".
std::string_view FdKindName(FdKind kind);

// From the fd's readlink target, its st_mode and major(st_rdev). Anonymous
// inodes and pipes are told apart by the link name; files by the mode.
FdKind ClassifyFd(std::string_view link_target, uint32_t st_mode, uint32_t rdev_major);

// /proc/PID/fdinfo/N.
struct FdInfo {
  int64_t pos = 0;
  uint32_t flags = 0;  // the open(2) flags, O_CLOEXEC included
  int mnt_id = 0;
};

// Only pos, flags (octal) and mnt_id are read; the kind-specific lines that
// follow them are ignored. A missing one of the three is Errc::kCorrupt.
Result<FdInfo> ParseFdInfo(std::string_view text);

struct FdEntry {
  int fd = -1;
  std::string target;  // readlink of /proc/PID/fd/N: a path, "pipe:[123]", ...
  FdKind kind = FdKind::kOtherAnon;
  FdInfo info;
  // stat() through the fd.
  uint64_t inode = 0;
  uint32_t mode = 0;
  uint64_t size = 0;
  uint32_t rdev_major = 0;
  uint32_t rdev_minor = 0;
};

// In ascending fd order. An fd closed while it is being looked at is left
// out rather than an error. Listing another user's process needs ptrace
// access to it (Errc::kPermissionDenied otherwise).
Result<std::vector<FdEntry>> ListFds(pid_t pid);

}  // namespace roam::ckpt::procfs
