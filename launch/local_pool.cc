#include "launch/local_pool.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "launch/node_cgroup.h"
#include "launch/pool/pool_key.h"
#include "roam/base/deadline.h"
#include "roam/base/error_wire.h"
#include "roam/base/file.h"
#include "roam/base/unique_fd.h"
#include "roam/launch/local_nodes.h"

namespace roam::launch {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

constexpr std::string_view kRunRoot = "/run/roam/local";
constexpr std::size_t kMaxName = 16;
// The keeper's comm (at most 15 characters), for ps and for people.
constexpr const char* kKeeperComm = "roam-keeper";
// SIGTERM to the roamds, then this long before SIGKILL.
constexpr milliseconds kRoamdGrace{5'000};
// `pool down`: SIGTERM to the keeper, then this long before SIGKILL.
constexpr milliseconds kKeeperGrace{15'000};
constexpr milliseconds kKillTimeout{5'000};
constexpr milliseconds kPollInterval{20};
// How long the keeper waits for every roamd's socket to accept.
constexpr std::chrono::seconds kReadyTimeout{30};

std::string NodeName(int index) { return fmt::format("n{}", index + 1); }

// kInvalidArgument unless `name` is 1 to 16 characters of [A-Za-z0-9_-].
Status CheckLocalPoolName(std::string_view name) {
  const bool ok =
      !name.empty() && name.size() <= kMaxName && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-';
      });
  if (ok) return Ok();
  return MakeError(Errc::kInvalidArgument,
                   "pool name '{}' is not 1 to {} characters of [A-Za-z0-9_-]", name, kMaxName);
}

Result<fs::path> PoolCgroup(std::string_view name) {
  ROAM_ASSIGN_OR_RETURN(const fs::path mount, CpuCgroupMount());
  return mount / fmt::format("roam.{}", name);
}

// The last non-empty line of a log, for an error message that must outlive
// the log (the state directory goes when a start fails).
std::string LastLine(const fs::path& path) {
  const Result<std::string> text = ReadFile(path);
  if (!text.has_value()) return "";
  std::string_view rest = *text;
  while (!rest.empty() && (rest.back() == '\n' || rest.back() == ' ')) rest.remove_suffix(1);
  const std::size_t newline = rest.rfind('\n');
  return std::string(newline == std::string_view::npos ? rest : rest.substr(newline + 1));
}

// The pid in keeper.pid if a live keeper holds its lock, else nullopt. The
// keeper takes an exclusive flock for its whole life; the kernel drops it
// when the keeper dies, however it dies.
std::optional<pid_t> LiveKeeper(const fs::path& dir) {
  const UniqueFd fd(open((dir / "keeper.pid").c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return std::nullopt;
  if (flock(fd.get(), LOCK_SH | LOCK_NB) == 0) return std::nullopt;
  std::array<char, 32> buffer{};
  const ssize_t n = pread(fd.get(), buffer.data(), buffer.size() - 1, 0);
  return n > 0 ? static_cast<pid_t>(std::atoi(buffer.data())) : 0;
}

// Kills the processes in the pool's cgroups, then removes the cgroups.
Status RemovePoolCgroup(const fs::path& cgroup) {
  ROAM_TRY(KillCgroupTree(cgroup, kKillTimeout));
  return RemoveCgroupTree(cgroup);
}

// True once no live keeper holds `dir`'s lock, false if one still does after
// `timeout`.
bool KeeperGoneWithin(const fs::path& dir, milliseconds timeout) {
  const auto deadline = DeadlineAfter(timeout);
  while (LiveKeeper(dir).has_value()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(kPollInterval);
  }
  return true;
}

// Removes what a pool leaves when its keeper could not: the processes in
// its cgroups, the cgroups and the state directory.
Status RemoveLeftovers(std::string_view name) {
  Status result = Ok();
  if (const Result<fs::path> cgroup = PoolCgroup(name); cgroup.has_value()) {
    result = RemovePoolCgroup(*cgroup);
  }
  std::error_code ec;
  fs::remove_all(LocalPoolDir(name), ec);
  if (ec && result.has_value()) {
    return Error(ErrcFromErrno(ec.value()), ec.value(),
                 fmt::format("remove {}: {}", LocalPoolDir(name).string(), ec.message()));
  }
  return result;
}

Status MakeDirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return Error(ErrcFromErrno(ec.value()), ec.value(),
                 fmt::format("create {}: {}", dir.string(), ec.message()));
  }
  return Ok();
}

Result<std::string> FindRoamd(const std::string& configured) {
  std::string path = configured;
  if (path.empty()) {
    if (const char* env = std::getenv("ROAM_ROAMD"); env != nullptr && *env != '\0') path = env;
  }
  if (path.empty()) {
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (ec) return MakeError(Errc::kIo, "find this program (/proc/self/exe): {}", ec.message());
    path = (self.parent_path() / "roamd").string();
  }
  if (access(path.c_str(), X_OK) != 0) {
    return ErrnoError(errno, "roamd at {} cannot be run (set ROAM_ROAMD to another)", path);
  }
  return path;
}

// ---- pool.json --------------------------------------------------------------

nlohmann::json ToJson(const LocalPool& pool) {
  nlohmann::json nodes = nlohmann::json::array();
  for (const LocalPoolNode& node : pool.nodes) {
    nodes.push_back({{"name", node.name},
                     {"address", node.address},
                     {"socket", node.socket},
                     {"cgroup", node.cgroup},
                     {"cpus", node.cpus},
                     {"pid", node.pid},
                     {"log", node.log}});
  }
  return {{"name", pool.name},
          {"dir", pool.dir},
          {"subnet", pool.subnet},
          {"keeper", pool.keeper},
          {"nodes", nodes}};
}

Result<LocalPool> FromJson(const nlohmann::json& j, const fs::path& path) {
  const auto bad = [&path](std::string_view what) {
    return MakeError(Errc::kCorrupt, "{}: {} missing or of the wrong type", path.string(), what);
  };
  const auto text = [](const nlohmann::json& obj, const char* key, std::string& out) {
    if (!obj.contains(key) || !obj[key].is_string()) return false;
    out = obj[key].get<std::string>();
    return true;
  };
  if (!j.is_object()) return bad("the object");
  LocalPool pool;
  if (!text(j, "name", pool.name)) return bad("name");
  if (!text(j, "dir", pool.dir)) return bad("dir");
  if (!text(j, "subnet", pool.subnet)) return bad("subnet");
  if (!j.contains("keeper") || !j["keeper"].is_number_integer()) return bad("keeper");
  pool.keeper = j["keeper"].get<pid_t>();
  if (!j.contains("nodes") || !j["nodes"].is_array()) return bad("nodes");
  for (const nlohmann::json& n : j["nodes"]) {
    LocalPoolNode node;
    if (!n.is_object() || !text(n, "name", node.name) || !text(n, "address", node.address) ||
        !text(n, "socket", node.socket) || !text(n, "cgroup", node.cgroup) ||
        !text(n, "log", node.log) || !n.contains("cpus") || !n["cpus"].is_number() ||
        !n.contains("pid") || !n["pid"].is_number_integer()) {
      return bad("a node");
    }
    node.cpus = n["cpus"].get<double>();
    node.pid = n["pid"].get<pid_t>();
    pool.nodes.push_back(std::move(node));
  }
  return pool;
}

// ---- the keeper ---------------------------------------------------------------

template <typename... Args>
void Log(fmt::format_string<Args...> format, Args&&... args) {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::array<char, 32> stamp{};
  std::strftime(stamp.data(), stamp.size(), "%F %T", &tm);
  const std::string line = fmt::format("{} keeper[{}]: {}\n", stamp.data(), getpid(),
                                       fmt::format(format, std::forward<Args>(args)...));
  (void)WriteAll(STDERR_FILENO, std::as_bytes(std::span(line.data(), line.size())), "keeper.log");
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return fmt::format("exit {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by {}", strsignal(WTERMSIG(status)));
  return fmt::format("status {:#x}", status);
}

struct KeeperArgs {
  LocalPoolOptions options;
  std::string roamd;
  fs::path dir;
  fs::path cgroup;
};

class Keeper final {
 public:
  Keeper(KeeperArgs args, int signal_fd) : args_(std::move(args)), signal_fd_(signal_fd) {}

  // Builds the nodes and waits for every roamd; the pool on success.
  Result<LocalPool> Start();
  // Until SIGTERM or SIGINT: logs roamds that exit.
  void Serve();
  // Takes everything down; leaves the state directory to the caller.
  void Stop();

 private:
  fs::path Socket(int i) const { return args_.dir / fmt::format("{}.sock", NodeName(i)); }
  fs::path NodeLog(int i) const { return args_.dir / fmt::format("{}.log", NodeName(i)); }
  fs::path NodeCgroup(int i) const { return args_.cgroup / NodeName(i); }
  Result<pid_t> SpawnRoamd(int i);
  Status WaitReady();
  // Reaps the roamds that have exited, logging each; true if any is left.
  bool ReapRoamds();
  // True if SIGTERM or SIGINT is pending; consumes what signalfd holds.
  bool TakeStopSignal() const;

  KeeperArgs args_;
  int signal_fd_;
  std::unique_ptr<LocalNodes> nodes_;
  std::vector<pid_t> roamds_;  // 0: exited and reaped
};

Result<pid_t> Keeper::SpawnRoamd(int i) {
  const int n = args_.options.nodes;
  std::vector<std::string> argv = {
      args_.roamd,
      "--name",
      NodeName(i),
      "--rank",
      std::to_string(i),
      "--size",
      std::to_string(n),
      "--bootstrap",
      fmt::format("dir:{}", (args_.dir / "boot").string()),
      "--socket",
      Socket(i).string(),
      "--pool-key",
      (args_.dir / "pool.key").string(),
      "--guest-cgroup",
      (NodeCgroup(i) / "guests").string(),
      "--cpus",
      fmt::format("{:g}", args_.options.cpus_per_node),
  };
  if (args_.options.staging_mib) {
    argv.insert(argv.end(), {"--staging", std::to_string(*args_.options.staging_mib)});
  }
  if (!args_.options.balance.empty()) argv.insert(argv.end(), {"--balance", args_.options.balance});
  if (!args_.options.gossip.empty()) argv.insert(argv.end(), {"--gossip", args_.options.gossip});
  const UniqueFd log(open(NodeLog(i).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!log.valid()) return ErrnoError(errno, "create {}", NodeLog(i).string());
  return nodes_->Spawn(i, argv, {{"UCX_TLS", "tcp"}, {"UCX_NET_DEVICES", "eth0"}}, log.get());
}

bool Keeper::TakeStopSignal() const {
  bool stop = false;
  signalfd_siginfo info{};
  while (read(signal_fd_, &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
    if (info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT) {
      Log("got {}", strsignal(static_cast<int>(info.ssi_signo)));
      stop = true;
    }
  }
  return stop;
}

bool Keeper::ReapRoamds() {
  bool left = false;
  for (std::size_t i = 0; i < roamds_.size(); ++i) {
    if (roamds_[i] <= 0) continue;
    int status = 0;
    const pid_t done = waitpid(roamds_[i], &status, WNOHANG);
    if (done == roamds_[i] || (done < 0 && errno == ECHILD)) {
      Log("roamd of {} (pid {}) exited: {}", NodeName(static_cast<int>(i)), roamds_[i],
          DescribeExit(status));
      roamds_[i] = 0;
    } else {
      left = true;
    }
  }
  return left;
}

Status Keeper::WaitReady() {
  const int n = args_.options.nodes;
  std::vector<bool> ready(static_cast<std::size_t>(n), false);
  const auto deadline = DeadlineAfter(kReadyTimeout);
  for (;;) {
    int waiting = 0;
    for (int i = 0; i < n; ++i) {
      if (ready[i]) continue;
      int status = 0;
      if (waitpid(roamds_[i], &status, WNOHANG) == roamds_[i]) {
        roamds_[i] = 0;
        const std::string last = LastLine(NodeLog(i));
        return MakeError(Errc::kUnavailable, "roamd of {} exited ({}) before it accepted on {}{}{}",
                         NodeName(i), DescribeExit(status), Socket(i).string(),
                         last.empty() ? "" : "; it said: ", last);
      }
      // A path-bound unix socket is found through the file system, so the
      // keeper reaches it from outside the node's network namespace.
      const UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
      if (!probe.valid()) return ErrnoError(errno, "socket AF_UNIX");
      sockaddr_un address{};
      address.sun_family = AF_UNIX;
      std::strncpy(address.sun_path, Socket(i).c_str(), sizeof(address.sun_path) - 1);
      if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0) {
        ready[i] = true;
        Log("roamd of {} (pid {}) accepts on {}", NodeName(i), roamds_[i], Socket(i).string());
      } else {
        ++waiting;
      }
    }
    if (waiting == 0) return Ok();
    if (std::chrono::steady_clock::now() >= deadline) {
      std::string late;
      for (int i = 0; i < n; ++i) {
        if (!ready[i]) late += (late.empty() ? "" : ", ") + NodeName(i);
      }
      return MakeError(Errc::kTimeout,
                       "roamd of {} did not accept on its socket within {} s (its last words: "
                       "'{}')",
                       late, kReadyTimeout.count(),
                       LastLine(NodeLog(static_cast<int>(
                           std::find(ready.begin(), ready.end(), false) - ready.begin()))));
    }
    pollfd pending{signal_fd_, POLLIN, 0};
    if (poll(&pending, 1, static_cast<int>(kPollInterval.count())) > 0 && TakeStopSignal()) {
      return MakeError(Errc::kCancelled, "stopped by a signal while the roamds were starting");
    }
  }
}

Result<LocalPool> Keeper::Start() {
  const int n = args_.options.nodes;
  LocalNodesOptions node_options;
  node_options.nodes = n;
  ROAM_ASSIGN_OR_RETURN(nodes_, LocalNodes::Create(node_options));
  Log("{} nodes on {} (interfaces {}*)", n, nodes_->subnet(), nodes_->prefix());
  for (int i = 0; i < n; ++i) {
    ROAM_TRY(CreateNodeCgroup(NodeCgroup(i), args_.options.cpus_per_node));
  }
  roamds_.assign(static_cast<std::size_t>(n), 0);
  for (int i = 0; i < n; ++i) {
    ROAM_ASSIGN_OR_RETURN(roamds_[i], SpawnRoamd(i));
    // roamd starts no guest before it is ready, so moving it after the
    // exec loses nothing to the window.
    ROAM_TRY(MoveIntoCgroup(NodeCgroup(i), roamds_[i]));
    Log("started roamd of {} (pid {}) at {}", NodeName(i), roamds_[i], nodes_->address(i));
  }
  ROAM_TRY(WaitReady());

  LocalPool pool;
  pool.name = args_.options.name;
  pool.dir = args_.dir.string();
  pool.subnet = nodes_->subnet();
  pool.keeper = getpid();
  for (int i = 0; i < n; ++i) {
    pool.nodes.push_back(LocalPoolNode{.name = NodeName(i),
                                       .address = nodes_->address(i),
                                       .socket = Socket(i).string(),
                                       .cgroup = NodeCgroup(i).string(),
                                       .cpus = args_.options.cpus_per_node,
                                       .pid = roamds_[i],
                                       .log = NodeLog(i).string()});
  }
  ROAM_TRY(WriteFileAtomically(args_.dir / "pool.json.tmp", args_.dir / "pool.json",
                               ToJson(pool).dump(2) + "\n"));
  return pool;
}

void Keeper::Serve() {
  for (;;) {
    pollfd pending{signal_fd_, POLLIN, 0};
    if (poll(&pending, 1, -1) < 0 && errno != EINTR) {
      Log("poll the signalfd: {}; stopping", std::strerror(errno));
      return;
    }
    const bool stop = TakeStopSignal();
    ReapRoamds();
    if (stop) return;
  }
}

void Keeper::Stop() {
  for (const pid_t pid : roamds_) {
    if (pid > 0) kill(pid, SIGTERM);
  }
  const auto deadline = DeadlineAfter(kRoamdGrace);
  while (ReapRoamds() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(kPollInterval);
  }
  for (pid_t& pid : roamds_) {
    if (pid <= 0) continue;
    Log("roamd (pid {}) still running {} ms after SIGTERM; SIGKILL", pid, kRoamdGrace.count());
    kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pid = 0;
  }
  if (Status removed = RemovePoolCgroup(args_.cgroup); !removed.has_value()) {
    Log("{}", removed.error().ToString());
  }
  nodes_.reset();
  Log("stopped");
}

// Closes every descriptor from 3 up but `keep` (sorted, each >= 3).
void CloseAllBut(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  unsigned first = 3;
  for (const int fd : keep) {
    if (static_cast<unsigned>(fd) > first) close_range(first, static_cast<unsigned>(fd) - 1, 0);
    first = static_cast<unsigned>(fd) + 1;
  }
  close_range(first, ~0U, 0);
}

// The keeper tells the parent "ready\n" or an encoded error (error_wire.h),
// then closes the pipe.
constexpr std::string_view kReady = "ready\n";

void Report(int fd, std::string_view message) {
  (void)WriteAll(fd, std::as_bytes(std::span(message.data(), message.size())), "the start pipe");
}

void ReportError(int fd, const Error& error) { Report(fd, EncodeError(error)); }

// The keeper process, from after the double fork to its exit.
[[noreturn]] void RunKeeper(KeeperArgs args, int report_fd, int lock_fd) {
  prctl(PR_SET_NAME, kKeeperComm);
  const fs::path log_path = args.dir / "keeper.log";
  const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log < 0 || null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(log, STDOUT_FILENO) < 0 ||
      dup2(log, STDERR_FILENO) < 0) {
    ReportError(report_fd, MakeError(Errc::kIo, "keeper: set up {}: {}", log_path.string(),
                                     std::strerror(errno)));
    _exit(1);
  }
  // Whatever the parent had open (a harness's pipes, a terminal) must not
  // stay open for the pool's lifetime.
  CloseAllBut({report_fd, lock_fd});
  const std::string pid_text = fmt::format("{}\n", getpid());
  if (ftruncate(lock_fd, 0) != 0 || pwrite(lock_fd, pid_text.data(), pid_text.size(), 0) !=
                                        static_cast<ssize_t>(pid_text.size())) {
    Log("write keeper.pid: {}", std::strerror(errno));
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGCHLD);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  const int signal_fd = signalfd(-1, &signals, SFD_NONBLOCK | SFD_CLOEXEC);
  if (signal_fd < 0) {
    ReportError(report_fd, MakeError(Errc::kIo, "keeper: signalfd: {}", std::strerror(errno)));
    _exit(1);
  }
  Log("pool '{}': {} nodes, {:g} CPUs each, roamd {}", args.options.name, args.options.nodes,
      args.options.cpus_per_node, args.roamd);

  const fs::path dir = args.dir;
  Keeper keeper(std::move(args), signal_fd);
  const Result<LocalPool> started = keeper.Start();
  if (started.has_value()) {
    Report(report_fd, kReady);
    close(report_fd);
    report_fd = -1;
    Log("ready");
    keeper.Serve();
  } else {
    Log("start failed: {}", started.error().ToString());
  }
  keeper.Stop();
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (report_fd >= 0) {
    // Told last, so that a failed `pool up` returns with nothing left behind.
    ReportError(report_fd, started.error());
  }
  _exit(started.has_value() ? 0 : 1);
}

}  // namespace

fs::path LocalPoolDir(std::string_view name) { return fs::path(kRunRoot) / name; }

Result<LocalPool> StartLocalPool(const LocalPoolOptions& options) {
  ROAM_TRY(CheckLocalPoolName(options.name));
  if (options.nodes < 1 || options.nodes > LocalNodes::kMaxNodes) {
    return MakeError(Errc::kInvalidArgument, "{} local nodes asked for; 1 to {} are possible",
                     options.nodes, LocalNodes::kMaxNodes);
  }
  if (!(options.cpus_per_node > 0) || !std::isfinite(options.cpus_per_node)) {
    return MakeError(Errc::kInvalidArgument, "{} CPUs per node: give a number above 0",
                     options.cpus_per_node);
  }
  // Every node's staging stays resident on this one machine.
  if (options.staging_mib) {
    if (*options.staging_mib < 0) {
      return MakeError(Errc::kInvalidArgument, "{} MiB of staging: give 0 or more",
                       *options.staging_mib);
    }
    const std::int64_t memory_mib = static_cast<std::int64_t>(sysconf(_SC_PHYS_PAGES)) *
                                        static_cast<std::int64_t>(sysconf(_SC_PAGESIZE)) >>
                                    20;
    if (*options.staging_mib > memory_mib / options.nodes) {
      return MakeError(Errc::kInvalidArgument,
                       "{} nodes with {} MiB of staging each are more than this machine's memory "
                       "({} MiB)",
                       options.nodes, *options.staging_mib, memory_mib);
    }
  }
  KeeperArgs args;
  args.options = options;
  ROAM_ASSIGN_OR_RETURN(args.roamd, FindRoamd(options.roamd));
  ROAM_ASSIGN_OR_RETURN(args.cgroup, PoolCgroup(options.name));
  args.dir = LocalPoolDir(options.name);
  ROAM_TRY(MakeDirs(args.dir.parent_path()));

  // The directory is the pool's name claim; a live keeper's lock in it says
  // it is taken.
  for (int attempt = 0;; ++attempt) {
    if (mkdir(args.dir.c_str(), 0755) == 0) break;
    if (errno != EEXIST || attempt > 0) return ErrnoError(errno, "mkdir {}", args.dir.string());
    if (LiveKeeper(args.dir).has_value()) {
      return MakeError(Errc::kAlreadyExists, "pool '{}' is already up (roam pool down first)",
                       options.name);
    }
    ROAM_TRY(RemoveLeftovers(options.name));
  }
  Result<LocalPool> started = [&]() -> Result<LocalPool> {
    UniqueFd lock(
        open((args.dir / "keeper.pid").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!lock.valid()) return ErrnoError(errno, "create {}/keeper.pid", args.dir.string());
    if (flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
      return ErrnoError(errno, "lock {}/keeper.pid", args.dir.string());
    }
    ROAM_TRY(pool::PoolKey::Generate(args.dir / "pool.key"));
    if (mkdir((args.dir / "boot").c_str(), 0755) != 0) {
      return ErrnoError(errno, "mkdir {}/boot", args.dir.string());
    }
    std::array<int, 2> ends{};
    if (pipe2(ends.data(), O_CLOEXEC) != 0) return ErrnoError(errno, "pipe2");
    UniqueFd read_end(ends[0]);
    UniqueFd write_end(ends[1]);
    std::fflush(nullptr);  // or the keeper writes our buffered output again
    const pid_t middle = fork();
    if (middle < 0) return ErrnoError(errno, "fork the keeper");
    if (middle == 0) {
      // Its own session, and a grandchild of ours: no terminal's hangup and
      // no shell's job control reaches it, and nobody waits for it.
      setsid();
      const pid_t keeper = fork();
      if (keeper == 0) RunKeeper(std::move(args), write_end.get(), lock.get());
      _exit(keeper < 0 ? 1 : 0);
    }
    write_end.reset();
    lock.reset();  // the keeper holds the lock through its own descriptor
    int status = 0;
    while (waitpid(middle, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return MakeError(Errc::kResourceExhausted, "fork the keeper of pool '{}' failed",
                       options.name);
    }
    std::string message;
    std::array<char, 4096> chunk;
    for (;;) {
      const ssize_t n = read(read_end.get(), chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      message.append(chunk.data(), static_cast<std::size_t>(n));
    }
    if (message == kReady) return ReadLocalPool(options.name);
    // Empty: the keeper died before it said anything (an empty message would
    // decode as an error of code 0).
    if (const Result<Error> error = DecodeError(message); !message.empty() && error.has_value()) {
      return Error(error->code(),
                   fmt::format("start pool '{}': {}", options.name, error->message()));
    }
    return MakeError(Errc::kInternal, "the keeper of pool '{}' died while starting ({})",
                     options.name, LastLine(args.dir / "keeper.log"));
  }();
  // The directory is ours from the mkdir on: a failure takes it back.
  if (!started.has_value()) (void)RemoveLeftovers(options.name);
  return started;
}

Status StopLocalPool(std::string_view name) {
  ROAM_TRY(CheckLocalPoolName(name));
  const fs::path dir = LocalPoolDir(name);
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    return MakeError(Errc::kNotFound, "no local pool '{}' is up", name);
  }
  std::optional<pid_t> keeper = LiveKeeper(dir);
  // A keeper that has just been forked holds the lock before it has written
  // its pid; give it a moment rather than cleaning up under its feet.
  const auto pid_deadline = DeadlineAfter(milliseconds(2'000));
  while (keeper.has_value() && *keeper <= 1 && std::chrono::steady_clock::now() < pid_deadline) {
    std::this_thread::sleep_for(kPollInterval);
    keeper = LiveKeeper(dir);
  }
  // pid 0 or 1 would signal a process group or init: only a pid the keeper
  // wrote is signalled.
  if (keeper.has_value() && *keeper > 1) {
    kill(*keeper, SIGTERM);
    if (!KeeperGoneWithin(dir, kKeeperGrace)) {
      kill(*keeper, SIGKILL);
      if (!KeeperGoneWithin(dir, kKillTimeout)) {
        return MakeError(Errc::kTimeout, "the keeper of pool '{}' (pid {}) survived SIGKILL", name,
                         *keeper);
      }
    }
  }
  return RemoveLeftovers(name);
}

Result<LocalPool> ReadLocalPool(std::string_view name) {
  ROAM_TRY(CheckLocalPoolName(name));
  const fs::path path = LocalPoolDir(name) / "pool.json";
  const Result<std::string> text = ReadFile(path);
  if (!text.has_value()) {
    if (text.error().code() == Errc::kNotFound) {
      return MakeError(Errc::kNotFound, "no local pool '{}' is up", name);
    }
    return text.error();
  }
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return MakeError(Errc::kCorrupt, "{} is not JSON", path.string());
  return FromJson(j, path);
}

Result<std::string> LocalPoolSocket(std::string_view name, std::string_view node) {
  ROAM_ASSIGN_OR_RETURN(const LocalPool pool, ReadLocalPool(name));
  for (const LocalPoolNode& n : pool.nodes) {
    if (n.name == node) return n.socket;
  }
  return MakeError(Errc::kNotFound, "local pool '{}' has no node '{}' (n1 to n{})", name, node,
                   pool.nodes.size());
}

}  // namespace roam::launch
