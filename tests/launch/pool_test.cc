// A pool as users meet it: three roamds, each in a network namespace of its
// own (roam::local_nodes), talking UCX over tcp, driven through the built
// `roam` program: remote execution with exit codes, output and signals,
// stdin streamed to a remote process, `roam ps` at home, ownership, and a
// process whose node is lost.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/daemon/control_socket.h"
#include "launch/node_cgroup.h"
#include "launch/pool/pool_key.h"
#include "roam/launch/local_nodes.h"
#include "tests/support/test_util.h"

namespace roam {
namespace {

using testing::BuildDir;
using testing::CommandResult;
using testing::ReadFile;
using testing::RunCommand;
using testing::TempDir;

std::string Bin(std::string_view name) { return (BuildDir() / "bin" / name).string(); }

bool Alive(pid_t pid) { return kill(pid, 0) == 0; }

class PoolTest : public ::testing::Test {
 protected:
  static constexpr int kNodes = 3;

  void SetUp() override {
    ROAM_SKIP_UNLESS_ROOT("network namespaces for the nodes");
    // Other users (the ownership test) must reach the sockets.
    ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
    launch::LocalNodesOptions options;
    options.nodes = kNodes;
    auto nodes = launch::LocalNodes::Create(options);
    ASSERT_TRUE(nodes) << nodes.error().ToString();
    nodes_ = std::move(*nodes);
    ASSERT_TRUE(pool::PoolKey::Generate(dir_.path() / "pool.key"));
    // Each node's guests in a cgroup of their own, as in a local pool,
    // where this machine has a v1 cpu controller.
    if (auto mount = launch::CpuCgroupMount()) {
      cgroups_ = *mount / ("roam-pooltest-" + std::to_string(getpid()));
      for (int i = 0; i < kNodes; ++i) {
        ASSERT_TRUE(launch::CreateNodeCgroup(cgroups_ / Name(i), 1.0));
      }
    }
    for (int i = 0; i < kNodes; ++i) {
      std::vector<std::string> argv = {Bin("roamd"),
                                       "--name",
                                       Name(i),
                                       "--rank",
                                       std::to_string(i),
                                       "--size",
                                       std::to_string(kNodes),
                                       "--bootstrap",
                                       "dir:" + (dir_.path() / "boot").string(),
                                       "--socket",
                                       Socket(i),
                                       "--pool-key",
                                       (dir_.path() / "pool.key").string(),
                                       "--cpus",
                                       "1"};
      if (!cgroups_.empty()) {
        argv.push_back("--guest-cgroup");
        argv.push_back(GuestCgroup(i).string());
      }
      if (!balance_.empty()) {
        argv.push_back("--balance");
        argv.push_back(balance_);
      }
      argv.insert(argv.end(), node_args_[i].begin(), node_args_[i].end());
      launch::LocalNodes::Environment env = {{"UCX_TLS", "tcp"}, {"UCX_NET_DEVICES", "eth0"}};
      if (i == fault_node_) env.emplace_back("ROAM_FAULT", fault_);
      auto pid = nodes_->Spawn(i, argv, env);
      ASSERT_TRUE(pid) << pid.error().ToString();
      daemons_.push_back(*pid);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (int i = 0; i < kNodes; ++i) {
      while (!daemon::ConnectControlSocket(Socket(i))) {
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "roamd " << Name(i) << " not up";
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }

  void TearDown() override {
    for (pid_t pid : daemons_) {
      if (pid > 0) kill(pid, SIGTERM);
    }
    for (pid_t pid : daemons_) {
      if (pid <= 0) continue;
      for (int i = 0; i < 100 && waitpid(pid, nullptr, WNOHANG) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (kill(pid, SIGKILL) == 0) waitpid(pid, nullptr, 0);
    }
    for (pid_t pid : background_) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (!cgroups_.empty()) {
      EXPECT_TRUE(launch::KillCgroupTree(cgroups_, std::chrono::seconds(10)));
      EXPECT_TRUE(launch::RemoveCgroupTree(cgroups_));
    }
  }

  // Node i's daemon dies at once, as a lost node's would.
  void KillDaemon(int i) {
    kill(daemons_[i], SIGKILL);
    waitpid(daemons_[i], nullptr, 0);
    daemons_[i] = -1;
  }

  std::filesystem::path GuestCgroup(int i) const { return cgroups_ / Name(i) / "guests"; }

  static std::string Name(int i) { return "n" + std::to_string(i + 1); }
  std::string Socket(int i) const { return (dir_.path() / (Name(i) + ".sock")).string(); }

  // The start of a bash line for roam against node i's daemon: fd 251
  // closed, ROAM_SOCKET set for the command that follows.
  std::string RoamLine(int i) const { return "exec 251>&-; ROAM_SOCKET=" + Socket(i) + " "; }

  // `roam ARGS` against node i's daemon, with a shell line's redirections.
  CommandResult Roam(int i, const std::string& args) const {
    return RunCommand({"/bin/bash", "-c", RoamLine(i) + Bin("roam") + " " + args});
  }

  // `roam ARGS` in the background; its stdout and stderr go to files.
  pid_t RoamInBackground(int i, const std::string& args, const std::string& tag) {
    // Built before fork: the child of a threaded process must not allocate.
    const std::string line = RoamLine(i) + "exec " + Bin("roam") + " " + args + " >" +
                             (dir_.path() / (tag + ".out")).string() + " 2>" +
                             (dir_.path() / (tag + ".err")).string();
    const pid_t pid = fork();
    if (pid == 0) {
      execl("/bin/bash", "bash", "-c", line.c_str(), nullptr);
      _exit(127);
    }
    background_.push_back(pid);
    return pid;
  }

  // Waits for a background roam; its exit status (128 + signal if killed).
  int Wait(pid_t pid, std::chrono::seconds limit = std::chrono::seconds(30)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "roam (pid " << pid << ") still running after " << limit.count() << " s";
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::erase(background_, pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  // The processes `roam ps --json` shows on node i.
  nlohmann::json Ps(int i) const {
    const auto r = Roam(i, "ps --json");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out, nullptr, false);
  }

  // Waits until node i's ps shows a process in state `state`; returns it.
  nlohmann::json WaitForProcess(int i, const std::string& state = "running") const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      const auto ps = Ps(i);
      if (ps.is_array() && !ps.empty() && ps[0]["state"] == state) return ps[0];
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "no " << state << " process on " << Name(i);
    return {};
  }

  TempDir dir_;
  std::filesystem::path cgroups_;  // empty without a v1 cpu controller
  std::unique_ptr<launch::LocalNodes> nodes_;
  std::vector<pid_t> daemons_;
  // A named fault (ROAM_FAULT) for one node's daemon, set by a fixture's
  // constructor.
  int fault_node_ = -1;
  std::string fault_;
  // roamd --balance for every node, set by a fixture's constructor. Off
  // unless a test is about load sharing: the others place and move
  // processes by hand and expect them where they put them.
  std::string balance_ = "off";
  // More roamd arguments for node i, set by a fixture's constructor.
  std::array<std::vector<std::string>, kNodes> node_args_;
  std::vector<pid_t> background_;
};

TEST_F(PoolTest, NodesListsTheWholePool) {
  const auto r = Roam(1, "nodes --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto nodes = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(nodes.is_array()) << r.out;
  ASSERT_EQ(nodes.size(), static_cast<std::size_t>(kNodes)) << r.out;
  for (int i = 0; i < kNodes; ++i) {
    EXPECT_EQ(nodes[i]["name"], Name(i));
    EXPECT_EQ(nodes[i]["address"], nodes_->address(i));
    EXPECT_EQ(nodes[i]["state"], "up");
    EXPECT_DOUBLE_EQ(nodes[i]["cpus"].get<double>(), 1.0);
    EXPECT_EQ(nodes[i]["dropped_messages"], 0);
  }
}

TEST_F(PoolTest, RunsAtHomeAndRemotelyWithOutputAndExitCode) {
  for (const std::string node : {"", "--node n3 "}) {
    const auto r = Roam(0, "run " + node + "-- sh -c 'echo out; echo err >&2; exit 3'");
    EXPECT_EQ(r.exit_code, 3) << node << r.err;
    EXPECT_EQ(r.out, "out\n") << node;
    EXPECT_EQ(r.err, "err\n") << node;
  }
}

TEST_F(PoolTest, TheCallersLimitsUmaskAndDirectoryGoAlong) {
  // Lowered in the calling shell: the remote process has the same, and
  // cannot have more than the caller's hard limit whatever roam sends.
  const auto r = RunCommand({"/bin/bash", "-c",
                             "exec 251>&-; cd " + dir_.path().string() +
                                 " && ulimit -Sn 123 && ulimit -Hn 300 && " +
                                 "umask 027 && ROAM_SOCKET=" + Socket(0) + " " + Bin("roam") +
                                 " run --node n3 -- sh -c 'ulimit -Sn; ulimit -Hn; umask; pwd'"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "123\n300\n0027\n" + dir_.path().string() + "\n");
}

TEST_F(PoolTest, RemoteProcessRunsInTheTargetNodesNetwork) {
  // The guest runs in n2's network namespace: its eth0 has n2's address.
  const auto r = Roam(0, "run --node n2 -- ip -4 -o addr show dev eth0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(nodes_->address(1) + "/"), std::string::npos) << r.out;
}

TEST_F(PoolTest, CommandNotFoundIsExit127AndOneLine) {
  const auto r = Roam(0, "run --node n2 -- /nonexistent/program");
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_NE(r.err.find("/nonexistent/program"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  const auto unknown = Roam(0, "run --node n9 -- true");
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.err.find("no node 'n9'"), std::string::npos) << unknown.err;
}

TEST_F(PoolTest, StdinStreamsToARemoteProcess) {
  // 3 MiB through the home node to n3 and back, checked by its digest.
  const auto input = dir_.path() / "input";
  ASSERT_EQ(
      RunCommand({"/bin/sh", "-c", "head -c 3145728 /dev/urandom > " + input.string()}).exit_code,
      0);
  const auto expected = RunCommand({"/usr/bin/sha256sum", input.string()});
  const auto r = Roam(0, "run --node n3 -- sha256sum < " + input.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, 64), expected.out.substr(0, 64));
  // And the output path carries as much back.
  const auto cat = Roam(0, "run --node n2 -- cat < " + input.string() + " | sha256sum");
  EXPECT_EQ(cat.out.substr(0, 64), expected.out.substr(0, 64));
}

TEST_F(PoolTest, PsAtHomeShowsTheCurrentNodeAndKillEndsIt) {
  const pid_t roam = RoamInBackground(0, "run --node n2 -- sleep 60", "sleep");
  const auto p = WaitForProcess(0);
  EXPECT_EQ(p["home"], "n1");
  EXPECT_EQ(p["node"], "n2");
  EXPECT_EQ(p["command"], "sleep 60");
  EXPECT_EQ(p["uid"], 0);
  EXPECT_EQ(p["pid"], 2) << "pid inside its own namespace, behind roam's init";
  // The id works from any node of the pool.
  const auto k = Roam(2, "kill -KILL " + p["id"].get<std::string>());
  EXPECT_EQ(k.exit_code, 0) << k.err;
  EXPECT_EQ(Wait(roam), 128 + SIGKILL);
  EXPECT_TRUE(Ps(0).empty());
}

TEST_F(PoolTest, SignalsToRoamRunReachTheProcess) {
  const pid_t roam = RoamInBackground(
      0, "run --node n3 -- sh -c 'trap \"echo got INT; exit 42\" INT; sleep 60 & wait'", "trap");
  WaitForProcess(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // trap set
  ASSERT_EQ(kill(roam, SIGINT), 0);
  EXPECT_EQ(Wait(roam), 42);
  EXPECT_EQ(ReadFile(dir_.path() / "trap.out"), "got INT\n");
}

TEST_F(PoolTest, ANonOwnerCannotKillAndRunsAsThemselves) {
  const pid_t roam = RoamInBackground(0, "run --node n2 -- sleep 60", "owned");
  const auto p = WaitForProcess(0);
  const std::string id = p["id"];
  const std::string as_nobody =
      "setpriv --reuid=65534 --regid=65534 --clear-groups env ROAM_SOCKET=" + Socket(0) + " " +
      Bin("roam");
  const auto refused = RunCommand({"/bin/sh", "-c", as_nobody + " kill -KILL " + id});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("belongs to uid 0"), std::string::npos) << refused.err;
  EXPECT_TRUE(Alive(roam));
  EXPECT_EQ(Ps(0)[0]["state"], "running");

  const auto mine =
      RunCommand({"/bin/sh", "-c", "cd / && " + as_nobody + " run --node n3 -- id -u"});
  EXPECT_EQ(mine.exit_code, 0) << mine.err;
  EXPECT_EQ(mine.out, "65534\n");
  ASSERT_EQ(Roam(0, "kill " + id).exit_code, 0);
  EXPECT_EQ(Wait(roam), 128 + SIGTERM);
}

TEST_F(PoolTest, AProcessWhoseNodeIsLostEndsWithAClearStatus) {
  const pid_t roam = RoamInBackground(0, "run --node n2 -- sleep 60", "lost");
  WaitForProcess(0);
  KillDaemon(1);
  EXPECT_EQ(Wait(roam, std::chrono::seconds(20)), 255);
  EXPECT_NE(ReadFile(dir_.path() / "lost.err").find("lost"), std::string::npos)
      << ReadFile(dir_.path() / "lost.err");
  EXPECT_TRUE(Ps(0).empty());
  const auto r = Roam(0, "nodes --json");
  const auto nodes = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_TRUE(nodes.is_array()) << r.out << r.err;
  EXPECT_EQ(nodes[1]["state"], "unreachable");
}

// A python3 loop that prints as it goes; its whole output is known ahead.
constexpr const char* kCounter =
    "python3 -c 'import time\nfor i in range(60):\n    print(i, i * i, flush=True)\n    "
    "time.sleep(0.05)'";
std::string CounterOutput() {
  std::string out;
  for (int i = 0; i < 60; ++i) out += std::to_string(i) + " " + std::to_string(i * i) + "\n";
  return out;
}

TEST_F(PoolTest, MigratesARunningProgramInEveryModeAndItsOutputIsUnchanged) {
  for (const std::string mode : {"stop-copy", "pre-copy", "post-copy"}) {
    SCOPED_TRACE(mode);
    const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kCounter, "counter");
    const auto p = WaitForProcess(0);
    const std::string id = p["id"];
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const auto moved = Roam(0, "migrate " + id + " --to n3 --mode " + mode + " --json");
    ASSERT_EQ(moved.exit_code, 0) << moved.err;
    const auto figures = nlohmann::json::parse(moved.out, nullptr, false);
    EXPECT_EQ(figures["mode"], mode) << moved.out;
    EXPECT_EQ(figures["from"], "n2");
    EXPECT_EQ(figures["to"], "n3");
    const auto now = Ps(0);
    ASSERT_EQ(now.size(), 1u);
    EXPECT_EQ(now[0]["node"], "n3");
    EXPECT_EQ(now[0]["migrations"], 1);
    EXPECT_EQ(now[0]["pid"], p["pid"]) << "same pid in its namespace after the move";
    EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "counter.err");
    EXPECT_EQ(ReadFile(dir_.path() / "counter.out"), CounterOutput());
  }
}

// `roam migrate` on a node that is not the process's home is decided at
// home and answered when the move ends, as at home: figures, then `roam
// ps` shows it there.
TEST_F(PoolTest, AMigrateAskedAwayFromHomeAnswersWhenTheMoveIsOver) {
  const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kCounter, "counter");
  const std::string id = WaitForProcess(0)["id"];
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto refused = Roam(2, "migrate " + id + " --to n2");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("already runs on n2"), std::string::npos) << refused.err;
  const auto moved = Roam(2, "migrate " + id + " --to n3 --json");
  ASSERT_EQ(moved.exit_code, 0) << moved.err;
  const auto figures = nlohmann::json::parse(moved.out, nullptr, false);
  EXPECT_EQ(figures["from"], "n2") << moved.out;
  EXPECT_EQ(figures["to"], "n3") << moved.out;
  EXPECT_EQ(Ps(0)[0]["node"], "n3");
  EXPECT_EQ(Ps(0)[0]["state"], "running");
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "counter.err");
  EXPECT_EQ(ReadFile(dir_.path() / "counter.out"), CounterOutput());
}

TEST_F(PoolTest, AProcessRunsInTheGuestCgroupOfWhicheverNodeItIsOn) {
  if (cgroups_.empty()) GTEST_SKIP() << "no cgroup v1 cpu controller here";
  // It prints its own cpu cgroup ten times a second for six seconds.
  const std::string watcher =
      "python3 -u -c \"import time\nfor i in range(60):\n"
      "  print([l for l in open('/proc/self/cgroup') if ':cpu:' in l][0].strip())\n"
      "  time.sleep(0.1)\"";
  const pid_t roam = RoamInBackground(0, "run -- " + watcher, "cgroup");
  const std::string id = WaitForProcess(0)["id"];
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  for (const auto& [to, mode] : {std::pair{"n2", "post-copy"}, std::pair{"n3", "stop-copy"}}) {
    const auto moved = Roam(0, "migrate " + id + " --to " + to + " --mode " + mode);
    ASSERT_EQ(moved.exit_code, 0) << moved.err;
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
  }
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "cgroup.err");
  std::vector<std::string> lines;
  std::istringstream out(ReadFile(dir_.path() / "cgroup.out"));
  for (std::string line; std::getline(out, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 60u);
  // "4:cpu:/roam-pooltest-PID/n1/guests": the path below the mount.
  const auto in = [this](const std::string& line, int node) {
    const std::string want = ":cpu:/" + cgroups_.filename().string() + "/" + Name(node) + "/guests";
    return line.ends_with(want);
  };
  EXPECT_TRUE(in(lines.front(), 0)) << lines.front();
  EXPECT_TRUE(in(lines.back(), 2)) << lines.back();
  EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), [&](const auto& l) { return in(l, 1); }))
      << "never seen in n2's guests";
}

TEST_F(PoolTest, ASignalSentDuringAMoveArrivesOnceAfterIt) {
  // 256 MiB of non-zero memory, so the move takes a while; it counts to 59
  // and says when SIGUSR1 came.
  const std::string program =
      "python3 -u -c \"import signal, time\n"
      "signal.signal(signal.SIGUSR1, lambda s, f: print('usr1'))\n"
      "hold = b'x' * (256 << 20)\n"
      "for i in range(60):\n"
      "  print(i)\n"
      "  time.sleep(0.05)\"";
  const pid_t roam = RoamInBackground(0, "run --node n2 -- " + program, "usr1");
  const std::string id = WaitForProcess(0)["id"];
  std::this_thread::sleep_for(std::chrono::milliseconds(800));  // memory filled, handler set
  const pid_t move = RoamInBackground(0, "migrate " + id + " --to n3", "move");
  // Sent while the move runs: the home holds it until the move is over.
  for (int i = 0; i < 100 && Ps(0)[0]["state"] != "migrating"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(Ps(0)[0]["state"], "migrating") << "the move was over before the signal";
  const auto signalled = Roam(0, "kill -USR1 " + id);
  EXPECT_EQ(signalled.exit_code, 0) << signalled.err;
  EXPECT_EQ(Wait(move), 0) << ReadFile(dir_.path() / "move.err");
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "usr1.err");
  std::string expected;
  for (int i = 0; i < 60; ++i) expected += std::to_string(i) + "\n";
  std::string out = ReadFile(dir_.path() / "usr1.out");
  const auto at = out.find("usr1\n");
  ASSERT_NE(at, std::string::npos) << out;
  out.erase(at, 5);
  EXPECT_EQ(out.find("usr1"), std::string::npos) << "delivered more than once";
  EXPECT_EQ(out, expected);
  EXPECT_EQ(Ps(0).size(), 0u);
}

TEST_F(PoolTest, MovesTwiceAndBackHomeWithStdinUnreadFollowing) {
  // The process reverses lines from stdin slowly; most of its input is
  // still unread (in its pipe or queued) each time it moves.
  const auto input = dir_.path() / "lines";
  std::string expected;
  {
    std::ofstream out(input);
    for (int i = 0; i < 400; ++i) {
      const std::string line = "line " + std::to_string(i) + " of the input";
      out << line << "\n";
      expected += std::string(line.rbegin(), line.rend()) + "\n";
    }
  }
  const pid_t roam =
      RoamInBackground(0,
                       "run -- python3 -c 'import sys, time\nfor l in sys.stdin:\n    "
                       "print(l.rstrip(\"\\n\")[::-1], flush=True)\n    time.sleep(0.005)' < " +
                           input.string(),
                       "reverse");
  const std::string id = WaitForProcess(0)["id"];
  for (const char* to : {"n2", "n3", "n1"}) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const auto moved = Roam(0, std::string("migrate ") + id + " --to " + to);
    ASSERT_EQ(moved.exit_code, 0) << to << ": " << moved.err;
    EXPECT_EQ(Ps(0)[0]["node"], to);
  }
  EXPECT_EQ(Ps(0)[0]["migrations"], 3);
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "reverse.err");
  EXPECT_EQ(ReadFile(dir_.path() / "reverse.out"), expected);
}

