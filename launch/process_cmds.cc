#include "launch/process_cmds.h"

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "launch/control_client.h"
#include "launch/daemon/control.pb.h"
#include "launch/daemon/node.h"

extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace roam::launch {
namespace {

struct Flags {
  std::string node;
  std::vector<std::string> command;
  bool json = false;
  bool all = false;
  bool verbose = false;
  std::string id;
  std::string signal = "TERM";
  std::string to;
  std::string mode = "stop-copy";
} g_flags;

constexpr std::size_t kStdinChunk = 64 * 1024;

std::optional<int> ParseSignal(const std::string& text) {
  if (!text.empty() && std::isdigit(static_cast<unsigned char>(text[0])) != 0) {
    char* end = nullptr;
    const long n = std::strtol(text.c_str(), &end, 10);  // NOLINT(google-runtime-int)
    if (*end == '\0' && n > 0 && n < NSIG) return static_cast<int>(n);
    return std::nullopt;
  }
  std::string name = text;
  if (name.rfind("SIG", 0) == 0) name = name.substr(3);
  for (int s = 1; s < NSIG; ++s) {
    const char* abbrev = sigabbrev_np(s);
    if (abbrev != nullptr && name == abbrev) return s;
  }
  return std::nullopt;
}

// ---- run ------------------------------------------------------------------

control::Run BuildRun() {
  control::Run run;
  for (const auto& a : g_flags.command) run.add_argv(a);
  for (char** e = environ; *e != nullptr; ++e) run.add_env(*e);
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) != nullptr) run.set_cwd(cwd);
  const mode_t mask = umask(0);
  umask(mask);
  run.set_umask(mask);
  for (int r = 0; r < RLIMIT_NLIMITS; ++r) {
    rlimit lim{};
    if (getrlimit(r, &lim) != 0) continue;
    auto* l = run.add_limits();
    l->set_resource(r);
    l->set_cur(lim.rlim_cur);
    l->set_max(lim.rlim_max);
  }
  run.set_node(g_flags.node);
  return run;
}

int ExitCodeForStartError(const Error& e) {
  if (e.code() == Errc::kNotFound) return 127;
  if (e.code() == Errc::kPermissionDenied) return 126;
  return 1;
}

