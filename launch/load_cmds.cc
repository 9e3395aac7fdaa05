#include "launch/load_cmds.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "launch/control_client.h"
#include "launch/daemon/control.pb.h"

namespace roam::launch {
namespace {

struct Flags {
  std::string node;
  double wait = 0;
  bool json = false;
  double interval = 1.0;
  int iterations = 0;
} g_flags;

Result<control::NodesReply> AskNodes() {
  control::Request request;
  request.mutable_nodes();
  ROAM_ASSIGN_OR_RETURN(control::Reply reply, Call(request));
  return std::move(*reply.mutable_nodes());
}

// ---- drain, undrain -------------------------------------------------------

// Until `node` runs no guest, or `seconds` have passed.
int WaitDrained(const std::string& node, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::uint32_t left = 0;
  while (true) {
    auto nodes = AskNodes();
    if (!nodes) {
      Complain("drain", nodes.error().message());
      return 1;
    }
    for (const auto& n : nodes->nodes()) {
      if (n.name() == node) left = n.guests();
    }
    if (left == 0) {
      std::printf("%s runs no guests\n", node.c_str());
      return 0;
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  Complain("drain", fmt::format("{} still runs {} guest{} after {} s (`roam ps --all` shows "
                                "them; a process capture refuses stays)",
                                node, left, left == 1 ? "" : "s", seconds));
  return 1;
}

int RunDrain(bool undrain) {
  const char* command = undrain ? "undrain" : "drain";
  control::Request request;
  request.mutable_drain()->set_node(g_flags.node);
  request.mutable_drain()->set_undrain(undrain);
  auto reply = Call(request);
  if (!reply) {
    Complain(command, reply.error().message());
    return 1;
  }
  std::printf("%s\n", reply->done().message().c_str());
  if (!undrain && g_flags.wait > 0) return WaitDrained(g_flags.node, g_flags.wait);
  return 0;
}

// ---- idle -----------------------------------------------------------------

int RunIdle() {
  control::Request request;
  request.mutable_idle();
  auto reply = Call(request);
  if (!reply) {
    Complain("idle", reply.error().message());
    return 1;
  }
  if (g_flags.json) {
    nlohmann::json list = nlohmann::json::array();
    for (const auto& n : reply->idle().nodes()) {
      list.push_back({{"name", n.name()},
                      {"free_cpus", n.free_cpus()},
                      {"load_per_cpu", n.load_per_cpu()},
                      {"age_seconds", n.age_seconds()}});
    }
    std::printf("%s\n", list.dump(2).c_str());
    return 0;
  }
  if (reply->idle().nodes().empty()) {
    std::printf("no node known to have a CPU free\n");
    return 0;
  }
  std::printf("%-8s %9s %8s %6s\n", "NODE", "FREE CPUS", "LOAD/CPU", "AGE");
  for (const auto& n : reply->idle().nodes()) {
    std::printf("%-8s %9.2f %8.2f %5.1fs\n", n.name().c_str(), n.free_cpus(), n.load_per_cpu(),
                n.age_seconds());
  }
  return 0;
}

// ---- top ------------------------------------------------------------------

struct Rates {
  double in = 0;
  double out = 0;
};

// Moves per second at each node between two frames `seconds` apart.
std::map<std::string, Rates> MoveRates(const control::NodesReply& before,
                                       const control::NodesReply& now, double seconds) {
  std::map<std::string, Rates> rates;
  if (seconds <= 0) return rates;
  for (const auto& n : now.nodes()) {
    for (const auto& b : before.nodes()) {
      if (b.name() != n.name() || b.state() == "unreachable" || n.state() == "unreachable") {
        continue;
      }
      // A restarted daemon counts from 0 again.
      auto delta = [](std::uint64_t a, std::uint64_t z) { return z >= a ? z - a : z; };
      rates[n.name()] = {
          static_cast<double>(delta(b.migrations_in(), n.migrations_in())) / seconds,
          static_cast<double>(delta(b.migrations_out(), n.migrations_out())) / seconds};
    }
  }
  return rates;
}

// Runnable tasks against the CPUs offered, ten characters: '#' for each
// tenth of the CPUs in use, '+' at the end when there are more tasks than
// CPUs.
std::string LoadBar(double runnable, double cpus) {
  const double share = cpus > 0 ? runnable / cpus : 0;
  const int filled = std::clamp(static_cast<int>(share * 10 + 0.5), 0, 10);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(10, '.');
  if (share > 1.05) bar.back() = '+';
  return bar;
}

std::string Clock() {
  const std::time_t t = std::time(nullptr);
  std::tm local{};
  localtime_r(&t, &local);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%H:%M:%S", &local);
  return buf;
}

// "mosix", or "mosix/at" for a node whose information travels by
// anti-tasks.
std::string BalanceColumn(const control::NodeInfo& n) {
  return n.gossip() == "antitask" ? n.balance() + "/at" : n.balance();
}

std::string RenderTop(const control::NodesReply& nodes, const std::map<std::string, Rates>& rates) {
  std::string out =
      fmt::format("roam top  {}  every {:.1f} s  (Ctrl-C ends)\n", Clock(), g_flags.interval);
  out += fmt::format("{:<8} {:<11} {:<8} {:>5} {:>6} {:<10} {:>5} {:>5} {:>6} {:>6} {:>6}\n",
                     "NODE", "STATE", "BALANCE", "CPUS", "RUNQ", "", "USED", "PROCS", "GUESTS",
                     "IN/s", "OUT/s");
  double cpus = 0;
  double used = 0;
  double moves = 0;
  std::uint32_t processes = 0;
  std::uint32_t guests = 0;
  int up = 0;
  for (const auto& n : nodes.nodes()) {
    if (n.state() == "unreachable") {
      out += fmt::format("{:<8} {:<11}\n", n.name(), n.state());
      continue;
    }
    ++up;
    cpus += n.cpus();
    used += n.load();
    processes += n.processes();
    guests += n.guests();
    // Rates need two frames: "-" in the first.
    const auto r = rates.find(n.name());
    std::string in = "-";
    std::string away = "-";
    if (r != rates.end()) {
      moves += r->second.in;
      in = fmt::format("{:.1f}", r->second.in);
      away = fmt::format("{:.1f}", r->second.out);
    }
    out += fmt::format(
        "{:<8} {:<11} {:<8} {:>5.2f} {:>6.2f} {:<10} {:>5.2f} {:>5} {:>6} {:>6} {:>6}\n", n.name(),
        n.state(), BalanceColumn(n), n.cpus(), n.runnable(), LoadBar(n.runnable(), n.cpus()),
        n.load(), n.processes(), n.guests(), in, away);
  }
  out +=
      fmt::format("pool: {} of {} nodes up, {} processes ({} guests), {:.2f} of {:.2f} CPUs used",
                  up, nodes.nodes_size(), processes, guests, used, cpus);
  out += rates.empty() ? "\n" : fmt::format(", {:.1f} migrations/s\n", moves);
  return out;
}

nlohmann::json TopJson(const control::NodesReply& nodes,
                       const std::map<std::string, Rates>& rates) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& n : nodes.nodes()) {
    const auto r = rates.find(n.name());
    const Rates rate = r == rates.end() ? Rates{} : r->second;
    list.push_back({{"name", n.name()},
                    {"state", n.state()},
                    {"balance", n.balance()},
                    {"gossip", n.gossip()},
                    {"cpus", n.cpus()},
                    {"runnable", n.runnable()},
                    {"used_cpus", n.load()},
                    {"processes", n.processes()},
                    {"guests", n.guests()},
                    {"migrations_in", n.migrations_in()},
                    {"migrations_out", n.migrations_out()},
                    {"in_per_second", rate.in},
                    {"out_per_second", rate.out}});
  }
  const double unix_seconds =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  return {{"time", unix_seconds}, {"nodes", list}};
}

int RunTop() {
  if (!(g_flags.interval >= 0.1)) {
    Complain("top", fmt::format("--interval {} is below 0.1 s", g_flags.interval));
    return 2;
  }
  const bool terminal = isatty(STDOUT_FILENO) != 0 && !g_flags.json;
  control::NodesReply before;
  auto before_at = std::chrono::steady_clock::now();
  for (int frame = 0; g_flags.iterations == 0 || frame < g_flags.iterations; ++frame) {
    if (frame > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(g_flags.interval));
    }
    auto nodes = AskNodes();
    if (!nodes) {
      Complain("top", nodes.error().message());
      return 1;
    }
    const auto now = std::chrono::steady_clock::now();
    const auto rates =
        frame == 0
            ? std::map<std::string, Rates>{}
            : MoveRates(before, *nodes, std::chrono::duration<double>(now - before_at).count());
    if (g_flags.json) {
      std::printf("%s\n", TopJson(*nodes, rates).dump().c_str());
    } else {
      // On a terminal each frame replaces the last; elsewhere they follow
      // one another.
      std::printf("%s%s", terminal ? "\033[H\033[2J" : (frame > 0 ? "\n" : ""),
                  RenderTop(*nodes, rates).c_str());
    }
    std::fflush(stdout);
    before = std::move(*nodes);
    before_at = now;
  }
  return 0;
}

}  // namespace

