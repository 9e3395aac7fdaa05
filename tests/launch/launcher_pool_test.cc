// Pools started by real launchers: `srun --mpi=pmix -N4 --ntasks-per-node=1
// roamd` on a real Slurm of four nodes on this host (scripts/slurm-local),
// and `mpirun -np 3 roamd`. In each, roamd takes its rank, size, name and
// pool key from the launcher's PMIx; a job runs and migrates, and under
// Slurm `srun roam exec` keeps the task's exit status and scancel reaches
// the real process wherever it runs.
//
// Every roamd shares the host's network here, so UCX picks its transports
// (shared memory among them); the pool's logic is the same as across hosts.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/test_util.h"

namespace roam {
namespace {

using testing::BuildDir;
using testing::CommandResult;
using testing::RunCommand;
using testing::SourceDir;
using testing::TempDir;

std::string Bin(std::string_view name) { return (BuildDir() / "bin" / name).string(); }

// A command in the background, in a process group of its own, its output
// in a file; stopped (TERM to the group, then KILL) when it goes.
class Background final {
 public:
  Background(const std::string& line, const std::filesystem::path& log) {
    // Built before fork: the child of a threaded process must not allocate.
    const std::string command = "exec >" + log.string() + " 2>&1; " + line;
    pid_ = fork();
    if (pid_ == 0) {
      setsid();
      execl("/bin/bash", "bash", "-c", command.c_str(), nullptr);
      _exit(127);
    }
  }
  ~Background() { Stop(); }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  // Its exit status (128 + signal if killed), waiting up to `limit`;
  // -1 if it is still running then.
  int Wait(std::chrono::seconds limit) {
    if (pid_ <= 0) return status_;
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return status_;
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(-pid_, SIGTERM);
    if (Wait(std::chrono::seconds(10)) >= 0) return;
    kill(-pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

// A pool of roamds a launcher started, each serving <dir>/<node name>.sock.
class LauncherPoolTest : public ::testing::Test {
 protected:
  std::filesystem::path Socket(const std::string& node) const {
    return sockets_ / (node + ".sock");
  }

  // `roam ARGS` against `node`'s daemon, with the test's environment.
  CommandResult Roam(const std::string& node, const std::string& args) const {
    return RunCommand(
        {"/bin/bash", "-c",
         Env() + "ROAM_SOCKET=" + Socket(node).string() + " " + Bin("roam") + " " + args});
  }

  nlohmann::json Json(const std::string& node, const std::string& args) const {
    const auto r = Roam(node, args + " --json");
    EXPECT_EQ(r.exit_code, 0) << args << ": " << r.err;
    return nlohmann::json::parse(r.out, nullptr, false);
  }

  // Waits until every one of `count` daemons serves its socket; their names
  // from the first one's `roam nodes`.
  std::vector<std::string> WaitForPool(std::size_t count) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      std::vector<std::string> sockets;
      std::error_code ec;
      for (const auto& e : std::filesystem::directory_iterator(sockets_, ec)) {
        if (e.path().extension() == ".sock") sockets.push_back(e.path().stem().string());
      }
      if (sockets.size() == count) {
        std::sort(sockets.begin(), sockets.end());
        const auto nodes = Json(sockets.front(), "nodes");
        std::vector<std::string> names;
        for (const auto& n : nodes) names.push_back(n["name"].get<std::string>());
        std::sort(names.begin(), names.end());
        EXPECT_EQ(names, sockets);
        return names;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "no pool of " << count << " within 60 s; launcher log:\n"
                  << testing::ReadFile(dir_.path() / "launcher.log");
    return {};
  }

  // The process `roam ps --all --json` shows on `node` whose command holds
  // `marker`; null until it runs.
  nlohmann::json FindProcess(const std::string& node, const std::string& marker) const {
    const auto ps = Json(node, "ps --all");
    for (const auto& p : ps) {
      if (p.dump().find(marker) != std::string::npos && p["state"] == "running") return p;
    }
    return nullptr;
  }

  nlohmann::json WaitForProcess(const std::string& node, const std::string& marker) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      auto p = FindProcess(node, marker);
      if (!p.is_null()) return p;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "no running process with '" << marker << "' on " << node;
    return nullptr;
  }

  // The environment every command of the test runs with (SLURM_CONF).
  virtual std::string Env() const { return "exec 251>&-; "; }

  TempDir dir_;
  std::filesystem::path sockets_ = dir_.path() / "sockets";
};

// A python program that prints `lines` numbered lines, 0.3 s apart, then
// exits with `code`; `marker` is its last argument, to find it by.
std::string Counter(int lines, int code, const std::string& marker) {
  return "/usr/bin/python3 -c 'import sys,time\nfor i in range(" + std::to_string(lines) +
         "): print(i, flush=True); time.sleep(0.3)\nsys.exit(" + std::to_string(code) + ")' " +
         marker;
}

std::string Expected(int lines) {
  std::string out;
  for (int i = 0; i < lines; ++i) out += std::to_string(i) + "\n";
  return out;
}

class SlurmPoolTest : public LauncherPoolTest {
 protected:
  void SetUp() override {
    ROAM_SKIP_UNLESS_ROOT("the Slurm daemons run as root");
    for (const char* tool :
         {"/usr/sbin/slurmd", "/usr/sbin/slurmctld", "/usr/bin/srun", "/usr/sbin/munged"}) {
      if (!std::filesystem::exists(tool)) GTEST_SKIP() << "needs " << tool << " (scripts/setup)";
    }
    std::filesystem::create_directories(sockets_);
    // Ports of its own, so that a cluster another run left does not answer.
    std::random_device random;
    port_ = 20000 + static_cast<int>(random() % 4000) * 10;
    const auto up = RunCommand({"/bin/bash", "-c",
                                "exec 251>&-; " + (SourceDir() / "scripts/slurm-local").string() +
                                    " up --dir " + Cluster().string() + " --nodes 4 --port " +
                                    std::to_string(port_)});
    ASSERT_EQ(up.exit_code, 0) << up.out << up.err;
    up_ = true;
    launcher_ = std::make_unique<Background>(Env() + "srun --mpi=pmix -N4 --ntasks-per-node=1 " +
                                                 Bin("roamd") + " --socket " +
                                                 (sockets_ / "%n.sock").string() + " --staging 0",
                                             dir_.path() / "launcher.log");
    nodes_ = WaitForPool(4);
    ASSERT_EQ(nodes_, (std::vector<std::string>{"n1", "n2", "n3", "n4"}));
  }

  void TearDown() override {
    launcher_.reset();
    if (up_) {
      const auto down =
          RunCommand({"/bin/bash", "-c",
                      "exec 251>&-; " + (SourceDir() / "scripts/slurm-local").string() +
                          " down --dir " + Cluster().string()});
      EXPECT_EQ(down.exit_code, 0) << down.out << down.err;
    }
  }

  std::filesystem::path Cluster() const { return dir_.path() / "slurm"; }
  std::string Env() const override {
    return "exec 251>&-; export SLURM_CONF=" + (Cluster() / "slurm.conf").string() +
           " ROAM_SOCKET=" + (sockets_ / "%n.sock").string() + "; ";
  }

  int port_ = 0;
  bool up_ = false;
  std::unique_ptr<Background> launcher_;
  std::vector<std::string> nodes_;
};

TEST_F(SlurmPoolTest, SrunFormsAPoolInWhichATaskRunsMovesAndKeepsItsExitStatus) {
  // Every daemon names its node as Slurm does and serves the whole pool.
  for (const auto& node : nodes_) {
    const auto nodes = Json(node, "nodes");
    ASSERT_EQ(nodes.size(), 4u) << node;
    for (const auto& n : nodes) EXPECT_EQ(n["state"], "up") << n.dump();
  }
  constexpr int kLines = 12;
  Background task(Env() + "srun -N1 -n1 -w n2 " + Bin("roam") + " exec -- " +
                      Counter(kLines, 7, "roam-srun-task"),
                  dir_.path() / "task.log");
  const auto p = WaitForProcess("n2", "roam-srun-task");
  ASSERT_FALSE(p.is_null());
  EXPECT_EQ(p["home"], "n2");
  const std::string id = p["id"];
  const auto moved = Roam("n1", "migrate " + id + " --to n4");
  EXPECT_EQ(moved.exit_code, 0) << moved.out << moved.err;
  const auto there = FindProcess("n2", "roam-srun-task");
  if (!there.is_null()) {
    EXPECT_EQ(there["node"], "n4");
  }
  // srun's status is the task's, which is the real process's.
  EXPECT_EQ(task.Wait(std::chrono::seconds(30)), 7) << testing::ReadFile(dir_.path() / "task.log");
  const std::string log = testing::ReadFile(dir_.path() / "task.log");
  EXPECT_NE(log.find(Expected(kLines)), std::string::npos) << log;
}

TEST_F(SlurmPoolTest, ScancelReachesTheRealProcessOnTheNodeItMovedTo) {
  Background task(Env() + "srun -J roam-cancel -N1 -n1 -w n2 " + Bin("roam") +
                      " exec -- /usr/bin/python3 -c 'import time\nwhile True: time.sleep(0.2)' "
                      "roam-scancel-task",
                  dir_.path() / "task.log");
  const auto p = WaitForProcess("n2", "roam-scancel-task");
  ASSERT_FALSE(p.is_null());
  const std::string id = p["id"];
  const auto moved = Roam("n2", "migrate " + id + " --to n3");
  ASSERT_EQ(moved.exit_code, 0) << moved.out << moved.err;
  const auto cancel = RunCommand({"/bin/bash", "-c", Env() + "scancel -n roam-cancel"});
  ASSERT_EQ(cancel.exit_code, 0) << cancel.err;
  // SIGTERM reached the process at n3 through its deputy: it died of it,
  // and so the task.
  EXPECT_EQ(task.Wait(std::chrono::seconds(30)), 143)
      << testing::ReadFile(dir_.path() / "task.log");
  EXPECT_NE(testing::ReadFile(dir_.path() / "task.log").find("exit code 143"), std::string::npos);
  EXPECT_TRUE(Json("n3", "ps --all").empty());
  const auto left = RunCommand({"/usr/bin/pgrep", "-f", "roam-scancel-task"});
  EXPECT_EQ(left.exit_code, 1) << "still running: " << left.out;
}

TEST_F(SlurmPoolTest, MpiRanksRunThroughRoamExecAndStayHomeSayingWhy) {
#ifndef ROAM_MPI_RANKS
  GTEST_SKIP() << "needs Open MPI's development files (scripts/setup) for the MPI job";
#else
  // Open MPI's shared-memory transport fails between the fake nodes of one
  // host (infra.md); TCP is what ranks on different hosts would use.
  Background job(Env() + "OMPI_MCA_btl='^vader,openib' srun --mpi=pmix -N2 -n2 -w n1,n2 " +
                     Bin("roam") + " exec -- " + ROAM_MPI_RANKS,
                 dir_.path() / "mpi.log");
  const auto p = WaitForProcess("n1", "mpi_ranks");
  ASSERT_FALSE(p.is_null());
  const std::string id = p["id"];
  // ps says why it stays before anything tries to move it.
  EXPECT_NE(p["note"].get<std::string>().find("cannot move: fd "), std::string::npos) << p.dump();
  // Refused with the reason, in one line; the rank runs on untouched.
  const auto moved = Roam("n1", "migrate " + id + " --to n3");
  EXPECT_EQ(moved.exit_code, 1) << moved.out << moved.err;
  EXPECT_NE(moved.err.find("stays on n1"), std::string::npos) << moved.err;
  const auto ps = Roam("n1", "ps");
  EXPECT_NE(ps.out.find("its last move, to n3, failed"), std::string::npos) << ps.out;
  EXPECT_EQ(job.Wait(std::chrono::seconds(60)), 0) << testing::ReadFile(dir_.path() / "mpi.log");
  const std::string log = testing::ReadFile(dir_.path() / "mpi.log");
  EXPECT_NE(log.find("rank 0 of 2: sum 1"), std::string::npos) << log;
  EXPECT_NE(log.find("rank 1 of 2: sum 1"), std::string::npos) << log;
#endif
}

class MpirunPoolTest : public LauncherPoolTest {};

TEST_F(MpirunPoolTest, MpirunFormsAPoolInWhichAJobRunsAndMoves) {
  ROAM_SKIP_UNLESS_ROOT("roamd moves processes by ptrace as root");
  if (!std::filesystem::exists("/usr/bin/mpirun")) GTEST_SKIP() << "needs mpirun (scripts/setup)";
  std::filesystem::create_directories(sockets_);
  Background launcher(Env() + "mpirun -np 3 --oversubscribe --allow-run-as-root " + Bin("roamd") +
                          " --socket " + (sockets_ / "%n.sock").string() + " --staging 0",
                      dir_.path() / "launcher.log");
  // Three ranks on one host: named after it, with their local rank.
  const auto nodes = WaitForPool(3);
  ASSERT_EQ(nodes.size(), 3u);
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    EXPECT_TRUE(nodes[i].ends_with("." + std::to_string(i))) << nodes[i];
  }
  constexpr int kLines = 10;
  const std::string out = (dir_.path() / "job.out").string();
  Background job(Env() + "ROAM_SOCKET=" + Socket(nodes[0]).string() + " " + Bin("roam") +
                     " run --node " + nodes[1] + " -- " + Counter(kLines, 5, "roam-mpirun-job"),
                 out);
  const auto p = WaitForProcess(nodes[0], "roam-mpirun-job");
  ASSERT_FALSE(p.is_null());
  const auto moved = Roam(nodes[0], "migrate " + p["id"].get<std::string>() + " --to " + nodes[2]);
  EXPECT_EQ(moved.exit_code, 0) << moved.out << moved.err;
  EXPECT_EQ(job.Wait(std::chrono::seconds(30)), 5);
  EXPECT_EQ(testing::ReadFile(out), Expected(kLines));
  // TERM to mpirun reaches every roamd, which leaves the job cleanly.
  launcher.Stop();
  EXPECT_EQ(RunCommand({"/usr/bin/pgrep", "-f", Bin("roamd") + " --socket " + sockets_.string()})
                .exit_code,
            1);
}

}  // namespace
}  // namespace roam
