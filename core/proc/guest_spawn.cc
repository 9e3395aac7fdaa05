#include "roam/proc/guest_spawn.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <string_view>
#include <utility>

#include "core/ckpt/pid_namespace.h"
#include "core/ckpt/procfs/procfs.h"

namespace roam::proc {
namespace {

constexpr std::string_view kDefaultPath = "/usr/local/bin:/usr/bin:/bin";

// The step of the child that failed, sent back with its errno.
enum class Step : int {
  kSetsid = 1,
  kStdio,
  kCloseFds,
  kSetgroups,
  kSetgid,
  kSetuid,
  kChdir,
  kExec,
};

struct Report {
  Step step;
  int err;
};

// Everything the child needs, laid out before the clone: from there on the
// child may not allocate (another thread of the caller may hold the heap's
// lock, copied locked into the child) nor call into glibc's thread-aware
// code (setuid and friends would signal the caller's threads): raw system
// calls and plain wrappers only.
struct Plan {
  std::vector<std::string> candidates;  // where argv[0] may be, in PATH order
  std::vector<char*> candidate_ptrs;
  std::vector<char*> argv;  // null-terminated
  std::vector<char*> envp;  // null-terminated
  const GuestSpec* spec = nullptr;
  bool set_identity = true;
};

std::vector<char*> Pointers(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

Plan MakePlan(const GuestSpec& spec) {
  Plan plan;
  plan.spec = &spec;
  const std::string& program = spec.argv[0];
  if (program.find('/') != std::string::npos) {
    plan.candidates.push_back(program);
  } else {
    std::string_view path = kDefaultPath;
    for (const std::string& e : spec.env) {
      if (e.starts_with("PATH=")) path = std::string_view{e}.substr(5);
    }
    // As execvp: an empty entry is the working directory.
    for (std::size_t start = 0;;) {
      const std::size_t end = std::min(path.find(':', start), path.size());
      const std::string_view dir = path.substr(start, end - start);
      plan.candidates.push_back(dir.empty() ? program : std::string(dir) + "/" + program);
      if (end == path.size()) break;
      start = end + 1;
    }
  }
  plan.candidate_ptrs = Pointers(plan.candidates);
  plan.argv = Pointers(spec.argv);
  plan.envp = Pointers(spec.env);
  plan.set_identity = !(getuid() == spec.uid && getgid() == spec.gid && spec.uid != 0);
  return plan;
}

[[noreturn]] void Fail(int report_fd, Step step, int err) {
  const Report report{step, err};
  syscall(SYS_write, report_fd, &report, sizeof(report));
  _exit(127);
}

// The guest between the clone and execve. Signals are blocked (the caller
// blocked them for the clone) and handlers are cleared (CLONE_CLEAR_SIGHAND).
[[noreturn]] void RunChild(const Plan& plan, int go_fd, int report_fd) {
  const GuestSpec& spec = *plan.spec;
  // The caller writes our pid into the cgroups first; EOF: it gave up.
  char go = 0;
  long n = 0;
  do {
    n = syscall(SYS_read, go_fd, &go, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1) _exit(127);

  if (syscall(SYS_setsid) < 0) Fail(report_fd, Step::kSetsid, errno);
  // CLONE_CLEAR_SIGHAND reset the handled signals; ignored ones stay ignored
  // across execve unless reset here. (glibc refuses its own two internal
  // signals, which it never ignores.)
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);
  }

  // Copies above 2 first, so that a stdio fd that already is 0, 1 or 2 is
  // not overwritten before it is used.
  std::array<int, 3> copies{};
  for (std::size_t i = 0; i < copies.size(); ++i) {
    copies[i] = static_cast<int>(syscall(SYS_fcntl, spec.stdio[i], F_DUPFD_CLOEXEC, 3));
    if (copies[i] < 0) Fail(report_fd, Step::kStdio, errno);
  }
  for (std::size_t i = 0; i < copies.size(); ++i) {
    if (syscall(SYS_dup2, copies[i], static_cast<int>(i)) < 0) {
      Fail(report_fd, Step::kStdio, errno);
    }
  }
  // Every other fd closes at execve, the report pipe with them: it reports
  // a failure until then and EOF on success.
  if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
    Fail(report_fd, Step::kCloseFds, errno);
  }