TEST_F(PoolTest, BcAndXzMovedInEveryModeMatchUndisturbedRuns) {
  // References, undisturbed and outside the pool.
  const auto dir = dir_.path();
  ASSERT_EQ(RunCommand({"/bin/bash", "-c",
                        "cd " + dir.string() +
                            " && printf 'scale=2300\\n4*a(1)\\nquit\\n' > pi.bc"
                            " && bc -lq pi.bc > pi.ref"
                            " && head -c 20000000 /dev/urandom | base64 > data.ref"
                            " && xz -T1 -k -f data.ref"})
                .exit_code,
            0);
  for (const std::string mode : {"stop-copy", "pre-copy"}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(
        RunCommand({"/bin/cp", (dir / "data.ref").string(), (dir / "data").string()}).exit_code, 0);
    std::filesystem::remove(dir / "data.xz");
    const pid_t bc = RoamInBackground(
        0, "run --node n2 -- bash -c 'cd " + dir.string() + " && exec bc -lq pi.bc'", "bc");
    const pid_t xz = RoamInBackground(
        0, "run --node n3 -- bash -c 'cd " + dir.string() + " && exec xz -T1 -k -f data'", "xz");
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    auto ps = Ps(0);
    ASSERT_EQ(ps.size(), 2u);
    // bc first: it ends sooner, and the other's move (pre-copy rounds)
    // takes a while.
    if (ps[0]["command"].get<std::string>().find("bc") == std::string::npos) {
      std::swap(ps[0], ps[1]);
    }
    for (const auto& p : ps) {
      const std::string to = p["node"] == "n2" ? "n3" : "n1";
      const auto moved =
          Roam(0, "migrate " + p["id"].get<std::string>() + " --to " + to + " --mode " + mode);
      EXPECT_EQ(moved.exit_code, 0) << p["command"] << ": " << moved.err;
    }
    EXPECT_EQ(Wait(bc), 0) << ReadFile(dir / "bc.err");
    EXPECT_EQ(Wait(xz), 0) << ReadFile(dir / "xz.err");
    EXPECT_EQ(ReadFile(dir / "bc.out"), ReadFile(dir / "pi.ref"));
    EXPECT_EQ(ReadFile(dir / "data.xz"), ReadFile(dir / "data.ref.xz"));
    std::filesystem::remove(dir / "data");
  }
}

