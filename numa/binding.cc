#include "roam/numa/binding.h"

#include <linux/mempolicy.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "roam/base/file.h"

namespace roam::numa {
namespace {

constexpr int kNodeBits = 1024;  // SelfBinding::nodes_ holds this many bits
static_assert(sizeof(SelfBinding::NodeMask) * 8 == kNodeBits);
// The kernel reads maxnode - 1 bits of a nodemask (set_mempolicy(2), BUGS).
constexpr std::uint64_t kMaxNode = kNodeBits + 1;
// A process that keeps creating threads faster than we scan them is refused
// after this many passes over /proc/PID/task.
constexpr int kMaxThreadScans = 100;

struct CheckedPlacement {
  bool numa = false;   // the kernel has NUMA support (/sys/devices/system/node)
  CpuSet other_nodes;  // online nodes other than the placement's
};

Result<CpuSet> ReadList(const char* path) {
  ROAM_ASSIGN_OR_RETURN(std::string text, ReadFile(path, 1 << 16));
  auto list = CpuSet::Parse(text);
  if (!list.has_value()) return std::move(list).error().WithContext(path);
  return list;
}

// The check every binding makes before it changes anything.
Result<CheckedPlacement> Check(const Placement& p) {
  const std::string what = fmt::format("bind to {}", p.ToString());
  if (p.cpus.empty()) return MakeError(Errc::kInvalidArgument, "{}: no CPUs", what);
  auto online = ReadList("/sys/devices/system/cpu/online");
  if (!online.has_value()) return std::move(online).error().WithContext(what);
  if (const CpuSet missing = p.cpus.Minus(*online); !missing.empty()) {
    return MakeError(Errc::kInvalidArgument, "{}: CPU {} is not on this machine (online: {})", what,
                     missing.ToString(), online->ToString());
  }
  if (p.cpus.cpus().back() >= CPU_SETSIZE) {
    return MakeError(Errc::kUnsupported, "{}: CPU numbers above {} are not supported", what,
                     CPU_SETSIZE - 1);
  }
  CheckedPlacement checked;
  auto nodes = ReadList("/sys/devices/system/node/online");
  if (!nodes.has_value()) {
    if (nodes.error().code() != Errc::kNotFound) return std::move(nodes).error().WithContext(what);
    if (p.numa_node != 0) {
      return MakeError(Errc::kInvalidArgument,
                       "{}: NUMA node {} is not on this machine (its kernel has no NUMA support)",
                       what, p.numa_node);
    }
    return checked;
  }
  checked.numa = true;
  if (!nodes->contains(p.numa_node)) {
    return MakeError(Errc::kInvalidArgument, "{}: NUMA node {} is not on this machine (online: {})",
                     what, p.numa_node, nodes->ToString());
  }
  if (nodes->cpus().back() >= kNodeBits) {
    return MakeError(Errc::kUnsupported, "{}: NUMA node numbers above {} are not supported", what,
                     kNodeBits - 1);
  }
  checked.other_nodes = nodes->Minus(CpuSet{p.numa_node});
  return checked;
}

cpu_set_t CpuMask(const CpuSet& cpus) {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  for (int cpu : cpus.cpus()) CPU_SET(cpu, &mask);
  return mask;
}

SelfBinding::NodeMask ToNodeMask(const CpuSet& nodes) {
  SelfBinding::NodeMask mask{};
  constexpr int kBits = sizeof(mask[0]) * 8;
  for (int node : nodes.cpus()) mask[node / kBits] |= std::uint64_t{1} << (node % kBits);
  return mask;
}

// The thread ids of process `pid` now.
Result<std::vector<pid_t>> Threads(pid_t pid) {
  const std::string dir = fmt::format("/proc/{}/task", pid);
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) {
    if (ec.value() == ENOENT) {
      return MakeError(Errc::kNotFound, "pid {}: no such process", pid);
    }
    return ErrnoError(ec.value(), "list the threads of pid {} ({})", pid, dir);
  }
  std::vector<pid_t> tids;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    pid_t tid = 0;
    const auto [end, parse_ec] = std::from_chars(name.data(), name.data() + name.size(), tid);
    if (parse_ec == std::errc() && end == name.data() + name.size()) tids.push_back(tid);
  }
  // The process may exit while we read; an empty or cut-short listing then
  // just binds fewer threads, and the next scan finds none.
  return tids;
}