  syscall(SYS_umask, spec.umask);
  // Root here may lack CAP_SYS_RESOURCE: a hard limit above the current one
  // cannot be raised, so it is clamped; lowering always works. A limit that
  // still does not apply is left as it is, never an error.
  for (const ResourceLimit& l : spec.limits) {
    rlimit want{l.cur, l.max};
    if (setrlimit(l.resource, &want) == 0) continue;
    rlimit now{};
    if (getrlimit(l.resource, &now) != 0) continue;
    want.rlim_max = std::min(want.rlim_max, now.rlim_max);
    want.rlim_cur = std::min(want.rlim_cur, want.rlim_max);
    (void)setrlimit(l.resource, &want);
  }

  if (plan.set_identity) {
    if (syscall(SYS_setgroups, spec.groups.size(), spec.groups.data()) < 0) {
      Fail(report_fd, Step::kSetgroups, errno);
    }
    if (syscall(SYS_setresgid, spec.gid, spec.gid, spec.gid) < 0) {
      Fail(report_fd, Step::kSetgid, errno);
    }
    if (syscall(SYS_setresuid, spec.uid, spec.uid, spec.uid) < 0) {
      Fail(report_fd, Step::kSetuid, errno);
    }
  }
  // After the identity change, so that the user cannot start in a directory
  // only root may enter.
  if (syscall(SYS_chdir, spec.cwd.c_str()) < 0) Fail(report_fd, Step::kChdir, errno);

  const std::uint64_t none = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof(none));
  // As execvp: go on past a directory without the program or one we may not
  // search, and report EACCES if some candidate was not executable.
  bool denied = false;
  int err = ENOENT;
  for (char* const* candidate = plan.candidate_ptrs.data(); *candidate != nullptr; ++candidate) {
    syscall(SYS_execve, *candidate, plan.argv.data(), plan.envp.data());
    err = errno;
    if (err == EACCES) {
      denied = true;
    } else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
               err != ETIMEDOUT) {
      break;
    }
  }
  Fail(report_fd, Step::kExec, denied && (err == ENOENT || err == ENOTDIR) ? EACCES : err);
}

Error StepError(const GuestSpec& spec, const Report& report) {
  const std::string& program = spec.argv[0];
  switch (report.step) {
    case Step::kExec:
      return ErrnoError(report.err, "cannot run '{}'", program);
    case Step::kChdir:
      return ErrnoError(report.err, "cannot run '{}': working directory {}", program, spec.cwd);
    case Step::kSetgroups:
      return ErrnoError(report.err, "cannot run '{}': setgroups", program);
    case Step::kSetgid:
      return ErrnoError(report.err, "cannot run '{}': setgid {}", program, spec.gid);
    case Step::kSetuid:
      return ErrnoError(report.err, "cannot run '{}': setuid {}", program, spec.uid);
    case Step::kSetsid:
      return ErrnoError(report.err, "cannot run '{}': setsid", program);
    case Step::kStdio:
      return ErrnoError(report.err, "cannot run '{}': stdio", program);
    case Step::kCloseFds:
      return ErrnoError(report.err, "cannot run '{}': close_range", program);
  }
  return MakeError(Errc::kInternal, "cannot run '{}': step {} failed", program,
                   static_cast<int>(report.step));
}

// Kills and reaps the guest unless it was handed over. Declared after the
// PidNamespace so that it goes first: a dying init waits for this reap.
class GuestGuard final {
 public:
  GuestGuard(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  GuestGuard(const GuestGuard&) = delete;
  GuestGuard& operator=(const GuestGuard&) = delete;
  ~GuestGuard() {
    if (pid_ <= 0) return;
    syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    while (waitpid(pid_, nullptr, __WALL) < 0 && errno == EINTR) {
    }
  }
  UniqueFd Release() {
    pid_ = -1;
    return std::move(pidfd_);
  }

 private:
  pid_t pid_;
  UniqueFd pidfd_;
};

Status Validate(const GuestSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty()) {
    return MakeError(Errc::kInvalidArgument, "no program to run (empty argv)");
  }
  if (spec.uid == kUnsetId || spec.gid == kUnsetId) {
    return MakeError(Errc::kInvalidArgument, "cannot run '{}': no uid or gid given", spec.argv[0]);
  }
  if (!spec.cwd.starts_with('/')) {
    return MakeError(Errc::kInvalidArgument,
                     "cannot run '{}': working directory '{}' is not absolute", spec.argv[0],
                     spec.cwd);
  }
  for (std::size_t i = 0; i < spec.stdio.size(); ++i) {
    if (spec.stdio[i] < 0 || fcntl(spec.stdio[i], F_GETFD) < 0) {
      return MakeError(Errc::kInvalidArgument, "cannot run '{}': stdio fd {} ({}) is not open",
                       spec.argv[0], i, spec.stdio[i]);
    }
  }
  return Ok();
}

}  // namespace