TEST_F(PoolTest, RefusedMigrationsLeaveTheProcessWhereItRuns) {
  const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kCounter, "stay");
  const std::string id = WaitForProcess(0)["id"];
  const auto to_self = Roam(0, "migrate " + id + " --to n2");
  EXPECT_NE(to_self.exit_code, 0);
  EXPECT_NE(to_self.err.find("already runs on n2"), std::string::npos) << to_self.err;
  const auto nowhere = Roam(0, "migrate " + id + " --to n7");
  EXPECT_NE(nowhere.err.find("no node 'n7'"), std::string::npos) << nowhere.err;
  const std::string as_nobody =
      "setpriv --reuid=65534 --regid=65534 --clear-groups env ROAM_SOCKET=" + Socket(0) + " " +
      Bin("roam");
  const auto foreign = RunCommand({"/bin/sh", "-c", as_nobody + " migrate " + id + " --to n3"});
  EXPECT_NE(foreign.err.find("belongs to uid 0"), std::string::npos) << foreign.err;
  EXPECT_EQ(Ps(0)[0]["node"], "n2");
  EXPECT_EQ(Wait(roam), 0);
  EXPECT_EQ(ReadFile(dir_.path() / "stay.out"), CounterOutput());
}

// A long quiet process: 12 s of output, little CPU.
constexpr const char* kSlowCounter =
    "python3 -c 'import time\nfor i in range(120):\n    print(i, flush=True)\n    "
    "time.sleep(0.1)'";