void AddLoadCommands(CLI::App& app) {
  CLI::App* drain = app.add_subcommand(
      "drain", "Empty a node: it takes no new guests and sends those it has away");
  drain->add_option("node", g_flags.node, "The node")->required();
  drain
      ->add_option("--wait", g_flags.wait,
                   "Wait up to this many seconds until it runs no guests (exit 1 if it still "
                   "does)")
      ->check(CLI::Range(0.0, 86'400.0));
  CLI::App* undrain = app.add_subcommand("undrain", "Let a drained node take guests again");
  undrain->add_option("node", g_flags.node, "The node")->required();

  CLI::App* idle = app.add_subcommand("idle", "List the nodes with a CPU free, most room first");
  idle->add_flag("--json", g_flags.json, "Print JSON");

  CLI::App* top =
      app.add_subcommand("top", "Watch the pool: load per node, guests, migrations per second");
  top->add_option("-d,--interval", g_flags.interval, "Seconds between frames (default 1)");
  top->add_option("-n,--iterations", g_flags.iterations,
                  "Stop after this many frames (default: until interrupted)")
      ->check(CLI::Range(0, 1'000'000'000));
  top->add_flag("--json", g_flags.json, "One JSON object per frame");
}

int RunLoadCommands(const CLI::App& app) {
  if (app.get_subcommand("drain")->parsed()) return RunDrain(/*undrain=*/false);
  if (app.get_subcommand("undrain")->parsed()) return RunDrain(/*undrain=*/true);
  if (app.get_subcommand("idle")->parsed()) return RunIdle();
  if (app.get_subcommand("top")->parsed()) return RunTop();
  return -1;
}

}  // namespace roam::launch
