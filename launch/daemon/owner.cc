#include "launch/daemon/owner.h"

#include <sys/stat.h>
#include <utmpx.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace roam::daemon {
namespace {

std::chrono::system_clock::time_point ToTimePoint(const struct timespec& t) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec)));
}

// `path`'s access time (a terminal's is its last input; its modification
// time is its last output), or the newer of access and modification
// (`written_too`), folded into `last`.
void Consider(const std::string& path, bool written_too,
              std::optional<std::chrono::system_clock::time_point>& last) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return;
  auto t = ToTimePoint(st.st_atim);
  if (written_too) t = std::max(t, ToTimePoint(st.st_mtim));
  if (!last || t > *last) last = t;
}

}  // namespace

std::optional<std::chrono::system_clock::time_point> LastOwnerInput(
    std::span<const std::filesystem::path> inputs) {
  std::optional<std::chrono::system_clock::time_point> last;
  if (!inputs.empty()) {
    for (const std::filesystem::path& p : inputs) Consider(p.string(), /*written_too=*/true, last);
    return last;
  }
  // Not thread-safe by POSIX (one static cursor): only roamd's loop thread
  // calls this.
  setutxent();
  while (const struct utmpx* entry = getutxent()) {
    if (entry->ut_type != USER_PROCESS || entry->ut_line[0] == '\0') continue;
    const std::string line(entry->ut_line, strnlen(entry->ut_line, sizeof(entry->ut_line)));
    if (line.find('/') == 0 || line.find("..") != std::string::npos) continue;
    Consider("/dev/" + line, /*written_too=*/false, last);
  }
  endutxent();
  return last;
}

}  // namespace roam::daemon