std::string SlowCounterOutput() {
  std::string out;
  for (int i = 0; i < 120; ++i) out += std::to_string(i) + "\n";
  return out;
}

// The free cores node i reports on its first NUMA node (roamd binds guests
// to NUMA nodes by default); -1 when it reports none.
int FreeCores(const nlohmann::json& nodes, int i) {
  if (!nodes.is_array() || nodes.size() <= static_cast<std::size_t>(i)) return -1;
  const auto& free = nodes[static_cast<std::size_t>(i)]["free_cores"];
  return free.is_array() && !free.empty() ? free[0].get<int>() : -1;
}

// A guest counts as a core of the NUMA node it is bound to, where it runs
// and only while it runs there: its node's free cores go down when it
// starts or arrives, and up again when it leaves or ends.
TEST_F(PoolTest, AGuestHoldsACoreOfItsNodeWhileItRunsThere) {
  const auto idle = nlohmann::json::parse(Roam(0, "nodes --json").out, nullptr, false);
  const int cores = FreeCores(idle, 1);
  ASSERT_GE(cores, 1) << idle;
  EXPECT_EQ(FreeCores(idle, 2), cores);
  const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kSlowCounter, "held");
  const std::string id = WaitForProcess(0)["id"];
  // Printing: the program itself runs (not a wrapper that finds it).
  const auto started = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (ReadFile(dir_.path() / "held.out").empty() && std::chrono::steady_clock::now() < started) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto nodes = nlohmann::json::parse(Roam(0, "nodes --json").out, nullptr, false);
  EXPECT_EQ(FreeCores(nodes, 1), cores - 1) << nodes;
  EXPECT_EQ(FreeCores(nodes, 2), cores) << nodes;

  const auto moved = Roam(0, "migrate " + id + " --to n3");
  ASSERT_EQ(moved.exit_code, 0) << moved.err;
  nodes = nlohmann::json::parse(Roam(0, "nodes --json").out, nullptr, false);
  EXPECT_EQ(FreeCores(nodes, 1), cores) << nodes;
  EXPECT_EQ(FreeCores(nodes, 2), cores - 1) << nodes;

  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "held.err");
  EXPECT_EQ(ReadFile(dir_.path() / "held.out"), SlowCounterOutput());
  // Its node forgets it once its exit has reached home.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (FreeCores(nlohmann::json::parse(Roam(0, "nodes --json").out, nullptr, false), 2) !=
             cores &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(FreeCores(nlohmann::json::parse(Roam(0, "nodes --json").out, nullptr, false), 2),
            cores);
}

