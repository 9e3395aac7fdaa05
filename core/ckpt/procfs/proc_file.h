// Internal to roam::ckpt_procfs: reading files, links and directories under
// /proc/PID, and the small text helpers the parsers share. errno becomes an
// Error in this file's ProcError() and nowhere else in the library.
//
// Errors: a process that does not exist (any more) is Errc::kNotFound with
// errno ESRCH and the message "no process PID"; any other failure is
// ErrnoError with the call and path. ENOENT therefore always means that the
// process exists but the entry does not (an fd closed meanwhile, a namespace
// this kernel lacks), which callers may skip.
//
// Thread-safety: plain functions of their arguments; safe from any thread.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt::procfs::internal {

// "/proc/PID/name".
std::string ProcPath(pid_t pid, std::string_view name);

// The Error for `call` (an OS call) on /proc/PID/name having failed with
// `sys_errno`; see the header comment.
Error ProcError(int sys_errno, pid_t pid, std::string_view name, std::string_view call);

// The whole file (proc files report size 0, so it is read to EOF).
Result<std::string> ReadProcFile(pid_t pid, std::string_view name);
Result<std::string> ReadProcLink(pid_t pid, std::string_view name);
Result<struct stat> StatProcFile(pid_t pid, std::string_view name);
// A read-only O_CLOEXEC descriptor the caller owns.
Result<int> OpenProcFile(pid_t pid, std::string_view name);
// The entries of directory /proc/PID/name whose names are decimal numbers
// (fds, tids), ascending.
Result<std::vector<int>> ListNumericEntries(pid_t pid, std::string_view name);

// The whole of `text` as a number in `base`; nullopt if anything is left
// over, it is empty, or it does not fit in T.
template <typename T>
std::optional<T> ParseNumber(std::string_view text, int base = 10) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value, base);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

// Sets `out` only when all of `text` is a number; says whether it was.
template <typename T>
bool ParseInto(std::string_view text, T& out, int base = 10) {
  const auto value = ParseNumber<T>(text, base);
  if (value) out = *value;
  return value.has_value();
}

std::string_view Trim(std::string_view text);
// The lines of `text`, without their '\n'; a final '\n' ends the last line
// rather than starting an empty one.
std::vector<std::string_view> SplitLines(std::string_view text);
// Runs of characters other than space, tab and newline.
std::vector<std::string_view> SplitFields(std::string_view text);

}  // namespace roam::ckpt::procfs::internal