Status BindThreads(pid_t pid, const Placement& placement) {
  const cpu_set_t mask = CpuMask(placement.cpus);
  std::set<pid_t> bound;
  for (int scan = 0; scan < kMaxThreadScans; ++scan) {
    ROAM_ASSIGN_OR_RETURN(std::vector<pid_t> tids, Threads(pid));
    bool found_new = false;
    for (pid_t tid : tids) {
      if (bound.contains(tid)) continue;
      found_new = true;
      bound.insert(tid);
      if (sched_setaffinity(tid, sizeof mask, &mask) != 0) {
        if (errno == ESRCH) continue;  // the thread has exited
        return ErrnoError(errno, "bind thread {} of pid {} to CPUs {}", tid, pid,
                          placement.cpus.ToString());
      }
      cpu_set_t granted;
      if (sched_getaffinity(tid, sizeof granted, &granted) != 0) {
        if (errno == ESRCH) continue;
        return ErrnoError(errno, "read the CPU affinity of thread {} of pid {}", tid, pid);
      }
      if (!CPU_EQUAL(&granted, &mask)) {
        return MakeError(Errc::kInvalidArgument,
                         "bind thread {} of pid {} to CPUs {}: its cgroup cpuset allows fewer", tid,
                         pid, placement.cpus.ToString());
      }
    }
    if (!found_new) {
      if (bound.empty()) {
        return MakeError(Errc::kNotFound, "pid {}: no such process", pid);
      }
      return Ok();
    }
  }
  return MakeError(Errc::kUnavailable, "bind pid {}: it kept creating threads through {} scans",
                   pid, kMaxThreadScans);
}

}  // namespace

Status BindProcess(pid_t pid, const Placement& placement, BindMode mode) {
  if (pid <= 0) return MakeError(Errc::kInvalidArgument, "bind pid {}: not a process id", pid);
  ROAM_ASSIGN_OR_RETURN(const CheckedPlacement checked, Check(placement));
  ROAM_TRY(BindThreads(pid, placement));
  if (!checked.numa) {
    if (mode == BindMode::kBestEffort) return Ok();
    return MakeError(Errc::kUnsupported,
                     "bind the memory of pid {} to NUMA node {}: this kernel has no NUMA support",
                     pid, placement.numa_node);
  }
  if (checked.other_nodes.empty()) return Ok();  // one node: every page is on it already
  const auto from = ToNodeMask(checked.other_nodes);
  const auto to = ToNodeMask(CpuSet{placement.numa_node});
  // glibc has no wrapper for migrate_pages (libnuma's numaif.h has one).
  const auto stayed = syscall(SYS_migrate_pages, pid, kMaxNode, from.data(), to.data());
  if (mode == BindMode::kBestEffort) return Ok();
  if (stayed < 0) {
    return ErrnoError(errno, "move the pages of pid {} from NUMA nodes {} to node {}", pid,
                      checked.other_nodes.ToString(), placement.numa_node);
  }
  if (stayed > 0) {
    return MakeError(Errc::kResourceExhausted,
                     "move the pages of pid {} to NUMA node {}: {} pages could not be moved", pid,
                     placement.numa_node, stayed);
  }
  return Ok();
}

Result<SelfBinding> SelfBinding::Prepare(const Placement& placement, BindMode mode) {
  ROAM_ASSIGN_OR_RETURN(const CheckedPlacement checked, Check(placement));
  if (!checked.numa && mode == BindMode::kStrict) {
    return MakeError(Errc::kUnsupported,
                     "bind memory to NUMA node {}: this kernel has no NUMA support",
                     placement.numa_node);
  }
  SelfBinding binding;
  binding.placement_ = placement;
  binding.mode_ = mode;
  binding.cpus_ = CpuMask(placement.cpus);
  binding.bind_memory_ = checked.numa;
  binding.nodes_ = ToNodeMask(CpuSet{placement.numa_node});
  return binding;
}

SelfBinding::Failure SelfBinding::Apply() const noexcept {
  if (sched_setaffinity(0, sizeof cpus_, &cpus_) != 0) return {errno, "sched_setaffinity"};
  cpu_set_t granted;
  if (sched_getaffinity(0, sizeof granted, &granted) != 0) return {errno, "sched_getaffinity"};
  if (!CPU_EQUAL(&granted, &cpus_)) {
    return {EINVAL, "sched_setaffinity (the cgroup cpuset allows fewer CPUs)"};
  }
  if (!bind_memory_) return {};
  const int policy = mode_ == BindMode::kStrict ? MPOL_BIND : MPOL_PREFERRED;
  if (syscall(SYS_set_mempolicy, policy, nodes_.data(), kMaxNode) != 0 &&
      mode_ == BindMode::kStrict) {
    return {errno, "set_mempolicy(MPOL_BIND)"};
  }
  return {};
}

Status BindSelf(const Placement& placement, BindMode mode) {
  ROAM_ASSIGN_OR_RETURN(const SelfBinding binding, SelfBinding::Prepare(placement, mode));
  if (const SelfBinding::Failure failure = binding.Apply(); failure.call != nullptr) {
    return ErrnoError(failure.sys_errno, "bind this process to {}: {}", placement.ToString(),
                      failure.call);
  }
  return Ok();
}

}  // namespace roam::numa