// Without load sharing a drained node sends its guests home; it takes no
// new process, move or placement until it is undrained; only root (or
// roamd's user) may drain.
TEST_F(PoolTest, DrainSendsGuestsHomeAndTakesNoNewOnesUntilUndrained) {
  const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kSlowCounter, "slow");
  const std::string id = WaitForProcess(0)["id"];
  ASSERT_EQ(Ps(0)[0]["node"], "n2");

  const auto drain = Roam(0, "drain n2 --wait 20");
  EXPECT_EQ(drain.exit_code, 0) << drain.err;
  EXPECT_NE(drain.out.find("n2 drains: it takes no new guests and sends its 1 guest away"),
            std::string::npos)
      << drain.out;
  EXPECT_NE(drain.out.find("n2 runs no guests"), std::string::npos) << drain.out;
  EXPECT_EQ(Ps(0)[0]["node"], "n1");
  const auto nodes = nlohmann::json::parse(Roam(2, "nodes --json").out, nullptr, false);
  ASSERT_TRUE(nodes.is_array());
  EXPECT_EQ(nodes[1]["state"], "draining");
  EXPECT_EQ(nodes[1]["name"], "n2");

  const auto refused_run = Roam(0, "run --node n2 -- true");
  EXPECT_NE(refused_run.exit_code, 0);
  EXPECT_NE(refused_run.err.find("n2 is draining"), std::string::npos) << refused_run.err;
  const auto refused_move = Roam(0, "migrate " + id + " --to n2");
  EXPECT_NE(refused_move.exit_code, 0);
  EXPECT_NE(refused_move.err.find("n2 is draining"), std::string::npos) << refused_move.err;
  EXPECT_EQ(Ps(0)[0]["node"], "n1");
  EXPECT_EQ(Ps(0)[0]["state"], "running");

  const auto idle = Roam(0, "idle");
  EXPECT_EQ(idle.exit_code, 1);
  EXPECT_NE(idle.err.find("--balance off"), std::string::npos) << idle.err;
  const auto foreign = RunCommand({"/bin/sh", "-c",
                                   "setpriv --reuid=65534 --regid=65534 --clear-groups env "
                                   "ROAM_SOCKET=" +
                                       Socket(0) + " " + Bin("roam") + " drain n3"});
  EXPECT_NE(foreign.err.find("only root or roamd's own user"), std::string::npos) << foreign.err;
  EXPECT_NE(Roam(0, "drain n9").err.find("no node 'n9'"), std::string::npos);

  const auto undrain = Roam(1, "undrain n2");
  EXPECT_EQ(undrain.exit_code, 0) << undrain.err;
  EXPECT_NE(undrain.out.find("n2 takes guests again"), std::string::npos) << undrain.out;
  const auto again = Roam(0, "run --node n2 -- echo here");
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, "here\n");
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "slow.err");
  EXPECT_EQ(ReadFile(dir_.path() / "slow.out"), SlowCounterOutput());
}

