#include "roam/ckpt/refusal.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <set>

#include "core/ckpt/procfs/procfs.h"

namespace roam::ckpt {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) { return s.rfind(prefix, 0) == 0; }

bool IsDeviceNode(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode));
}

void CheckFds(const std::vector<procfs::FdEntry>& fds, std::vector<Refusal>& out) {
  // Pipe ends by pipe inode: a pipe is ours to move only if both ends are here.
  std::map<std::uint64_t, std::pair<int, int>> pipe_ends;  // inode -> (readers, writers)
  for (const auto& fd : fds) {
    if (fd.kind != procfs::FdKind::kPipe) continue;
    auto& ends = pipe_ends[fd.inode];
    ((fd.info.flags & O_ACCMODE) == O_WRONLY ? ends.second : ends.first)++;
  }
  const auto refuse = [&out](RefusalReason reason, std::string detail) {
    out.push_back({reason, std::move(detail)});
  };
  for (const auto& fd : fds) {
    const bool stdio = fd.fd <= 2;
    switch (fd.kind) {
      case procfs::FdKind::kRegular:
      case procfs::FdKind::kDirectory:
        if (fd.target.ends_with(" (deleted)")) {
          refuse(RefusalReason::kDeletedFile,
                 fmt::format("fd {} is the deleted file {}", fd.fd, fd.target));
        }
        break;
      case procfs::FdKind::kPipe: {
        const auto& ends = pipe_ends[fd.inode];
        if (!stdio && (ends.first == 0 || ends.second == 0)) {
          refuse(RefusalReason::kExternalPipe,
                 fmt::format("fd {} is a pipe shared with another process", fd.fd));
        }
        break;
      }
      case procfs::FdKind::kFifo:
        if (!stdio)
          refuse(RefusalReason::kExternalPipe,
                 fmt::format("fd {} is the FIFO {}", fd.fd, fd.target));
        break;
      case procfs::FdKind::kTty:
        if (!stdio)
          refuse(RefusalReason::kTty, fmt::format("fd {} is the terminal {}", fd.fd, fd.target));
        break;
      case procfs::FdKind::kCharDevice:
        if (!stdio && !IsPortableDevice(fd.target)) {
          refuse(RefusalReason::kDevice, fmt::format("fd {} is the device {}", fd.fd, fd.target));
        }
        break;
      case procfs::FdKind::kBlockDevice:
        refuse(RefusalReason::kDevice,
               fmt::format("fd {} is the block device {}", fd.fd, fd.target));
        break;
      case procfs::FdKind::kSocket:
        refuse(RefusalReason::kSocket, fmt::format("fd {} is a socket", fd.fd));
        break;
      case procfs::FdKind::kEventfd:
        refuse(RefusalReason::kEventfd, fmt::format("fd {} is an eventfd", fd.fd));
        break;
      case procfs::FdKind::kEpoll:
        refuse(RefusalReason::kEpoll, fmt::format("fd {} is an epoll instance", fd.fd));
        break;
      case procfs::FdKind::kInotify:
        refuse(RefusalReason::kInotify, fmt::format("fd {} is an inotify instance", fd.fd));
        break;
      case procfs::FdKind::kFanotify:
        refuse(RefusalReason::kFanotify, fmt::format("fd {} is a fanotify instance", fd.fd));
        break;
      case procfs::FdKind::kTimerfd:
        refuse(RefusalReason::kTimerfd, fmt::format("fd {} is a timerfd", fd.fd));
        break;
      case procfs::FdKind::kSignalfd:
        refuse(RefusalReason::kSignalfd, fmt::format("fd {} is a signalfd", fd.fd));
        break;
      case procfs::FdKind::kPidfd:
        refuse(RefusalReason::kPidfd, fmt::format("fd {} is a pidfd", fd.fd));
        break;
      case procfs::FdKind::kUserfaultfd:
        refuse(RefusalReason::kUserfaultfd, fmt::format("fd {} is a userfaultfd", fd.fd));
        break;
      case procfs::FdKind::kIoUring:
        refuse(RefusalReason::kIoUring, fmt::format("fd {} is an io_uring instance", fd.fd));
        break;
      case procfs::FdKind::kMemfd:
        refuse(RefusalReason::kMemfd, fmt::format("fd {} is the memfd {}", fd.fd, fd.target));
        break;
      case procfs::FdKind::kOtherAnon:
        refuse(RefusalReason::kOtherAnonFd, fmt::format("fd {} is {}", fd.fd, fd.target));
        break;
    }
  }
}

void CheckMaps(const std::vector<procfs::Vma>& vmas, std::vector<Refusal>& out) {
  const auto range = [](const procfs::Vma& v) {
    return fmt::format("{:#x}-{:#x}", v.start, v.end);
  };
  for (const auto& v : vmas) {
    const std::string_view path = v.path;
    if (StartsWith(path, "/memfd:")) {
      out.push_back({RefusalReason::kMemfd, fmt::format("memfd mapping {} at {}", path, range(v))});
    } else if (StartsWith(path, "/SYSV")) {
      out.push_back(
          {RefusalReason::kSysvSharedMemory, fmt::format("SysV shared memory at {}", range(v))});
    } else if (StartsWith(path, "/dev/shm/")) {
      out.push_back({RefusalReason::kPosixSharedMemory,
                     fmt::format("POSIX shared memory {} at {}", path, range(v))});
    } else if (v.shared && (path.empty() || path == "/dev/zero" || StartsWith(path, "[anon"))) {
      out.push_back({RefusalReason::kSharedAnonymous,
                     fmt::format("shared anonymous memory at {}", range(v))});
    } else if ((StartsWith(path, "/dev/") && path != "/dev/zero") ||
               (!path.empty() && path[0] == '/' && path != "/dev/zero" && IsDeviceNode(v.path))) {
      out.push_back(
          {RefusalReason::kDeviceMapping, fmt::format("device mapping {} at {}", path, range(v))});
    } else if (v.shared && v.write && !path.empty() && path[0] == '/') {
      // Read-only shared mappings are mapped from the file again; writable
      // ones would need the file's writers coordinated.
      out.push_back({RefusalReason::kSharedFileMapping,
                     fmt::format("writable shared mapping of {} at {}", path, range(v))});
    } else if (v.deleted && !path.empty() && path[0] == '/') {
      out.push_back(
          {RefusalReason::kDeletedFile, fmt::format("mapping of the deleted file {}", path)});
    }
  }
}

}  // namespace

