#include "core/ckpt/procfs/proc_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>

namespace roam::ckpt::procfs::internal {

std::string ProcPath(pid_t pid, std::string_view name) {
  return fmt::format("/proc/{}/{}", pid, name);
}

Error ProcError(int sys_errno, pid_t pid, std::string_view name, std::string_view call) {
  // A vanished process shows up as ENOENT (open, readlink, stat) or ESRCH
  // (reads of some files while it exits); /proc/PID itself tells which.
  if ((sys_errno == ENOENT || sys_errno == ESRCH) && access(ProcPath(pid, "").c_str(), F_OK) != 0) {
    return Error(Errc::kNotFound, ESRCH, fmt::format("no process {}", pid));
  }
  return ErrnoError(sys_errno, "{} {}", call, ProcPath(pid, name));
}

Result<int> OpenProcFile(pid_t pid, std::string_view name) {
  const int fd = open(ProcPath(pid, name).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ProcError(errno, pid, name, "open");
  return fd;
}

Result<std::string> ReadProcFile(pid_t pid, std::string_view name) {
  ROAM_ASSIGN_OR_RETURN(const int fd, OpenProcFile(pid, name));
  std::string text;
  constexpr size_t kChunk = size_t{16} * 1024;
  for (;;) {
    const size_t used = text.size();
    text.resize(used + kChunk);
    const ssize_t n = read(fd, text.data() + used, kChunk);
    if (n < 0 && errno == EINTR) {
      text.resize(used);
      continue;
    }
    if (n < 0) {
      const int err = errno;
      close(fd);
      return ProcError(err, pid, name, "read");
    }
    text.resize(used + static_cast<size_t>(n));
    if (n == 0) break;
  }
  close(fd);
  return text;
}

Result<std::string> ReadProcLink(pid_t pid, std::string_view name) {
  const std::string path = ProcPath(pid, name);
  std::string target(256, '\0');
  for (;;) {
    const ssize_t n = readlink(path.c_str(), target.data(), target.size());
    if (n < 0) return ProcError(errno, pid, name, "readlink");
    // readlink truncates silently; a full buffer may be a cut-off target.
    if (static_cast<size_t>(n) < target.size()) {
      target.resize(static_cast<size_t>(n));
      return target;
    }
    target.resize(target.size() * 2);
  }
}

Result<struct stat> StatProcFile(pid_t pid, std::string_view name) {
  struct stat st {};
  if (stat(ProcPath(pid, name).c_str(), &st) != 0) return ProcError(errno, pid, name, "stat");
  return st;
}

Result<std::vector<int>> ListNumericEntries(pid_t pid, std::string_view name) {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(ProcPath(pid, name).c_str()), closedir);
  if (dir == nullptr) return ProcError(errno, pid, name, "opendir");
  std::vector<int> numbers;
  for (;;) {
    errno = 0;
    const dirent* entry = readdir(dir.get());
    if (entry == nullptr) {
      if (errno != 0) return ProcError(errno, pid, name, "readdir");
      break;
    }
    if (auto n = ParseNumber<int>(entry->d_name)) numbers.push_back(*n);  // skips "." and ".."
  }
  std::sort(numbers.begin(), numbers.end());
  return numbers;
}

std::string_view Trim(std::string_view text) {
  constexpr std::string_view kSpace = " \t\n";
  const size_t first = text.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(kSpace) - first + 1);
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    lines.push_back(text.substr(0, eol));
    text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
  }
  return lines;
}

std::vector<std::string_view> SplitFields(std::string_view text) {
  constexpr std::string_view kSpace = " \t\n";
  std::vector<std::string_view> fields;
  size_t pos = text.find_first_not_of(kSpace);
  while (pos != std::string_view::npos) {
    const size_t end = text.find_first_of(kSpace, pos);
    fields.push_back(text.substr(pos, end - pos));
    pos = text.find_first_not_of(kSpace, end);
  }
  return fields;
}

}  // namespace roam::ckpt::procfs::internal