// kCounter with 384 MiB to move: a migration of it goes on for a while.
constexpr const char* kBigCounter =
    "python3 -c 'import time\nb = bytearray(b\"x\") * (384 << 20)\n"
    "for i in range(60):\n    print(i, i * i, flush=True)\n    time.sleep(0.05)'";

// kBigCounter run from n1 on n2 ("big"), moved to n3 in the background
// ("migrate"), and node `victim`'s daemon killed while it moves.
struct BigMove {
  pid_t roam;
  pid_t migrate;
};

class PoolTestDaemonKilledMidMove : public PoolTest {
 protected:
  BigMove KillDaemonDuringABigMove(int victim) {
    const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kBigCounter, "big");
    const std::string id = WaitForProcess(0)["id"];
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    const pid_t migrate = RoamInBackground(0, "migrate " + id + " --to n3", "migrate");
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    KillDaemon(victim);
    return {roam, migrate};
  }
};

TEST_F(PoolTestDaemonKilledMidMove, TargetDaemonKilledDuringMigrationLeavesTheProcessAtTheSource) {
  const auto [roam, migrate] = KillDaemonDuringABigMove(2);
  EXPECT_NE(Wait(migrate), 0) << ReadFile(dir_.path() / "migrate.out");
  EXPECT_NE(ReadFile(dir_.path() / "migrate.err").find("stays on n2"), std::string::npos)
      << ReadFile(dir_.path() / "migrate.err");
  const auto ps = Ps(0)[0];
  EXPECT_EQ(ps["node"], "n2");
  // ps says why it is still there.
  EXPECT_NE(ps["note"].get<std::string>().find("its last move, to n3, failed"), std::string::npos)
      << ps.dump();
  EXPECT_NE(Roam(0, "ps").out.find("its last move, to n3, failed"), std::string::npos);
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "big.err");
  EXPECT_EQ(ReadFile(dir_.path() / "big.out"), CounterOutput());
}