Status JoinCgroup(const std::string& cgroup_procs, pid_t pid) {
  UniqueFd fd(open(cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(errno, "join cgroup: open {}", cgroup_procs);
  const std::string text = std::to_string(pid) + "\n";
  ssize_t n = 0;
  do {
    n = write(fd.get(), text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(text.size())) {
    return ErrnoError(errno, "join cgroup: write pid {} to {}", pid, cgroup_procs);
  }
  return Ok();
}

Result<SpawnedGuest> SpawnGuest(const GuestSpec& spec) {
  ROAM_TRY(Validate(spec));
  const Plan plan = MakePlan(spec);
  ROAM_ASSIGN_OR_RETURN(ckpt::PidNamespace ns,
                        ckpt::PidNamespace::Create(ckpt::InitLifetime::kEndsWithCreatorThread));

  std::array<int, 2> go{};
  if (pipe2(go.data(), O_CLOEXEC) != 0) return ErrnoError(errno, "pipe for the guest");
  UniqueFd go_read(go[0]);
  UniqueFd go_write(go[1]);
  std::array<int, 2> report{};
  if (pipe2(report.data(), O_CLOEXEC) != 0) return ErrnoError(errno, "pipe for the guest");
  UniqueFd report_read(report[0]);
  UniqueFd report_write(report[1]);

  int pidfd = -1;
  const auto clone_guest = [&]() -> Result<pid_t> {
    clone_args args{};
    args.flags = CLONE_PIDFD | CLONE_CLEAR_SIGHAND;
    args.pidfd = reinterpret_cast<std::uint64_t>(&pidfd);
    args.exit_signal = SIGCHLD;
    // No signal may run a handler of ours in the child before it has reset
    // them; the child unblocks everything just before execve.
    sigset_t all;
    sigset_t old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    const long pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid == 0) RunChild(plan, go_read.get(), report_write.get());
    const int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (pid < 0) return ErrnoError(err, "clone3 for '{}'", spec.argv[0]);
    return static_cast<pid_t>(pid);
  };
  ROAM_ASSIGN_OR_RETURN(const pid_t pid, ns.SpawnInside(clone_guest));
  GuestGuard guard(pid, pidfd);
  go_read.reset();
  report_write.reset();

  ROAM_ASSIGN_OR_RETURN(const ckpt::procfs::Status status, ckpt::procfs::ReadStatus(pid));
  if (status.ns_pid.size() < 2) {
    return MakeError(Errc::kInternal, "guest {} is not in a pid namespace of its own", pid);
  }
  const pid_t ns_pid = status.ns_pid.back();
  // cgroupfs reads a pid in the writer's namespace: ours, not the guest's.
  for (const std::string& procs : spec.cgroup_procs) ROAM_TRY(JoinCgroup(procs, pid));
  ROAM_TRY(ns.Serve(ns_pid));
  const char go_byte = 1;
  if (write(go_write.get(), &go_byte, 1) != 1) {
    return ErrnoError(errno, "start guest {}", pid);
  }
  go_write.reset();

  Report failed{};
  ssize_t n = 0;
  do {
    n = read(report_read.get(), &failed, sizeof(failed));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError(errno, "read the exec report of guest {}", pid);
  if (n == static_cast<ssize_t>(sizeof(failed))) return StepError(spec, failed);
  if (n != 0) return MakeError(Errc::kInternal, "short exec report from guest {}", pid);

  SpawnedGuest spawned;
  spawned.pid = pid;
  spawned.ns_pid = ns_pid;
  spawned.pidfd = guard.Release();
  spawned.init_pid = ns.Release();
  return spawned;
}

}  // namespace roam::proc
