#include "core/ckpt/pid_namespace.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <utility>

#include "core/ckpt/procfs/procfs.h"
#include "roam/base/check.h"

namespace roam::ckpt {
namespace {

constexpr int kCapSysAdmin = 21;

// What the init passes on to the process it serves.
constexpr std::array<int, 8> kForwardedSignals = {SIGHUP,  SIGINT,  SIGQUIT, SIGTERM,
                                                  SIGUSR1, SIGUSR2, SIGCONT, SIGWINCH};

// The kernel's signal set (8 bytes on Linux), for the raw syscalls below.
constexpr std::uint64_t SignalBit(int sig) { return std::uint64_t{1} << (sig - 1); }

void ReapChildren() {
  while (syscall(SYS_wait4, -1, nullptr, WNOHANG | __WALL, nullptr) > 0) {
  }
}

// pid 1 of the namespace. It runs in a clone3 child of a restorer that may
// have other threads (a lock they held stays held here), so from the clone on
// only raw system calls: no allocation, no formatting, no logging. Every
// signal is blocked (the creator blocked them before the clone): the ones it
// cares about arrive through a signalfd, the rest wait unread. A signal sent
// to pid 1 from inside its namespace with no handler would be dropped; a
// blocked one is queued, so forwarding works from anywhere.
[[noreturn]] void RunInit(int control, InitLifetime lifetime) {
  if (lifetime == InitLifetime::kEndsWithCreatorThread) {
    // Armed before anything else; the creator waits for the byte below, so
    // its thread cannot have exited unseen in between.
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    const char armed = 1;
    if (syscall(SYS_sendto, control, &armed, 1, MSG_NOSIGNAL, nullptr, 0) != 1) {
      syscall(SYS_exit_group, 0);
    }
  }
  // Hold no file of the restorer's: its open files, its stdio (a reader
  // waiting for EOF), its cwd. (The image's page file and the transport's
  // registered memory are MADV_DONTFORK, so they never reach here; the
  // restorer's other memory does, copy-on-write, for as long as the init
  // lives: a daemon keeps its heap trimmed.)
  if (control > 0) syscall(SYS_close_range, 0, control - 1, 0);
  syscall(SYS_close_range, control + 1, ~0U, 0);
  syscall(SYS_chdir, "/");
  syscall(SYS_prctl, PR_SET_NAME, "roam-init", 0, 0, 0);

  // The creator names the process once it runs; EOF means it gave up.
  pid_t pid = 0;
  long n = 0;
  do {
    n = syscall(SYS_recvfrom, control, &pid, sizeof(pid), 0, nullptr, nullptr);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<long>(sizeof(pid)) || pid <= 1) syscall(SYS_exit_group, 0);
  syscall(SYS_close, control);

  // The pidfd turns readable when the process has exited (it was already
  // gone, and maybe reaped by its parent, if pidfd_open fails).
  const long pidfd = syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) syscall(SYS_exit_group, 0);
  std::uint64_t mask = SignalBit(SIGCHLD);
  for (const int sig : kForwardedSignals) mask |= SignalBit(sig);
  const long sigfd = syscall(SYS_signalfd4, -1, &mask, sizeof(mask), SFD_CLOEXEC);
  if (sigfd < 0) syscall(SYS_exit_group, 1);

  for (;;) {
    pollfd fds[2] = {{static_cast<int>(pidfd), POLLIN, 0}, {static_cast<int>(sigfd), POLLIN, 0}};
    if (syscall(SYS_ppoll, fds, 2, nullptr, nullptr, 0) < 0) continue;
    if ((fds[1].revents & POLLIN) != 0) {
      signalfd_siginfo info{};
      if (syscall(SYS_read, sigfd, &info, sizeof(info)) == static_cast<long>(sizeof(info))) {
        if (info.ssi_signo == SIGCHLD) {
          ReapChildren();
        } else {
          syscall(SYS_pidfd_send_signal, pidfd, info.ssi_signo, nullptr, 0);
        }
      }
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      // Exiting kills the rest of the namespace (orphans the process left).
      ReapChildren();
      syscall(SYS_exit_group, 0);
    }
  }
}

Result<bool> HasCapSysAdmin() {
  ROAM_ASSIGN_OR_RETURN(const procfs::Status self, procfs::ReadStatus(getpid()));
  return ((self.cap_eff >> kCapSysAdmin) & 1) != 0;
}

}  // namespace