// The old node lost in the middle of a move: the move never finished, so
// the process is lost with that node, and both `roam migrate` and `roam
// run` end saying so (neither waits for ever).
TEST_F(PoolTestDaemonKilledMidMove,
       SourceDaemonKilledDuringMigrationEndsTheMoveAndTheProcessAsLost) {
  const auto [roam, migrate] = KillDaemonDuringABigMove(1);
  EXPECT_NE(Wait(migrate, std::chrono::seconds(20)), 0) << ReadFile(dir_.path() / "migrate.out");
  EXPECT_NE(ReadFile(dir_.path() / "migrate.err").find("ended during its move"), std::string::npos)
      << ReadFile(dir_.path() / "migrate.err");
  EXPECT_EQ(Wait(roam, std::chrono::seconds(20)), 255);
  EXPECT_NE(ReadFile(dir_.path() / "big.err").find("lost with node n2 while moving to n3"),
            std::string::npos)
      << ReadFile(dir_.path() / "big.err");
  EXPECT_TRUE(Ps(0).empty());
}

// The old node dies the moment the move is over, before it told home: home
// finds the process running at its new node and takes it from there.
class PoolTestOldNodeDiesAfterAMove : public PoolTest {
 protected:
  PoolTestOldNodeDiesAfterAMove() {
    fault_node_ = 1;
    fault_ = "roamd-exit-after-move";
  }
};

TEST_F(PoolTestOldNodeDiesAfterAMove, HomeFindsTheProcessAtItsNewNode) {
  const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kCounter, "counter");
  const std::string id = WaitForProcess(0)["id"];
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto moved = Roam(0, "migrate " + id + " --to n3 --json");
  ASSERT_EQ(moved.exit_code, 0) << moved.err;
  const auto figures = nlohmann::json::parse(moved.out, nullptr, false);
  EXPECT_EQ(figures["to"], "n3") << moved.out;
  EXPECT_EQ(Ps(0)[0]["node"], "n3");
  EXPECT_EQ(Ps(0)[0]["state"], "running");
  // What the old node had not sent home yet died with it; the rest comes
  // from n3, and the process ends normally.
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "counter.err");
  EXPECT_NE(ReadFile(dir_.path() / "counter.out").find("59 3481\n"), std::string::npos)
      << ReadFile(dir_.path() / "counter.out");
}

}  // namespace
}  // namespace roam

namespace roam {
namespace {

class PoolTestBalancing : public PoolTest {
 protected:
  PoolTestBalancing() { balance_ = "mosix"; }

