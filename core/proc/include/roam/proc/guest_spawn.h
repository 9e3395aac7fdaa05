// Starting a pool guest: an unmodified program, run as the user who asked
// for it, in a PID namespace of its own behind roam's small init
// (core/ckpt/pid_namespace.h), so that its pid and tids stay free wherever it
// migrates to. roamd calls it for `roam run`.
//
// What the guest gets, in this order, before execve: its cgroups (the
// caller writes the guest's pid into each cgroup.procs while the guest
// waits: cgroupfs reads a written pid in the writer's pid namespace), a new
// session (no controlling terminal), default dispositions for every signal,
// spec.stdio as fds 0-2 and no other fd (everything else is close-on-exec),
// the umask, the rlimits, the identity, the working directory (entered as
// the user, so never one only root may enter), an empty signal mask, then
// the environment exactly as given. The first failing step is reported back
// through a close-on-exec pipe, and nothing is left running or unreaped.
//
// Processes and reaping: the guest and its init are both children of the
// calling thread. The caller waits for the guest (waitpid or the pidfd)
// first, then reaps the init, which exits on its own once the guest is gone
// (the kernel keeps a dying init until every process of its namespace has
// been reaped, so the order matters for a blocking waitpid on the init).
//
// When the caller goes: the init has PR_SET_PDEATHSIG(SIGKILL), armed before
// SpawnGuest returns. The kernel sends that when the init's parent *thread*
// exits (its children list is per thread; pthread_exit is enough while the
// rest of the process goes on) or when the whole process dies, SIGKILL
// included; the init's death makes the kernel SIGKILL everything in its
// namespace. So a daemon killed with SIGKILL leaves no guest running. Call
// SpawnGuest from a thread that lives as long as the guests should (roamd's
// main or event-loop thread), never from a short-lived worker. (Without the
// signal both would run on, reparented to the nearest subreaper or pid 1:
// the guest is the caller's child, not the init's.) The dead guest is then
// reaped by whoever inherits it.
//
// Needs CAP_SYS_ADMIN (the PID namespace); without it kPermissionDenied
// naming it, and nothing is started. As root without CAP_SYS_RESOURCE a
// limit above the current hard limit is clamped to it, never an error.
//
// Thread-safety: SpawnGuest may be called from any thread, and concurrently
// from several: it changes the calling thread's pid_for_children for the
// duration of the call only and blocks every signal in that thread while it
// clones. The child makes only system calls (raw, or async-signal-safe
// wrappers) until execve: no allocation, no locks, so a multi-threaded caller
// is safe. (Concurrent spawns may hold each other's close-on-exec pipe ends
// until the other child's execve: a delay, never a deadlock.)
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <array>
#include <string>
#include <vector>

#include "roam/base/error.h"
#include "roam/base/unique_fd.h"

namespace roam::proc {

struct ResourceLimit {
  int resource;  // RLIMIT_*
  rlim_t cur;
  rlim_t max;
};

inline constexpr unsigned kUnsetId = static_cast<unsigned>(-1);

struct GuestSpec {
  // argv[0] is looked up in the PATH of `env` (default
  // "/usr/local/bin:/usr/bin:/bin") unless it holds a '/'. Not empty.
  std::vector<std::string> argv;
  std::vector<std::string> env;  // "NAME=value": the whole environment
  std::string cwd;               // absolute
  mode_t umask = 022;
  // The caller's identity, required: left unset it is an error, never root
  // by default (and -1 would mean "unchanged" to setresuid). Set as given
  // (setgroups, setgid, setuid) unless the spawner already is that uid and
  // gid and not root (a non-root daemon may only run its own programs).
  uid_t uid = kUnsetId;
  gid_t gid = kUnsetId;
  std::vector<gid_t> groups;
  std::vector<ResourceLimit> limits;     // the caller's rlimits
  std::array<int, 3> stdio{-1, -1, -1};  // become fds 0, 1, 2; must be open
  // cgroup.procs files (cgroup v1: one per hierarchy) the guest joins before
  // it execs; may be empty. Failing to join one fails the spawn.
  std::vector<std::string> cgroup_procs;
};

struct SpawnedGuest {
  pid_t pid = -1;       // in the caller's pid namespace; the caller's child
  pid_t ns_pid = -1;    // in the guest's own pid namespace (small: 2)
  pid_t init_pid = -1;  // the namespace's init, the caller's child; reap it after the guest
  UniqueFd pidfd;       // the guest's, close-on-exec
};

// Starts the guest. Errors: kInvalidArgument (empty argv, a relative cwd, a
// stdio fd that is not open, no uid or gid), kPermissionDenied (no CAP_SYS_ADMIN; EACCES or
// EPERM from a step), kNotFound (no such program or cwd), each a one-line
// message such as "cannot run 'nosuchprog'" with the errno kept
// (Error::ToString adds ": No such file or directory (ENOENT)").
Result<SpawnedGuest> SpawnGuest(const GuestSpec& spec);

// Moves process `pid` (in the caller's pid namespace: cgroupfs reads a
// written pid in the writer's) into the cgroup whose cgroup.procs file is
// `cgroup_procs`. The kernel's answer to the write is the error (ESRCH for a
// gone pid), with the errno kept.
Status JoinCgroup(const std::string& cgroup_procs, pid_t pid);

}  // namespace roam::proc