Result<PidNamespace> PidNamespace::Create(InitLifetime lifetime) {
  ROAM_ASSIGN_OR_RETURN(const bool may, HasCapSysAdmin());
  if (!may) {
    return Error(Errc::kPermissionDenied, EPERM,
                 "a new pid namespace needs CAP_SYS_ADMIN (run as root)");
  }
  // A socket rather than a pipe: a write to an init that died must fail, not
  // raise SIGPIPE here.
  int control[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, control) != 0) {
    return ErrnoError(errno, "socketpair for the pid namespace init");
  }
  // The init starts with every signal blocked, so none can reach it before
  // its signalfd is in place.
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  clone_args args{};
  args.flags = CLONE_NEWPID | CLONE_PIDFD;
  args.pidfd = reinterpret_cast<std::uint64_t>(&pidfd);
  args.exit_signal = SIGCHLD;
  const long pid = syscall(SYS_clone3, &args, sizeof(args));
  if (pid == 0) RunInit(control[1], lifetime);
  const int err = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  close(control[1]);
  if (pid < 0) {
    close(control[0]);
    if (err == EPERM) {
      return Error(Errc::kPermissionDenied, err,
                   "a new pid namespace needs CAP_SYS_ADMIN (run as root)");
    }
    return ErrnoError(err, "clone3 CLONE_NEWPID for the pid namespace init");
  }
  PidNamespace created(static_cast<pid_t>(pid), pidfd, control[0]);
  if (lifetime == InitLifetime::kEndsWithCreatorThread) {
    char armed = 0;
    ssize_t n = 0;
    do {
      n = recv(created.control_, &armed, 1, 0);
    } while (n < 0 && errno == EINTR);
    if (n != 1) {
      return ErrnoError(n < 0 ? errno : EIO, "wait for init {} to arm its parent-death signal",
                        created.init_pid_);
    }
  }
  return created;
}

PidNamespace::PidNamespace(PidNamespace&& other) noexcept
    : init_pid_(std::exchange(other.init_pid_, -1)),
      init_pidfd_(std::exchange(other.init_pidfd_, -1)),
      control_(std::exchange(other.control_, -1)) {}

PidNamespace& PidNamespace::operator=(PidNamespace&& other) noexcept {
  if (this != &other) {
    KillAndReap();
    init_pid_ = std::exchange(other.init_pid_, -1);
    init_pidfd_ = std::exchange(other.init_pidfd_, -1);
    control_ = std::exchange(other.control_, -1);
  }
  return *this;
}

PidNamespace::~PidNamespace() { KillAndReap(); }

void PidNamespace::KillAndReap() {
  if (init_pid_ > 0) {
    syscall(SYS_pidfd_send_signal, init_pidfd_, SIGKILL, nullptr, 0);
    while (waitpid(init_pid_, nullptr, __WALL) < 0 && errno == EINTR) {
    }
    init_pid_ = -1;
  }
  Close();
}

void PidNamespace::Close() {
  if (init_pidfd_ >= 0) close(std::exchange(init_pidfd_, -1));
  if (control_ >= 0) close(std::exchange(control_, -1));
}

Result<pid_t> PidNamespace::SpawnInside(const std::function<Result<pid_t>()>& spawn) {
  const int ours = open("/proc/thread-self/ns/pid_for_children", O_RDONLY | O_CLOEXEC);
  if (ours < 0) return ErrnoError(errno, "open /proc/thread-self/ns/pid_for_children");
  if (setns(init_pidfd_, CLONE_NEWPID) != 0) {
    const int err = errno;
    close(ours);
    return ErrnoError(err, "setns into the pid namespace of init {}", init_pid_);
  }
  Result<pid_t> spawned = spawn();
  const int back = setns(ours, CLONE_NEWPID);
  const int err = errno;
  close(ours);
  // Left in the namespace, this thread would put every later child there.
  ROAM_CHECK(back == 0, "setns back to our pid_for_children failed: errno {}", err);
  return spawned;
}

Status PidNamespace::Serve(pid_t pid_inside) {
  if (control_ < 0) {
    return MakeError(Errc::kInternal, "init {} already serves a process", init_pid_);
  }
  const ssize_t n = send(control_, &pid_inside, sizeof(pid_inside), MSG_NOSIGNAL);
  const int err = errno;
  close(std::exchange(control_, -1));
  if (n != static_cast<ssize_t>(sizeof(pid_inside))) {
    return ErrnoError(n < 0 ? err : EIO, "tell init {} its process {}", init_pid_, pid_inside);
  }
  return Ok();
}

pid_t PidNamespace::Release() {
  const pid_t pid = std::exchange(init_pid_, -1);
  Close();
  return pid;
}

}  // namespace roam::ckpt