  // Six CPU-bound processes started on one node of three spread over the
  // pool by themselves (no roam migrate), and each prints what it would
  // have printed undisturbed.
  void ABurstSpreadsAndEveryOutputIsCorrect() {
    constexpr int kJobs = 6;
    const std::string job =
        "python3 -c 'import sys\n"
        "s = 0\n"
        "for i in range(12000000): s += i * i % 7\n"
        "print(sys.argv[1], s)' ";
    std::vector<pid_t> runs;
    for (int j = 0; j < kJobs; ++j) {
      runs.push_back(RoamInBackground(0, "run --node n1 -- " + job + std::to_string(j),
                                      "job" + std::to_string(j)));
    }
    std::set<std::string> seen_on;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (seen_on.size() < 2 && std::chrono::steady_clock::now() < deadline) {
      const auto ps = Ps(0);
      for (const auto& p : ps) {
        if (p["node"] != "n1") seen_on.insert(p["node"].get<std::string>());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    EXPECT_EQ(seen_on, (std::set<std::string>{"n2", "n3"})) << "the burst did not spread";
    for (int j = 0; j < kJobs; ++j) {
      EXPECT_EQ(Wait(runs[j], std::chrono::seconds(120)), 0) << "job " << j;
      EXPECT_EQ(ReadFile(dir_.path() / ("job" + std::to_string(j) + ".out")),
                std::to_string(j) + " 23999999\n");
    }
  }
};

// The end-to-end check, with MOSIX dissemination.
TEST_F(PoolTestBalancing, AnOverloadedNodeShedsProcessesByItselfAndEveryOutputIsCorrect) {
  ABurstSpreadsAndEveryOutputIsCorrect();
}

// The same with anti-tasks: the two idle nodes ask for work, and the
// overloaded one moves processes to them.
class PoolTestAntiTasks : public PoolTestBalancing {
 protected:
  PoolTestAntiTasks() {
    for (auto& args : node_args_) args = {"--gossip", "antitask"};
  }
};

TEST_F(PoolTestAntiTasks, AnOverloadedNodeShedsProcessesToNodesThatAskForWork) {
  const auto nodes = Roam(0, "nodes --json");
  ASSERT_EQ(nodes.exit_code, 0) << nodes.err;
  for (const auto& n : nlohmann::json::parse(nodes.out)) {
    EXPECT_EQ(n["gossip"], "antitask") << n["name"];
  }
  ABurstSpreadsAndEveryOutputIsCorrect();
}

// With load sharing a drained node's guests go to the nodes that accept
// them, spread by load (not only home); `roam idle` leaves the draining
// node out and `roam top` shows the moves.
TEST_F(PoolTestBalancing, DrainedGuestsSpreadOverTheOtherNodesAndIdleAndTopShowIt) {
  const pid_t a = RoamInBackground(0, std::string("run --node n2 -- ") + kSlowCounter, "a");
  const pid_t b = RoamInBackground(0, std::string("run --node n2 -- ") + kSlowCounter, "b");
  const auto up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (Ps(0).size() < 2 && std::chrono::steady_clock::now() < up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // A few ticks: n2 learns the others' load.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const auto drain = Roam(1, "drain n2 --wait 20");
  EXPECT_EQ(drain.exit_code, 0) << drain.out << drain.err;
  std::set<std::string> now_on;
  for (const auto& p : Ps(0)) now_on.insert(p["node"].get<std::string>());
  EXPECT_EQ(now_on, (std::set<std::string>{"n1", "n3"}));

  // n2 stops being offered once its drained vector has spread.
  nlohmann::json idle;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    const auto r = Roam(0, "idle --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    idle = nlohmann::json::parse(r.out, nullptr, false);
    bool has_n2 = false;
    for (const auto& n : idle) has_n2 = has_n2 || n["name"] == "n2";
    if (idle.is_array() && !idle.empty() && !has_n2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_TRUE(idle.is_array() && !idle.empty()) << idle;
  for (const auto& n : idle) {
    EXPECT_NE(n["name"], "n2") << idle;
    EXPECT_GE(n["free_cpus"].get<double>(), 0.0);
  }

  const auto top = Roam(0, "top -n 2 -d 0.2 --json");
  ASSERT_EQ(top.exit_code, 0) << top.err;
  std::istringstream frames(top.out);
  std::string line;
  int count = 0;
  while (std::getline(frames, line)) {
    const auto frame = nlohmann::json::parse(line, nullptr, false);
    ASSERT_TRUE(frame.is_object()) << line;
    ASSERT_EQ(frame["nodes"].size(), 3u);
    EXPECT_EQ(frame["nodes"][1]["state"], "draining");
    EXPECT_EQ(frame["nodes"][1]["migrations_out"], 2);
    EXPECT_EQ(frame["nodes"][1]["balance"], "mosix");
    ++count;
  }
  EXPECT_EQ(count, 2);
  const auto text = Roam(0, "top -n 1");
  EXPECT_NE(text.out.find("NODE"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("draining"), std::string::npos) << text.out;

  EXPECT_EQ(Roam(0, "undrain n2").exit_code, 0);
  EXPECT_EQ(Wait(a), 0) << ReadFile(dir_.path() / "a.err");
  EXPECT_EQ(Wait(b), 0) << ReadFile(dir_.path() / "b.err");
  EXPECT_EQ(ReadFile(dir_.path() / "a.out"), SlowCounterOutput());
  EXPECT_EQ(ReadFile(dir_.path() / "b.out"), SlowCounterOutput());
}

// n2 lends its CPU only while its owner is away: its owner's input is a
// file here, idle after 2 s.
class PoolTestOwnerMode : public PoolTest {
 protected:
  PoolTestOwnerMode() {
    node_args_[1] = {"--owner-mode", "--owner-input", Input().string(), "--owner-idle-after", "2"};
    std::ofstream(Input()).put('\n');
    Touch(std::chrono::hours(1));
  }
  std::filesystem::path Input() const { return dir_.path() / "n2.input"; }
  // The owner's last input `ago`.
  void Touch(std::chrono::seconds ago) const {
    const auto t = std::chrono::system_clock::now() - ago;
    const auto s = std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
    const struct timespec times[2] = {{s, 0}, {s, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, Input().c_str(), times, 0), 0);
  }
  // n2's state in `roam nodes`.
  std::string StateOfN2() const {
    const auto nodes = nlohmann::json::parse(Roam(0, "nodes --json").out, nullptr, false);
    return nodes.is_array() && nodes.size() == 3 ? nodes[1]["state"].get<std::string>() : "";
  }
};

TEST_F(PoolTestOwnerMode, GuestsLeaveWhenTheOwnerComesBackAndReturnOnlyOnceTheyAreAway) {
  const pid_t roam = RoamInBackground(0, std::string("run --node n2 -- ") + kSlowCounter, "slow");
  ASSERT_EQ(WaitForProcess(0)["node"], "n2");

  Touch(std::chrono::seconds(0));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (Ps(0)[0]["node"] != "n1" && std::chrono::steady_clock::now() < deadline) {
    Touch(std::chrono::seconds(0));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(Ps(0)[0]["node"], "n1") << "the guest did not leave n2 for home";
  Touch(std::chrono::seconds(0));
  EXPECT_EQ(StateOfN2(), "owner-active");
  const auto refused = Roam(0, "run --node n2 -- true");
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("the owner of n2 is at work"), std::string::npos) << refused.err;

  // No input for 2 s: n2 takes guests again.
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (StateOfN2() != "up" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(StateOfN2(), "up");
  const auto again = Roam(0, "run --node n2 -- echo lent");
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, "lent\n");
  EXPECT_EQ(Wait(roam), 0) << ReadFile(dir_.path() / "slow.err");
  EXPECT_EQ(ReadFile(dir_.path() / "slow.out"), SlowCounterOutput());
}

}  // namespace
}  // namespace roam
