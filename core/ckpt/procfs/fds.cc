#include "core/ckpt/procfs/fds.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <array>
#include <cerrno>
#include <utility>

#include "core/ckpt/procfs/proc_file.h"

namespace roam::ckpt::procfs {
namespace {

constexpr std::string_view kAnonPrefix = "anon_inode:";

// The names anon_inode_getfd() callers give their files (fs/*.c).
constexpr auto kAnonKinds = std::to_array<std::pair<std::string_view, FdKind>>({
    {"[eventfd]", FdKind::kEventfd},
    {"[eventpoll]", FdKind::kEpoll},
    {"inotify", FdKind::kInotify},
    {"[fanotify]", FdKind::kFanotify},
    {"[timerfd]", FdKind::kTimerfd},
    {"[signalfd]", FdKind::kSignalfd},
    {"[pidfd]", FdKind::kPidfd},
    {"[userfaultfd]", FdKind::kUserfaultfd},
    {"[io_uring]", FdKind::kIoUring},
});

bool IsTtyMajor(uint32_t major) {
  // 4: virtual consoles and serial ports, 5: /dev/tty, console and ptmx,
  // 136-143: Unix98 pty slaves (Documentation/admin-guide/devices.txt).
  return major == 4 || major == 5 || (major >= 136 && major <= 143);
}

}  // namespace

std::string_view FdKindName(FdKind kind) {
  // In the order of the enum.
  static constexpr std::array<std::string_view, 19> kNames = {
      "regular", "directory", "pipe",        "fifo",     "tty",       "char-device", "block-device",
      "socket",  "eventfd",   "epoll",       "inotify",  "fanotify",  "timerfd",     "signalfd",
      "pidfd",   "memfd",     "userfaultfd", "io-uring", "other-anon"};
  static_assert(kNames.size() == static_cast<size_t>(FdKind::kOtherAnon) + 1);
  const auto index = static_cast<size_t>(kind);
  return index < kNames.size() ? kNames[index] : "unknown";
}

FdKind ClassifyFd(std::string_view link_target, uint32_t st_mode, uint32_t rdev_major) {
  if (link_target.starts_with("socket:[") || S_ISSOCK(st_mode)) return FdKind::kSocket;
  if (link_target.starts_with("pipe:[")) return FdKind::kPipe;
  if (link_target.starts_with(kAnonPrefix)) {
    const std::string_view name = link_target.substr(kAnonPrefix.size());
    for (const auto& [anon_name, kind] : kAnonKinds) {
      if (name == anon_name) return kind;
    }
    return FdKind::kOtherAnon;
  }
  // A memfd is a regular file on an internal shmem mount, named so.
  if (link_target.starts_with("/memfd:")) return FdKind::kMemfd;
  if (S_ISFIFO(st_mode)) return FdKind::kFifo;
  if (S_ISCHR(st_mode)) return IsTtyMajor(rdev_major) ? FdKind::kTty : FdKind::kCharDevice;
  if (S_ISBLK(st_mode)) return FdKind::kBlockDevice;
  if (S_ISDIR(st_mode)) return FdKind::kDirectory;
  if (S_ISREG(st_mode)) return FdKind::kRegular;
  return FdKind::kOtherAnon;
}

Result<FdInfo> ParseFdInfo(std::string_view text) {
  FdInfo info;
  bool pos = false;
  bool flags = false;
  bool mnt_id = false;
  for (const std::string_view line : internal::SplitLines(text)) {
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    const std::string_view key = line.substr(0, colon);
    const std::string_view value = internal::Trim(line.substr(colon + 1));
    bool ok = true;
    if (key == "pos") {
      ok = internal::ParseInto(value, info.pos);
      pos = true;
    } else if (key == "flags") {
      ok = internal::ParseInto(value, info.flags, 8);
      flags = true;
    } else if (key == "mnt_id") {
      ok = internal::ParseInto(value, info.mnt_id);
      mnt_id = true;
    }
    if (!ok) return MakeError(Errc::kCorrupt, "fdinfo: bad {} '{}'", key, value);
  }
  if (!pos || !flags || !mnt_id) {
    return MakeError(Errc::kCorrupt, "fdinfo lacks {}", !pos ? "pos" : !flags ? "flags" : "mnt_id");
  }
  return info;
}

Result<std::vector<FdEntry>> ListFds(pid_t pid) {
  // The listing is complete before any fd is looked at, so that our own
  // short-lived descriptors (the directory, fdinfo files) never show up as
  // the target's when pid is this process: they are closed by then, and an
  // fd closed by then is skipped like any other.
  ROAM_ASSIGN_OR_RETURN(const std::vector<int> fds, internal::ListNumericEntries(pid, "fd"));
  std::vector<FdEntry> entries;
  entries.reserve(fds.size());
  // ENOENT: the process exists (ProcError said so) but the fd is gone.
  const auto vanished = [](const Error& e) { return e.sys_errno() == ENOENT; };
  for (const int fd : fds) {
    const std::string link = fmt::format("fd/{}", fd);
    auto target = internal::ReadProcLink(pid, link);
    if (!target) {
      if (vanished(target.error())) continue;
      return target.error();
    }
    auto st = internal::StatProcFile(pid, link);
    if (!st) {
      if (vanished(st.error())) continue;
      return st.error();
    }
    auto info_text = internal::ReadProcFile(pid, fmt::format("fdinfo/{}", fd));
    if (!info_text) {
      if (vanished(info_text.error())) continue;
      return info_text.error();
    }
    ROAM_ASSIGN_OR_RETURN(FdInfo info, ParseFdInfo(*info_text).map_error([pid, fd](Error e) {
      return std::move(e).WithContext(fmt::format("pid {} fd {}", pid, fd));
    }));
    FdEntry& entry = entries.emplace_back();
    entry.fd = fd;
    entry.target = std::move(*target);
    entry.kind = ClassifyFd(entry.target, st->st_mode, major(st->st_rdev));
    entry.info = info;
    entry.inode = st->st_ino;
    entry.mode = st->st_mode;
    entry.size = static_cast<uint64_t>(st->st_size);
    entry.rdev_major = major(st->st_rdev);
    entry.rdev_minor = minor(st->st_rdev);
  }
  return entries;
}

}  // namespace roam::ckpt::procfs
