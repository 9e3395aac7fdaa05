// Small per-process facts from /proc/PID that capture records besides the
// memory map, status and fds: threads, children, the auxiliary vector,
// exe/cwd, comm, personality and namespaces.
//
// Thread-safety: plain functions; safe from any thread. Each result is a
// snapshot, only stable while the target is frozen.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt::procfs {

// The tids of thread group `pid` (/proc/PID/task): `pid` itself, the
// leader, first, the others ascending.
Result<std::vector<pid_t>> ListThreads(pid_t pid);

// The children of every thread of `pid` (/proc/PID/task/*/children),
// ascending. Errc::kUnsupported on a kernel without CONFIG_PROC_CHILDREN.
Result<std::vector<pid_t>> ListChildren(pid_t pid);

// The raw auxiliary vector: (type, value) pairs up to and including the
// AT_NULL pair, as one flat array. No AT_NULL is Errc::kCorrupt.
Result<std::vector<uint64_t>> ParseAuxv(std::string_view bytes);
Result<std::vector<uint64_t>> ReadAuxv(pid_t pid);

// The target of the link /proc/PID/name ("exe", "cwd", "root").
Result<std::string> ReadLink(pid_t pid, std::string_view name);

// The task's comm, without the trailing newline.
Result<std::string> ReadComm(pid_t pid);

// personality(2) flags (/proc/PID/personality; needs ptrace access).
Result<uint32_t> ReadPersonality(pid_t pid);

// (name, inode) for each of cgroup ipc mnt net pid time user uts, in that
// order, from readlink /proc/PID/ns/NAME ("net:[4026531840]"). A namespace
// this kernel does not have is left out.
Result<std::vector<std::pair<std::string, uint64_t>>> ReadNamespaces(pid_t pid);

}  // namespace roam::ckpt::procfs