int RunRun() {
  // Signals a user sends to `roam run` go to the process; they are read
  // from a signalfd so nothing is lost between polls.
  sigset_t forwarded;
  sigemptyset(&forwarded);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) sigaddset(&forwarded, s);
  sigprocmask(SIG_BLOCK, &forwarded, nullptr);
  UniqueFd sigfd(signalfd(-1, &forwarded, SFD_CLOEXEC | SFD_NONBLOCK));
  signal(SIGPIPE, SIG_IGN);

  control::Request request;
  *request.mutable_run() = BuildRun();
  auto fd = Open(std::move(request));
  if (!fd) {
    Complain("run", fd.error().message());
    return 1;
  }
  bool started = false;
  bool stdin_open = true;
  bool stdin_in_flight = false;
  std::array<bool, 3> out_open = {true, true, true};
  for (;;) {
    pollfd fds[3] = {{fd->get(), POLLIN, 0}, {sigfd.get(), POLLIN, 0}, {0, 0, 0}};
    nfds_t n = 2;
    if (started && stdin_open && !stdin_in_flight) {
      fds[2] = {STDIN_FILENO, POLLIN, 0};
      n = 3;
    }
    if (poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      Complain("run", fmt::format("poll: {}", std::strerror(errno)));
      return 1;
    }
    if ((fds[1].revents & POLLIN) != 0) {
      signalfd_siginfo info{};
      while (read(sigfd.get(), &info, sizeof(info)) == sizeof(info)) {
        control::Request sig;
        sig.mutable_signal()->set_signo(static_cast<int>(info.ssi_signo));
        (void)SendRequest(fd->get(), sig);
      }
    }
    if (n == 3 && (fds[2].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      std::string chunk(kStdinChunk, '\0');
      const ssize_t got = read(STDIN_FILENO, chunk.data(), chunk.size());
      control::Request in;
      if (got > 0) {
        chunk.resize(static_cast<std::size_t>(got));
        in.mutable_stdin_data()->set_data(std::move(chunk));
        stdin_in_flight = true;
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        in.mutable_stdin_close();
        stdin_open = false;
      }
      if (in.what_case() != control::Request::WHAT_NOT_SET) (void)SendRequest(fd->get(), in);
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    auto reply = ReceiveReply(fd->get());
    if (!reply) {
      if (!started) {
        Complain("run", reply.error().message());
        return ExitCodeForStartError(reply.error());
      }
      if (reply.error().code() != Errc::kUnavailable) {
        Complain("run", reply.error().message());  // a refusal: the run goes on
        continue;
      }
      Complain("run", fmt::format("lost contact with roamd: {}", reply.error().message()));
      return daemon::kLostExitCode;
    }
    switch (reply->what_case()) {
      case control::Reply::kStarted:
        started = true;
        if (g_flags.verbose) {
          std::fprintf(stderr, "roam: %s runs on %s\n", reply->started().id().c_str(),
                       reply->started().node().c_str());
        }
        break;
      case control::Reply::kOutput: {
        const int out = reply->output().fd() == 2 ? 2 : 1;
        if (!out_open[static_cast<std::size_t>(out)]) break;
        const std::string& data = reply->output().data();
        if (!WriteAll(out, std::as_bytes(std::span(data.data(), data.size())), "stdout")) {
          out_open[static_cast<std::size_t>(out)] = false;  // reader gone: drop the rest
        }
        break;
      }
      case control::Reply::kStdinAck:
        stdin_in_flight = false;
        break;
      case control::Reply::kExited: {
        const auto& ex = reply->exited();
        if (!ex.message().empty()) Complain("run", ex.message());
        return ex.exit_code();
      }
      default:
        break;
    }
  }
}

// ---- ps, nodes, kill, migrate --------------------------------------------

// The command line on one line: control characters (a newline in a
// `python3 -c` program) become spaces.
std::string FormatArgv(const control::ProcessInfo& p) {
  std::string out;
  for (const auto& a : p.argv()) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  return out;
}

int RunPs() {
  control::Request request;
  request.mutable_ps()->set_all(g_flags.all);
  auto reply = Call(request);
  if (!reply) {
    Complain("ps", reply.error().message());
    return 1;
  }
  if (g_flags.json) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& p : reply->ps().processes()) {
      list.push_back({{"id", p.id()},
                      {"command", FormatArgv(p)},
                      {"home", p.home()},
                      {"node", p.node()},
                      {"state", p.state()},
                      {"uid", p.uid()},
                      {"pid", p.pid()},
                      {"cpu_seconds", p.cpu_seconds()},
                      {"migrations", p.migrations()},
                      {"note", p.note()}});
    }
    std::printf("%s\n", list.dump(2).c_str());
    return 0;
  }
  std::printf("%-10s %-6s %-6s %-11s %8s %5s  %s\n", "ID", "HOME", "NODE", "STATE", "CPU", "MIGR",
              "COMMAND");
  for (const auto& p : reply->ps().processes()) {
    std::printf("%-10s %-6s %-6s %-11s %7.1fs %5u  %s\n", p.id().c_str(), p.home().c_str(),
                p.node().c_str(), p.state().c_str(), p.cpu_seconds(), p.migrations(),
                FormatArgv(p).c_str());
    if (!p.note().empty()) std::printf("%-10s %s\n", "", p.note().c_str());
  }
  return 0;
}

int RunNodes() {
  control::Request request;
  request.mutable_nodes();
  auto reply = Call(request);
  if (!reply) {
    Complain("nodes", reply.error().message());
    return 1;
  }
  if (g_flags.json) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& n : reply->nodes().nodes()) {
      list.push_back({{"name", n.name()},
                      {"address", n.address()},
                      {"cpus", n.cpus()},
                      {"load", n.load()},
                      {"processes", n.processes()},
                      {"state", n.state()},
                      {"dropped_messages", n.dropped()},
                      {"guests", n.guests()},
                      {"balance", n.balance()},
                      {"gossip", n.gossip()},
                      {"free_cores", n.free_cores()}});
    }
    std::printf("%s\n", list.dump(2).c_str());
    return 0;
  }
  std::printf("%-6s %-16s %5s %5s %5s  %s\n", "NODE", "ADDRESS", "CPUS", "LOAD", "PROCS", "STATE");
  for (const auto& n : reply->nodes().nodes()) {
    std::printf("%-6s %-16s %5.2f %5.2f %5u  %s\n", n.name().c_str(), n.address().c_str(), n.cpus(),
                n.load(), n.processes(), n.state().c_str());
  }
  return 0;
}

int RunKill() {
  const auto signo = ParseSignal(g_flags.signal);
  if (!signo) {
    Complain("kill", fmt::format("no signal '{}'", g_flags.signal));
    return 2;
  }
  control::Request request;
  request.mutable_kill()->set_id(g_flags.id);
  request.mutable_kill()->set_signo(*signo);
  auto reply = Call(request);
  if (!reply) {
    Complain("kill", reply.error().message());
    return 1;
  }
  return 0;
}

