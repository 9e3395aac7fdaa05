#include "launch/node_cgroup.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>

#include <fmt/format.h>

#include "roam/base/deadline.h"
#include "roam/base/file.h"
#include "roam/base/unique_fd.h"

namespace roam::launch {
namespace {

namespace fs = std::filesystem;

// The kernel refuses a cfs quota below 1 ms (EINVAL).
constexpr std::int64_t kMinQuotaUs = 1000;

// cgroup control files take one value per write(2); the kernel's answer to
// that write is the error (EINVAL for a bad quota, ESRCH for a gone pid).
Status WriteControl(const fs::path& path, std::string_view value) {
  const UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(errno, "open {}", path.string());
  ssize_t n = 0;
  do {
    n = write(fd.get(), value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError(errno, "write '{}' to {}", value, path.string());
  return Ok();
}

Status MakeDir(const fs::path& dir) {
  if (mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) return Ok();
  return ErrnoError(errno, "mkdir {}", dir.string());
}

// The cgroups at and below `dir`, deepest first.
Result<std::vector<fs::path>> Subtree(const fs::path& dir) {
  std::vector<fs::path> dirs;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return dirs;
  dirs.push_back(dir);
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path());
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return Error(ErrcFromErrno(ec.value()), ec.value(),
                 fmt::format("list the cgroups under {}: {}", dir.string(), ec.message()));
  }
  // A child's path is longer than its parent's.
  std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
    return a.native().size() > b.native().size();
  });
  return dirs;
}

// Every pid in `dir` and the cgroups below it (cgroup.procs, recursively).
// An absent `dir` holds none.
Result<std::vector<pid_t>> CgroupProcesses(const fs::path& dir) {
  ROAM_ASSIGN_OR_RETURN(const std::vector<fs::path> dirs, Subtree(dir));
  std::vector<pid_t> pids;
  for (const fs::path& cgroup : dirs) {
    const Result<std::string> procs = ReadFile(cgroup / "cgroup.procs");
    if (!procs.has_value()) {
      if (procs.error().code() == Errc::kNotFound) continue;  // removed meanwhile
      return procs.error();
    }
    std::istringstream in(*procs);
    for (pid_t pid = 0; in >> pid;) pids.push_back(pid);
  }
  return pids;
}

}  // namespace

Result<fs::path> CpuCgroupMount() {
  ROAM_ASSIGN_OR_RETURN(const std::string mounts, ReadFile("/proc/self/mounts"));
  std::istringstream lines(mounts);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string source;
    std::string target;
    std::string type;
    std::string options;
    if (!(fields >> source >> target >> type >> options) || type != "cgroup") continue;
    std::istringstream opts(options);
    std::string opt;
    while (std::getline(opts, opt, ',')) {
      if (opt == "cpu") return fs::path(target);
    }
  }
  return MakeError(Errc::kUnsupported,
                   "no cgroup v1 hierarchy with the cpu controller is mounted (see /proc/mounts); "
                   "local pools need one for the nodes' CPU shares");
}

Status CreateNodeCgroup(const fs::path& dir, double cpus) {
  if (!(cpus > 0) || !std::isfinite(cpus)) {
    return MakeError(Errc::kInvalidArgument, "{} CPUs per node: give a number above 0", cpus);
  }
  ROAM_TRY(MakeDir(dir.parent_path()));
  ROAM_TRY(MakeDir(dir));
  const fs::path guests = dir / "guests";
  ROAM_TRY(MakeDir(guests));
  ROAM_ASSIGN_OR_RETURN(const std::string period_text, ReadFile(guests / "cpu.cfs_period_us"));
  const std::int64_t period = std::strtoll(period_text.c_str(), nullptr, 10);
  if (period <= 0) {
    return MakeError(Errc::kIo, "{} holds '{}', not a period",
                     (guests / "cpu.cfs_period_us").string(), period_text);
  }
  const std::int64_t quota =
      std::max<std::int64_t>(kMinQuotaUs, std::llround(cpus * static_cast<double>(period)));
  return WriteControl(guests / "cpu.cfs_quota_us", std::to_string(quota));
}

Status MoveIntoCgroup(const fs::path& dir, pid_t pid) {
  return WriteControl(dir / "cgroup.procs", std::to_string(pid));
}

Status KillCgroupTree(const fs::path& dir, std::chrono::milliseconds timeout) {
  const auto deadline = DeadlineAfter(timeout);
  for (;;) {
    ROAM_ASSIGN_OR_RETURN(const std::vector<pid_t> pids, CgroupProcesses(dir));
    if (pids.empty()) return Ok();
    if (std::chrono::steady_clock::now() >= deadline) {
      return MakeError(Errc::kTimeout, "{} process(es) still in {} after {} ms of SIGKILL (pid {})",
                       pids.size(), dir.string(), timeout.count(), pids.front());
    }
    // A pid listed here is in the cgroup, so it is not recycled until it
    // leaves it by dying, and dying removes it from the list: killing a
    // listed pid never hits a stranger, short of a race measured in pids.
    for (const pid_t pid : pids) kill(pid, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Status RemoveCgroupTree(const fs::path& dir) {
  ROAM_ASSIGN_OR_RETURN(const std::vector<fs::path> dirs, Subtree(dir));
  for (const fs::path& cgroup : dirs) {
    // A cgroup directory holds only kernel control files, so rmdir (not
    // unlink of each file) removes it.
    if (rmdir(cgroup.c_str()) != 0 && errno != ENOENT) {
      const int err = errno;
      if (err == EBUSY) {
        return Error(Errc::kUnavailable, err,
                     fmt::format("rmdir {}: still holds processes or cgroups", cgroup.string()));
      }
      return ErrnoError(err, "rmdir {}", cgroup.string());
    }
  }
  return Ok();
}

}  // namespace roam::launch