bool IsPortableDevice(std::string_view path) {
  return path == "/dev/null" || path == "/dev/zero" || path == "/dev/full" ||
         path == "/dev/random" || path == "/dev/urandom";
}

std::string_view RefusalReasonName(RefusalReason reason) {
  switch (reason) {
    case RefusalReason::kSocket:
      return "socket";
    case RefusalReason::kEventfd:
      return "eventfd";
    case RefusalReason::kEpoll:
      return "epoll";
    case RefusalReason::kInotify:
      return "inotify";
    case RefusalReason::kFanotify:
      return "fanotify";
    case RefusalReason::kTimerfd:
      return "timerfd";
    case RefusalReason::kSignalfd:
      return "signalfd";
    case RefusalReason::kPidfd:
      return "pidfd";
    case RefusalReason::kUserfaultfd:
      return "userfaultfd";
    case RefusalReason::kIoUring:
      return "io-uring";
    case RefusalReason::kOtherAnonFd:
      return "anon-inode-fd";
    case RefusalReason::kMemfd:
      return "memfd";
    case RefusalReason::kTty:
      return "tty";
    case RefusalReason::kExternalPipe:
      return "external-pipe";
    case RefusalReason::kDevice:
      return "device";
    case RefusalReason::kDeletedFile:
      return "deleted-file";
    case RefusalReason::kSysvSharedMemory:
      return "sysv-shm";
    case RefusalReason::kPosixSharedMemory:
      return "posix-shm";
    case RefusalReason::kSharedAnonymous:
      return "shared-anonymous";
    case RefusalReason::kSharedFileMapping:
      return "shared-file-mapping";
    case RefusalReason::kDeviceMapping:
      return "device-mapping";
    case RefusalReason::kChildProcesses:
      return "child-processes";
    case RefusalReason::kTraced:
      return "traced";
    case RefusalReason::kSeccomp:
      return "seccomp";
    case RefusalReason::kNamespaces:
      return "namespaces";
    case RefusalReason::kZombie:
      return "zombie";
  }
  return "unknown";
}

Error Refusal::ToError(pid_t pid) const {
  return MakeError(Errc::kNotMigratable, "pid {}: {} ({})", pid, detail, RefusalReasonName(reason));
}

Result<std::vector<Refusal>> FindRefusals(pid_t pid, pid_t our_tracer) {
  std::vector<Refusal> out;
  ROAM_ASSIGN_OR_RETURN(const procfs::Status status, procfs::ReadStatus(pid));
  if (status.state == 'Z' || status.state == 'X') {
    out.push_back({RefusalReason::kZombie, "the process has exited"});
    return out;
  }
  if (status.tracer_pid != 0 && status.tracer_pid != our_tracer) {
    out.push_back(
        {RefusalReason::kTraced, fmt::format("already traced by pid {}", status.tracer_pid)});
  }
  if (status.seccomp != 0) {
    out.push_back({RefusalReason::kSeccomp, "runs under a seccomp filter"});
  }
  ROAM_ASSIGN_OR_RETURN(const auto children, procfs::ListChildren(pid));
  if (!children.empty()) {
    out.push_back({RefusalReason::kChildProcesses,
                   fmt::format("has {} child process{} (first: {})", children.size(),
                               children.size() == 1 ? "" : "es", children.front())});
  }
  ROAM_ASSIGN_OR_RETURN(const auto theirs, procfs::ReadNamespaces(pid));
  ROAM_ASSIGN_OR_RETURN(const auto ours, procfs::ReadNamespaces(getpid()));
  for (const auto& [name, inode] : theirs) {
    for (const auto& [our_name, our_inode] : ours) {
      if (name != our_name || inode == our_inode) continue;
      if (name == "pid") {
        // A pid namespace of its own is how roam restores processes: its ids
        // are recorded as the process sees them and restored into a fresh
        // one. Its init is its parent's business and not captured; but a
        // process that is itself pid 1 of its namespace reaps and holds it.
        if (status.ns_pid.empty() || status.ns_pid.back() != 1) continue;
        out.push_back({RefusalReason::kNamespaces, "is the init (pid 1) of its pid namespace"});
        continue;
      }
      out.push_back(
          {RefusalReason::kNamespaces, fmt::format("runs in another {} namespace", name)});
    }
  }
  ROAM_ASSIGN_OR_RETURN(const auto fds, procfs::ListFds(pid));
  CheckFds(fds, out);
  ROAM_ASSIGN_OR_RETURN(const auto vmas, procfs::ReadMaps(pid));
  CheckMaps(vmas, out);
  return out;
}

Status CheckCapturable(pid_t pid, pid_t our_tracer) {
  ROAM_ASSIGN_OR_RETURN(const auto refusals, FindRefusals(pid, our_tracer));
  if (!refusals.empty()) return refusals.front().ToError(pid);
  return Ok();
}

}  // namespace roam::ckpt