int RunMigrate() {
  control::Request request;
  request.mutable_migrate()->set_id(g_flags.id);
  request.mutable_migrate()->set_to(g_flags.to);
  request.mutable_migrate()->set_mode(g_flags.mode);
  auto fd = Open(std::move(request));
  if (!fd) {
    Complain("migrate", fd.error().message());
    return 1;
  }
  // A long move reports progress first; on a terminal it is shown on one
  // line that the result replaces.
  const bool terminal = isatty(STDERR_FILENO) != 0;
  bool shown = false;
  Result<control::Reply> reply = ReceiveReply(fd->get());
  while (reply && reply->has_progress()) {
    if (terminal) {
      const auto& p = reply->progress();
      std::fprintf(stderr, "\r%s: %.0f / %.0f MiB", p.what().c_str(),
                   static_cast<double>(p.done()) / (1 << 20),
                   static_cast<double>(p.total()) / (1 << 20));
      shown = true;
    }
    reply = ReceiveReply(fd->get());
  }
  if (shown) std::fputs("\r\033[K", stderr);
  if (!reply) {
    Complain("migrate", reply.error().message());
    return 1;
  }
  if (g_flags.json) {
    const auto& m = reply->done().moved();
    const nlohmann::json out = {{"id", m.id()},
                                {"from", m.from()},
                                {"to", m.to()},
                                {"mode", m.mode()},
                                {"downtime_ms", static_cast<double>(m.downtime_ns()) / 1e6},
                                {"total_ms", static_cast<double>(m.total_ns()) / 1e6},
                                {"bytes", m.bytes()},
                                {"restore_ms", static_cast<double>(m.restore_ns()) / 1e6},
                                {"bytes_frozen", m.bytes_frozen()},
                                {"rounds", m.rounds()}};
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  if (reply->has_done()) std::printf("%s\n", reply->done().message().c_str());
  return 0;
}

}  // namespace

std::vector<std::string> RewriteKillSignal(std::vector<std::string> args) {
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] != "kill") continue;
    const std::string& next = args[i + 1];
    if (next.size() > 1 && next[0] == '-' && next[1] != '-' && next != "-s" && next != "-h") {
      args[i + 1] = next.substr(1);
      args.insert(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, "--signal");
    }
    break;
  }
  return args;
}

void AddProcessCommands(CLI::App& app) {
  CLI::App* run = app.add_subcommand("run", "Run a program on the pool; it stays at home here");
  run->add_option("--node", g_flags.node, "Run it on this node (default: this one)");
  run->add_flag("-v,--verbose", g_flags.verbose, "Say where it runs");
  run->add_option("command", g_flags.command, "The program and its arguments (after --)")
      ->required();
  run->positionals_at_end();

  // The task wrapper for launchers: `srun roam exec -- ./app` stays, as the
  // task Slurm sees, the process's deputy on its home node (stdio, signals
  // such as scancel's, the exit status), while the pool places and moves it.
  CLI::App* exec = app.add_subcommand(
      "exec",
      "Hand a program to this node's roamd as a launcher's task: the pool places it "
      "and may move it; this stays its deputy here");
  exec->add_flag("-v,--verbose", g_flags.verbose, "Say where it runs");
  exec->add_option("command", g_flags.command, "The program and its arguments (after --)")
      ->required();
  exec->positionals_at_end();

  CLI::App* ps = app.add_subcommand("ps", "List the processes whose home is this node");
  ps->add_flag("--json", g_flags.json, "Print JSON");
  ps->add_flag("--all", g_flags.all, "Every node's processes");

  CLI::App* kill = app.add_subcommand("kill", "Send a signal to a process (default SIGTERM)");
  kill->add_option("-s,--signal", g_flags.signal, "Signal name or number (also -9, -KILL)");
  kill->add_option("id", g_flags.id, "Process id (n1:3, or 3 for one whose home is here)")
      ->required();

  CLI::App* migrate = app.add_subcommand("migrate", "Move a running process to another node");
  migrate->add_option("id", g_flags.id, "Process id")->required();
  migrate->add_option("--to", g_flags.to, "Target node")->required();
  migrate->add_option("--mode", g_flags.mode, "stop-copy, pre-copy or post-copy")
      ->check(CLI::IsMember({"stop-copy", "pre-copy", "post-copy"}));
  migrate->add_flag("--json", g_flags.json, "Print the move's figures as JSON");

  CLI::App* nodes = app.add_subcommand("nodes", "List the pool's nodes");
  nodes->add_flag("--json", g_flags.json, "Print JSON");
}

int RunProcessCommands(const CLI::App& app) {
  if (app.get_subcommand("run")->parsed() || app.get_subcommand("exec")->parsed()) return RunRun();
  if (app.get_subcommand("ps")->parsed()) return RunPs();
  if (app.get_subcommand("kill")->parsed()) return RunKill();
  if (app.get_subcommand("migrate")->parsed()) return RunMigrate();
  if (app.get_subcommand("nodes")->parsed()) return RunNodes();
  return -1;
}

}  // namespace roam::launch
