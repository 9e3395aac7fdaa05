// A local node's CPU share as cgroup v1 directories under the cpu
// controller's mount (this machine has cgroup v1 controllers; cgroup2 is
// mounted without any):
//
//   <cpu mount>/roam.<pool>/            one per local pool
//   <cpu mount>/roam.<pool>/nI/         the node's roamd, no quota
//   <cpu mount>/roam.<pool>/nI/guests/  the node's guests: cpu.cfs_quota_us
//                                        = cpus * cpu.cfs_period_us
//
// The quota sits on guests/ only, so the migration work roamd does for its
// guests is never throttled by the capacity the node offers them. In v1 a
// child's quota is not bounded by a parent that has none.
//
// Everything here works from paths alone, so that `roam pool down` can clean
// up after a keeper that was SIGKILLed.
//
// Thread-safety: free functions without shared state; two callers working on
// one directory tree race as the file system lets them (the kill loop
// tolerates processes that vanish under it).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string_view>

#include "roam/base/error.h"

namespace roam::launch {

// The directory the v1 cpu controller is mounted on (from /proc/self/mounts;
// "/sys/fs/cgroup/cpu" here, "/sys/fs/cgroup/cpu,cpuacct" on many systems).
// kUnsupported when no v1 hierarchy carries the cpu controller.
Result<std::filesystem::path> CpuCgroupMount();

// Creates `dir` (its parent must exist or be creatable) and `dir`/guests,
// the latter with a CFS quota of `cpus` CPUs (cpus > 0; at least the
// kernel's 1 ms minimum quota). An existing `dir` is reused.
Status CreateNodeCgroup(const std::filesystem::path& dir, double cpus);

// Moves process `pid` (all its threads) into the cgroup `dir`.
Status MoveIntoCgroup(const std::filesystem::path& dir, pid_t pid);

// SIGKILLs every process in `dir` and below until none is left, or fails
// with kTimeout after `timeout` naming the survivors. A process forked while
// we kill lands in the same cgroup and is caught by the next round.
Status KillCgroupTree(const std::filesystem::path& dir, std::chrono::milliseconds timeout);

// Removes `dir` and every cgroup below it, leaves first (rmdir of a cgroup
// that holds a cgroup or a process fails with EBUSY). An absent `dir` is
// not an error.
Status RemoveCgroupTree(const std::filesystem::path& dir);

}  // namespace roam::launch
