#include "roam/launch/local_nodes.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <system_error>
#include <thread>

#include <fmt/format.h>

#include "roam/base/check.h"
#include "roam/base/deadline.h"
#include "roam/base/fault_injection.h"
#include "roam/base/unique_fd.h"

namespace roam::launch {
namespace {

// Where iproute2 lives when PATH (a user's, not root's) lacks the sbin dirs.
constexpr std::string_view kSystemDirs = "/usr/sbin:/sbin:/usr/bin:/bin";
// Interface names hold at most 15 characters (IFNAMSIZ - 1): the longest we
// make is "<prefix>v63".
constexpr std::size_t kMaxPrefix = 12;

using Fd = ::roam::UniqueFd;

// A descriptor a child is handed must not be 0, 1 or 2, which the child
// replaces; that only happens while this process runs with one of them closed.
Result<Fd> AboveStdio(Fd fd, std::string_view what) {
  if (fd.get() > 2) return fd;
  const int moved = fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (moved < 0) return ErrnoError(errno, "move the descriptor of {} above 2", what);
  return Fd(moved);
}

Result<Fd> NewMemFile(const char* name) {
  const int fd = memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "memfd_create {}", name);
  return AboveStdio(Fd(fd), name);
}

Status WriteAll(int fd, std::string_view bytes, std::string_view what) {
  while (!bytes.empty()) {
    const ssize_t n = write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(errno, "write {}", what);
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  if (lseek(fd, 0, SEEK_SET) < 0) return ErrnoError(errno, "rewind {}", what);
  return Ok();
}

Result<std::string> ReadAll(int fd, std::string_view what) {
  if (lseek(fd, 0, SEEK_SET) < 0) return ErrnoError(errno, "rewind {}", what);
  std::string text;
  std::array<char, 16384> chunk;
  for (;;) {
    const ssize_t n = read(fd, chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError(errno, "read {}", what);
    if (n == 0) return text;
    text.append(chunk.data(), static_cast<std::size_t>(n));
  }
}

// "line one; line two" from what a program wrote to stderr.
std::string OneLine(std::string_view text) {
  std::string line;
  while (!text.empty()) {
    const std::size_t end = std::min(text.find('\n'), text.size());
    if (end > 0) {
      if (!line.empty()) line += "; ";
      line.append(text.substr(0, end));
    }
    text.remove_prefix(std::min(end + 1, text.size()));
  }
  return line.empty() ? "(no message)" : line;
}

Status CheckCapabilities() {
  __user_cap_header_struct header{};
  header.version = _LINUX_CAPABILITY_VERSION_3;
  std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> data{};
  if (syscall(SYS_capget, &header, data.data()) != 0) return ErrnoError(errno, "capget");
  const auto has = [&data](int cap) {
    return ((data[cap / 32].effective >> (cap % 32)) & 1U) != 0;
  };
  std::string missing;
  if (!has(CAP_SYS_ADMIN)) missing += " CAP_SYS_ADMIN";
  if (!has(CAP_NET_ADMIN)) missing += " CAP_NET_ADMIN";
  if (missing.empty()) return Ok();
  return Error(Errc::kPermissionDenied, EPERM,
               fmt::format("local nodes need CAP_SYS_ADMIN and CAP_NET_ADMIN (run as root); this "
                           "process lacks{}",
                           missing));
}

bool IsLetter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

Status CheckPrefix(std::string_view prefix) {
  const bool ok = !prefix.empty() && prefix.size() <= kMaxPrefix && IsLetter(prefix[0]) &&
                  std::all_of(prefix.begin(), prefix.end(), [](char c) {
                    return IsLetter(c) || IsDigit(c) || c == '_' || c == '-';
                  });
  if (ok) return Ok();
  return MakeError(Errc::kInvalidArgument,
                   "name prefix '{}' is not 1 to {} characters of [A-Za-z0-9_-] starting with a "
                   "letter",
                   prefix, kMaxPrefix);
}

std::string DefaultPrefix() {
  static std::atomic<unsigned> counter{0};
  static const unsigned salt = std::random_device{}();
  // At most "rn" + 6 hex digits (pid_max is 2^22) + "x" + 2 = 11 characters.
  return fmt::format("rn{:x}x{:02x}", static_cast<unsigned>(getpid()),
                     (salt + counter.fetch_add(1)) & 0xffU);
}

using Network = std::array<int, 3>;  // a.b.c of a.b.c.0/24

Result<Network> ParseSubnet(std::string_view subnet) {
  const auto bad = [subnet] {
    return MakeError(Errc::kInvalidArgument, "subnet '{}' is not an IPv4 /24 such as 10.1.2.0/24",
                     subnet);
  };
  const std::size_t slash = subnet.find('/');
  if (slash == std::string_view::npos || subnet.substr(slash + 1) != "24") return bad();
  std::string_view rest = subnet.substr(0, slash);
  std::array<int, 4> octets{};
  for (std::size_t i = 0; i < octets.size(); ++i) {
    const std::size_t dot = i + 1 < octets.size() ? rest.find('.') : rest.size();
    if (dot == std::string_view::npos) return bad();
    const std::string_view part = rest.substr(0, dot);
    if (part.empty() || part.size() > 3 || !std::all_of(part.begin(), part.end(), IsDigit)) {
      return bad();
    }
    int value = 0;
    for (const char c : part) value = value * 10 + (c - '0');
    if (value > 255) return bad();
    octets[i] = value;
    rest.remove_prefix(std::min(dot + 1, rest.size()));
  }
  if (octets[3] != 0) {
    return MakeError(Errc::kInvalidArgument,
                     "subnet '{}' names a host; give the network, {}.{}.{}.0/24", subnet, octets[0],
                     octets[1], octets[2]);
  }
  return Network{octets[0], octets[1], octets[2]};
}

Network RandomNetwork() {
  std::random_device random;
  return Network{10, 1 + static_cast<int>(random() % 254), static_cast<int>(random() % 256)};
}

Result<std::string> FindProgram(std::string_view name, std::string_view extra_dirs) {
  if (name.find('/') != std::string_view::npos) return std::string(name);
  const char* env_path = std::getenv("PATH");
  std::string dirs = env_path != nullptr ? env_path : "/usr/local/bin:/usr/bin:/bin";
  if (!extra_dirs.empty()) dirs = fmt::format("{}:{}", dirs, extra_dirs);
  std::string_view rest = dirs;
  while (true) {
    const std::size_t colon = std::min(rest.find(':'), rest.size());
    const std::string_view dir = rest.substr(0, colon);
    const std::string candidate = fmt::format("{}/{}", dir.empty() ? "." : dir, name);
    struct stat st {};
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    if (colon == rest.size()) break;
    rest.remove_prefix(colon + 1);
  }
  return MakeError(Errc::kNotFound, "no program '{}' in PATH{}", name,
                   extra_dirs.empty() ? "" : fmt::format(" or {}", extra_dirs));
}

// A program, its arguments and its environment in the form execve wants,
// built before the fork: between fork and exec the child makes system calls
// only.
class ExecArgs final {
 public:
  ExecArgs() = default;
  ExecArgs(const ExecArgs&) = delete;
  ExecArgs& operator=(const ExecArgs&) = delete;

  Status Prepare(const std::vector<std::string>& argv, const LocalNodes::Environment& env,
                 std::string_view extra_dirs = {});

  const std::string& name() const { return args_[0]; }
  const char* path() const { return path_.c_str(); }
  char* const* argv() const { return argv_.data(); }
  char* const* envp() const { return envp_.data(); }

 private:
  std::string path_;
  std::vector<std::string> args_;
  std::vector<std::string> vars_;
  std::vector<char*> argv_;
  std::vector<char*> envp_;
};

Status ExecArgs::Prepare(const std::vector<std::string>& argv, const LocalNodes::Environment& env,
                         std::string_view extra_dirs) {
  if (argv.empty() || argv[0].empty()) {
    return MakeError(Errc::kInvalidArgument, "no program to run (empty argv)");
  }
  ROAM_ASSIGN_OR_RETURN(path_, FindProgram(argv[0], extra_dirs));
  args_ = argv;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    vars_.emplace_back(*entry);
  }
  for (const auto& [name, value] : env) {
    if (name.empty() || name.find('=') != std::string::npos) {
      return MakeError(Errc::kInvalidArgument, "'{}' is not an environment variable name", name);
    }
    const std::string assignment = fmt::format("{}=", name);
    std::erase_if(vars_, [&assignment](const std::string& var) {
      return var.compare(0, assignment.size(), assignment) == 0;
    });
    vars_.push_back(assignment + value);
  }
  for (std::string& arg : args_) argv_.push_back(arg.data());
  argv_.push_back(nullptr);
  for (std::string& var : vars_) envp_.push_back(var.data());
  envp_.push_back(nullptr);
  return Ok();
}

// Where a child's standard streams come from; -1 keeps ours.
struct Stdio {
  int in = -1;
  int out = -1;
  int err = -1;
};

enum class ChildStep : int { kSetns = 1, kStdio, kCloseRange, kExec };

struct ChildFailure {
  ChildStep step;
  int err;
};

// The child from fork to exec. This process may have other threads, whose
// locks stay taken in the child, so only system calls here: no allocation,
// no formatting, no logging. A failure goes to the parent through `report`,
// which is close-on-exec, so that a successful exec reads as EOF there.
[[noreturn]] void RunChild(int netns_fd, const Stdio& stdio, pid_t parent, const ExecArgs& exec,
                           int report) {
  const auto fail = [report](ChildStep step) {
    const ChildFailure failure{step, errno};
    // If this write fails, the parent sees EOF and a child that exits 126.
    const ssize_t sent = write(report, &failure, sizeof(failure));
    _exit(sent == static_cast<ssize_t>(sizeof(failure)) ? 127 : 126);
  };
  // Signals arrive blocked (StartChild). Handlers are reset by the exec
  // anyway, but ignored signals (SIGPIPE in many harnesses) would stay
  // ignored: reset them all, then unblock.
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &default_action, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // The death signal follows the thread that forked us. If the parent died
  // before the prctl, we have been reparented and nobody would kill us.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
  if (setns(netns_fd, CLONE_NEWNET) != 0) fail(ChildStep::kSetns);
  if ((stdio.in >= 0 && dup2(stdio.in, STDIN_FILENO) < 0) ||
      (stdio.out >= 0 && dup2(stdio.out, STDOUT_FILENO) < 0) ||
      (stdio.err >= 0 && dup2(stdio.err, STDERR_FILENO) < 0)) {
    fail(ChildStep::kStdio);
  }
  // Only 0-2 reach the program: harnesses leak descriptors, and one of our
  // namespaces inherited would outlive us. Marked close-on-exec rather than
  // closed, `report` stays usable until the exec.
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    // Linux 5.9 and 5.10 (no CLOSE_RANGE_CLOEXEC): close all but `report`
    // (close-on-exec already, >= 3).
    const auto fd = static_cast<unsigned>(report);
    if ((fd > 3 && close_range(3, fd - 1, 0) != 0) || close_range(fd + 1, ~0U, 0) != 0) {
      fail(ChildStep::kCloseRange);
    }
  }
  execve(exec.path(), exec.argv(), exec.envp());
  fail(ChildStep::kExec);
  _exit(127);
}

// Reaps our child `pid`: its exit code, 128 + the signal if it was killed.
Result<int> Reap(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return ErrnoError(errno, "waitpid {}", pid);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Forks a child that enters `netns_fd` and execs `exec`; an error if it got
// no further than that.
Result<pid_t> StartChild(int netns_fd, const Stdio& stdio, const ExecArgs& exec) {
  std::array<int, 2> ends{};
  if (pipe2(ends.data(), O_CLOEXEC) != 0)
    return ErrnoError(errno, "pipe2 to start {}", exec.name());
  const Fd read_end(ends[0]);
  ROAM_ASSIGN_OR_RETURN(Fd write_end, AboveStdio(Fd(ends[1]), "the start report pipe"));
  const pid_t parent = getpid();
  // Every signal blocked across the fork: until the child has reset the
  // dispositions, a signal would run one of this process's handlers in it.
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  const pid_t pid = fork();
  if (pid == 0) RunChild(netns_fd, stdio, parent, exec, write_end.get());
  const int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return ErrnoError(fork_errno, "fork to start {}", exec.name());
  write_end = Fd();

  ChildFailure failure{};
  ssize_t n = 0;
  do {
    n = read(read_end.get(), &failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  if (n == 0) return pid;
  (void)Reap(pid);
  if (n != static_cast<ssize_t>(sizeof(failure))) {
    return MakeError(Errc::kInternal, "{} (pid {}) failed before its exec without saying why",
                     exec.name(), pid);
  }
  switch (failure.step) {
    case ChildStep::kSetns:
      return ErrnoError(failure.err, "setns into the network namespace for {}", exec.name());
    case ChildStep::kStdio:
      return ErrnoError(failure.err, "dup2 the standard streams of {}", exec.name());
    case ChildStep::kCloseRange:
      return ErrnoError(failure.err, "close_range before running {}", exec.name());
    case ChildStep::kExec:
      return ErrnoError(failure.err, "execve {}", exec.path());
  }
  return MakeError(Errc::kInternal, "{} failed at unknown step {}", exec.name(),
                   static_cast<int>(failure.step));
}

// True once our unreaped child `pid` has exited; false if `timeout` ran out
// first.
Result<bool> WaitForExit(pid_t pid, std::chrono::milliseconds timeout) {
  const Fd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  if (pidfd.get() < 0) return ErrnoError(errno, "pidfd_open {}", pid);
  const auto deadline = DeadlineAfter(timeout);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd exited{pidfd.get(), POLLIN, 0};
    const int n =
        poll(&exited, 1, static_cast<int>(std::clamp<std::int64_t>(left.count(), 0, INT_MAX)));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return ErrnoError(errno, "poll the pidfd of {}", pid);
  }
}

Result<CommandOutput> RunInNamespace(int netns_fd, std::string_view where, const ExecArgs& exec,
                                     int stdin_fd, std::chrono::milliseconds timeout) {
  ROAM_ASSIGN_OR_RETURN(const Fd out, NewMemFile("roam-run-stdout"));
  ROAM_ASSIGN_OR_RETURN(const Fd err, NewMemFile("roam-run-stderr"));
  const Result<pid_t> started = StartChild(netns_fd, Stdio{stdin_fd, out.get(), err.get()}, exec);
  if (!started.has_value()) return started.error().WithContext(where);
  const pid_t pid = *started;
  const Result<bool> exited = WaitForExit(pid, timeout);
  if (!exited.has_value() || !*exited) {
    kill(pid, SIGKILL);  // not reaped yet, so the pid is still this child's
    (void)Reap(pid);
    if (!exited.has_value()) return exited.error();
    return MakeError(Errc::kTimeout, "{} in {} was still running after {} ms; killed it",
                     exec.name(), where, timeout.count());
  }
  CommandOutput done;
  ROAM_ASSIGN_OR_RETURN(done.exit_code, Reap(pid));
  ROAM_ASSIGN_OR_RETURN(done.out, ReadAll(out.get(), "the captured stdout"));
  ROAM_ASSIGN_OR_RETURN(done.err, ReadAll(err.get(), "the captured stderr"));
  return done;
}

// Runs `ip -batch -` inside a namespace with `commands` on its stdin. ip
// stops at the first command that fails and says which.
Status RunIpBatch(const std::string& ip, int netns_fd, std::string_view where,
                  std::string_view commands) {
  ROAM_ASSIGN_OR_RETURN(const Fd in, NewMemFile("roam-ip-batch"));
  ROAM_TRY(WriteAll(in.get(), commands, "the ip batch"));
  ExecArgs exec;
  ROAM_TRY(exec.Prepare({ip, "-batch", "-"}, {}));
  ROAM_ASSIGN_OR_RETURN(const CommandOutput done, RunInNamespace(netns_fd, where, exec, in.get(),
                                                                 LocalNodes::kDefaultRunTimeout));
  if (done.exit_code != 0) {
    return MakeError(Errc::kIo, "ip -batch in {} failed (exit {}): {}", where, done.exit_code,
                     OneLine(done.err));
  }
  return Ok();
}

// `count` new network namespaces, held by descriptors only. unshare() moves
// the thread that calls it, so a short-lived thread of our own makes them:
// the caller stays where it is, and the thread's reference to the last one
// goes when it exits. (One thread of many may unshare CLONE_NEWNET; only
// CLONE_NEWUSER and CLONE_FS-like flags want a single-threaded process.)
Result<std::vector<Fd>> NewNetworkNamespaces(int count) {
  Result<std::vector<Fd>> made = std::vector<Fd>();
  const auto make = [&made, count] {
    std::vector<Fd> fds;
    for (int i = 0; i < count; ++i) {
      if (unshare(CLONE_NEWNET) != 0) {
        const int err = errno;
        made = err == EPERM ? Error(Errc::kPermissionDenied, err,
                                    "unshare CLONE_NEWNET: a network namespace needs "
                                    "CAP_SYS_ADMIN (run as root)")
                            : ErrnoError(err, "unshare CLONE_NEWNET");
        return;
      }
      const int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        made = ErrnoError(errno, "open /proc/thread-self/ns/net");
        return;
      }
      fds.emplace_back(fd);
    }
    made = std::move(fds);
  };
  try {
    std::thread(make).join();
  } catch (const std::system_error& e) {
    return MakeError(Errc::kResourceExhausted, "start a thread to make network namespaces: {}",
                     e.what());
  }
  return made;
}

}  // namespace

Result<std::unique_ptr<LocalNodes>> LocalNodes::Create(const LocalNodesOptions& options) {
  if (options.nodes < 1 || options.nodes > kMaxNodes) {
    return MakeError(Errc::kInvalidArgument, "{} local nodes asked for; 1 to {} are possible",
                     options.nodes, kMaxNodes);
  }
  std::string prefix = options.prefix.empty() ? DefaultPrefix() : options.prefix;
  ROAM_TRY(CheckPrefix(prefix));
  Network network = RandomNetwork();
  if (!options.subnet.empty()) {
    ROAM_ASSIGN_OR_RETURN(network, ParseSubnet(options.subnet));
  }
  ROAM_TRY(CheckCapabilities());
  ROAM_ASSIGN_OR_RETURN(const std::string ip, FindProgram("ip", kSystemDirs));

  std::unique_ptr<LocalNodes> nodes(new LocalNodes());
  nodes->prefix_ = std::move(prefix);
  nodes->bridge_ = nodes->prefix_ + "br";
  const auto [a, b, c] = network;
  nodes->subnet_ = fmt::format("{}.{}.{}.0/24", a, b, c);
  for (int i = 0; i < options.nodes; ++i) {
    nodes->addresses_.push_back(fmt::format("{}.{}.{}.{}", a, b, c, i + 1));
  }
  nodes->origin_fd_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (nodes->origin_fd_ < 0) return ErrnoError(errno, "open /proc/thread-self/ns/net");
  ROAM_ASSIGN_OR_RETURN(std::vector<Fd> made, NewNetworkNamespaces(options.nodes + 1));
  nodes->switch_fd_ = made[0].release();
  for (int i = 0; i < options.nodes; ++i) nodes->node_fds_.push_back(made[i + 1].release());
  // If this fails, destroying `nodes` closes the namespaces, and the kernel
  // takes down whatever had been set up in them.
  if (Status configured = nodes->Configure(ip); !configured.has_value()) {
    return configured.error().WithContext(fmt::format("set up local nodes {}", nodes->prefix_));
  }
  return nodes;
}

Status LocalNodes::Configure(const std::string& ip) const {
  const pid_t self = getpid();
  std::string switch_commands = fmt::format("link add {0} type bridge\nlink set {0} up\n", bridge_);
  for (int i = 0; i < node_count(); ++i) {
    // The node's end is born inside the node's namespace under its final
    // name, so it never exists anywhere else, and the same name in every node
    // cannot clash. ip opens the namespace through our descriptor.
    const std::string port = fmt::format("{}v{}", prefix_, i);
    switch_commands += fmt::format(
        "link add {0} type veth peer name {1} netns /proc/{2}/fd/{3}\n"
        "link set {0} master {4}\n"
        "link set {0} up\n",
        port, kInterface, self, node_fds_[i], bridge_);
  }
  ROAM_TRY(RunIpBatch(ip, switch_fd_, "the switch namespace", switch_commands));
  for (int i = 0; i < node_count(); ++i) {
    // Fails after the switch and every other node have been set up.
    if (i == node_count() - 1 && FaultInjected("local-nodes-last-node")) {
      return MakeError(Errc::kInternal, "fault local-nodes-last-node injected before node {}", i);
    }
    const std::string commands = fmt::format(
        "link set lo up\n"
        "addr add {0}/24 dev {1}\n"
        "link set {1} up\n",
        addresses_[i], kInterface);
    ROAM_TRY(RunIpBatch(ip, node_fds_[i], fmt::format("node {}", i), commands));
  }
  return Ok();
}

LocalNodes::~LocalNodes() {
  {
    const std::lock_guard lock(mu_);
    for (const int pidfd : spawned_) {
      syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
      close(pidfd);
    }
  }
  for (const int fd : node_fds_) close(fd);
  if (switch_fd_ >= 0) close(switch_fd_);
  if (origin_fd_ >= 0) close(origin_fd_);
}

Status LocalNodes::CheckNode(int node) const {
  if (node < 0 || node >= node_count()) {
    return MakeError(Errc::kInvalidArgument, "no node {} among local nodes {} (0 to {})", node,
                     prefix_, node_count() - 1);
  }
  return Ok();
}

const std::string& LocalNodes::address(int node) const {
  ROAM_CHECK(node >= 0 && node < node_count(), "node {} of {}", node, node_count());
  return addresses_[node];
}

std::string_view LocalNodes::interface_name(int node) const {
  ROAM_CHECK(node >= 0 && node < node_count(), "node {} of {}", node, node_count());
  return kInterface;
}

int LocalNodes::netns_fd(int node) const {
  ROAM_CHECK(node >= 0 && node < node_count(), "node {} of {}", node, node_count());
  return node_fds_[node];
}

std::string LocalNodes::netns_path(int node) const {
  return fmt::format("/proc/{}/fd/{}", getpid(), netns_fd(node));
}

Status LocalNodes::Enter(int node) const {
  ROAM_TRY(CheckNode(node));
  if (setns(node_fds_[node], CLONE_NEWNET) != 0) {
    return ErrnoError(errno, "setns into the network namespace of node {}", node);
  }
  return Ok();
}

Status LocalNodes::Leave() const {
  if (setns(origin_fd_, CLONE_NEWNET) != 0) {
    return ErrnoError(errno, "setns back to the network namespace local nodes {} were made from",
                      prefix_);
  }
  return Ok();
}

Result<pid_t> LocalNodes::Spawn(int node, const std::vector<std::string>& argv,
                                const Environment& env, int output_fd) {
  ROAM_TRY(CheckNode(node));
  ExecArgs exec;
  ROAM_TRY(exec.Prepare(argv, env));
  Result<pid_t> started =
      StartChild(node_fds_[node], Stdio{.out = output_fd, .err = output_fd}, exec);
  if (!started.has_value()) return started.error().WithContext(fmt::format("node {}", node));
  const pid_t pid = *started;
  // Kept so that the destructor can kill it: unlike the pid, a pidfd never
  // comes to name another process once the caller has reaped this one.
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    const int err = errno;
    // ESRCH: it exited and was reaped already (SIGCHLD ignored); nothing to kill.
    if (err == ESRCH) return pid;
    kill(pid, SIGKILL);
    (void)Reap(pid);
    return ErrnoError(err, "pidfd_open {} ({} in node {})", pid, argv[0], node);
  }
  const std::lock_guard lock(mu_);
  std::erase_if(spawned_, [](int fd) {
    pollfd exited{fd, POLLIN, 0};
    if (poll(&exited, 1, 0) <= 0) return false;
    close(fd);
    return true;
  });
  spawned_.push_back(pidfd);
  return pid;
}

Result<CommandOutput> LocalNodes::Run(int node, const std::vector<std::string>& argv,
                                      const Environment& env,
                                      std::chrono::milliseconds timeout) const {
  ROAM_TRY(CheckNode(node));
  ExecArgs exec;
  ROAM_TRY(exec.Prepare(argv, env));
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) return ErrnoError(errno, "open /dev/null");
  ROAM_ASSIGN_OR_RETURN(const Fd devnull, AboveStdio(Fd(null_fd), "/dev/null"));
  return RunInNamespace(node_fds_[node], fmt::format("node {}", node), exec, devnull.get(),
                        timeout);
}

}  // namespace roam::launch
