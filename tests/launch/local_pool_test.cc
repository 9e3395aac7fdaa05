// `roam pool up --local N` and `roam pool down` as a user runs them, with a
// stand-in roamd (fake_roamd.cc, through $ROAM_ROAMD) that reports where the
// pool put it: its network namespace and its cgroup.
#include "launch/local_pool.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "launch/node_cgroup.h"
#include "tests/support/test_util.h"

namespace roam::launch {
namespace {

namespace fs = std::filesystem;
using testing::BuildDir;
using testing::CommandResult;
using testing::ReadFile;
using testing::RunCommand;
using namespace std::chrono_literals;

struct Report {
  pid_t pid = 0;
  ino_t netns = 0;
  std::string cgroup;
};

bool Connects(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  close(fd);
  return ok;
}

// A process that exists and is not a zombie.
bool Running(pid_t pid) {
  const std::string stat = ReadFile(fmt::format("/proc/{}/stat", pid));
  if (stat.empty()) return false;
  const auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

// Whether any process is in, or holds a descriptor of, the network namespace.
bool NetnsHeld(ino_t inode) {
  const std::string want = fmt::format("net:[{}]", inode);
  std::error_code ec;
  for (const auto& proc : fs::directory_iterator("/proc", ec)) {
    const std::string pid = proc.path().filename();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code link_ec;
    if (fs::read_symlink(proc.path() / "ns/net", link_ec).string() == want) return true;
    std::error_code fd_ec;
    for (const auto& fd : fs::directory_iterator(proc.path() / "fd", fd_ec)) {
      if (fs::read_symlink(fd.path(), link_ec).string() == want) return true;
    }
  }
  return false;
}

template <typename Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

class LocalPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ROAM_SKIP_UNLESS_ROOT("network namespaces and cgroups");
    const Result<fs::path> mount = CpuCgroupMount();
    if (!mount.has_value()) GTEST_SKIP() << mount.error().ToString();
    cpu_mount_ = *mount;
    static int counter = 0;
    name_ = fmt::format("t{}-{}", getpid(), counter++);
    setenv("ROAM_ROAMD", (BuildDir() / "tests" / "fake_roamd").c_str(), 1);
    setenv("FAKE_ROAMD_REPORT_DIR", reports_.path().c_str(), 1);
  }

  void TearDown() override {
    if (name_.empty()) return;
    // Whatever the test left, even if `pool down` itself is what broke.
    (void)Down();
    (void)KillCgroupTree(PoolCgroup(), 5s);
    (void)RemoveCgroupTree(PoolCgroup());
    std::error_code ec;
    fs::remove_all(LocalPoolDir(name_), ec);
  }

  static CommandResult Roam(std::vector<std::string> args,
                            const std::vector<std::string>& env = {}) {
    std::vector<std::string> argv = {"/usr/bin/env"};
    argv.insert(argv.end(), env.begin(), env.end());
    argv.push_back((BuildDir() / "bin" / "roam").string());
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv);
  }

  CommandResult Up(int nodes, const std::vector<std::string>& env = {}) {
    return Roam({"pool", "up", "--local", std::to_string(nodes), "--cpus-per-node", "0.5",
                 "--staging", "64", "--name", name_},
                env);
  }

  // `roam pool down` of this test's pool.
  CommandResult Down() const { return Roam({"pool", "down", "--name", name_}); }

  // The pool's state file, parsed (discarded if it does not parse).
  nlohmann::json PoolJson() const {
    return nlohmann::json::parse(ReadFile(Dir() / "pool.json"), nullptr, false);
  }

  fs::path PoolCgroup() const { return cpu_mount_ / ("roam." + name_); }
  fs::path Dir() const { return LocalPoolDir(name_); }

  // Connects to node's socket (the stand-in reports on each connection).
  Report ReportOf(const std::string& node, const std::string& socket) {
    Report report;
    const fs::path path = reports_.path() / (node + ".report");
    if (!Connects(socket)) return report;
    if (!WaitFor([&] { return fs::exists(path); }, 5s)) return report;
    std::istringstream in(ReadFile(path));
    std::string key;
    while (in >> key) {
      if (key == "pid") in >> report.pid;
      if (key == "netns") in >> report.netns;
      if (key == "cgroup") in >> report.cgroup;
    }
    return report;
  }

  // Nothing of the pool is left: directory, cgroups, daemons, namespaces.
  void ExpectGone(const std::vector<Report>& reports, pid_t keeper) {
    EXPECT_FALSE(fs::exists(Dir())) << Dir();
    EXPECT_FALSE(fs::exists(PoolCgroup())) << PoolCgroup();
    if (keeper > 0) {
      EXPECT_TRUE(WaitFor([&] { return !Running(keeper); }, 5s)) << keeper;
    }
    for (const Report& r : reports) {
      EXPECT_TRUE(WaitFor([&] { return !Running(r.pid); }, 5s)) << "daemon " << r.pid;
      EXPECT_TRUE(WaitFor([&] { return !NetnsHeld(r.netns); }, 5s)) << "netns " << r.netns;
    }
  }

  std::string name_;
  fs::path cpu_mount_;
  testing::TempDir reports_;
};

TEST_F(LocalPoolTest, UpStartsNodesInTheirOwnNamespacesAndCgroupsAndDownRemovesThem) {
  const CommandResult up = Up(3);
  ASSERT_EQ(up.exit_code, 0) << up.out << up.err;
  const fs::path dir = Dir();
  EXPECT_NE(up.out.find(fmt::format("export ROAM_SOCKET={}\n", (dir / "n1.sock").string())),
            std::string::npos)
      << up.out;

  const nlohmann::json j = PoolJson();
  ASSERT_TRUE(j.is_object()) << ReadFile(dir / "pool.json");
  EXPECT_EQ(j["name"], name_);
  ASSERT_EQ(j["nodes"].size(), 3u);
  const pid_t keeper = j["keeper"].get<pid_t>();
  EXPECT_TRUE(Running(keeper));
  EXPECT_EQ(ReadFile(dir / "keeper.pid"), fmt::format("{}\n", keeper));
  struct stat key {};
  ASSERT_EQ(stat((dir / "pool.key").c_str(), &key), 0);
  EXPECT_EQ(key.st_mode & 0777, 0600u);
  const std::string period = ReadFile(PoolCgroup() / "n1" / "guests" / "cpu.cfs_period_us");

  std::vector<Report> reports;
  std::set<ino_t> namespaces;
  struct stat own {};
  ASSERT_EQ(stat("/proc/self/ns/net", &own), 0);
  namespaces.insert(own.st_ino);
  const std::string subnet = j["subnet"].get<std::string>();
  for (int i = 0; i < 3; ++i) {
    const nlohmann::json& node = j["nodes"][i];
    const std::string name = fmt::format("n{}", i + 1);
    EXPECT_EQ(node["name"], name);
    EXPECT_EQ(node["socket"], (dir / (name + ".sock")).string());
    EXPECT_EQ(node["cgroup"], (PoolCgroup() / name).string());
    EXPECT_DOUBLE_EQ(node["cpus"].get<double>(), 0.5);
    const std::string address = node["address"];
    EXPECT_EQ(address, subnet.substr(0, subnet.rfind('.') + 1) + std::to_string(i + 1));
    EXPECT_NE(up.out.find(address), std::string::npos) << up.out;
    EXPECT_EQ(LocalPoolSocket(name_, name).value_or("?"), node["socket"].get<std::string>());

    const Report r = ReportOf(name, node["socket"]);
    ASSERT_NE(r.pid, 0) << name
                        << " did not accept or report; log: " << ReadFile(dir / (name + ".log"));
    EXPECT_EQ(r.pid, node["pid"].get<pid_t>());
    EXPECT_TRUE(namespaces.insert(r.netns).second) << name << " shares netns " << r.netns;
    EXPECT_EQ(r.cgroup, fmt::format("/roam.{}/{}", name_, name));
    EXPECT_EQ(std::stol(ReadFile(PoolCgroup() / name / "guests" / "cpu.cfs_quota_us")),
              std::stol(period) / 2);
    EXPECT_EQ(ReadFile(PoolCgroup() / name / "cpu.cfs_quota_us"), "-1\n") << "roamd throttled";
    EXPECT_NE(ReadFile(dir / (name + ".log"))
                  .find("fake_roamd " + name + " rank " + std::to_string(i) + " of 3 staging 64"),
              std::string::npos);
    reports.push_back(r);
  }
  EXPECT_EQ(LocalPoolSocket(name_, "n4").error().code(), Errc::kNotFound);

  const CommandResult down = Down();
  EXPECT_EQ(down.exit_code, 0) << down.out << down.err;
  ExpectGone(reports, keeper);
}

TEST_F(LocalPoolTest, UpTwiceIsAClearError) {
  const CommandResult first = Up(1);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string pool_json = ReadFile(Dir() / "pool.json");
  const CommandResult second = Up(2);
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_NE(second.err.find(fmt::format("pool '{}' is already up (roam pool down first)", name_)),
            std::string::npos)
      << second.err;
  EXPECT_EQ(ReadFile(Dir() / "pool.json"), pool_json) << "the running pool was touched";
  EXPECT_TRUE(Connects(Dir() / "n1.sock"));
}

TEST_F(LocalPoolTest, DownWithoutAPoolSaysSo) {
  const CommandResult down = Down();
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_EQ(down.err, fmt::format("roam: pool down: no local pool '{}' is up\n", name_));
}

TEST_F(LocalPoolTest, BadNameIsRefused) {
  const CommandResult up = Roam({"pool", "up", "--local", "1", "--name", "no/slash"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_NE(up.err.find("pool name 'no/slash'"), std::string::npos) << up.err;
}

TEST_F(LocalPoolTest, StagingBeyondTheMachinesMemoryIsRefused) {
  const CommandResult up =
      Roam({"pool", "up", "--local", "2", "--staging", "1000000000", "--name", name_});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_NE(up.err.find("2 nodes with 1000000000 MiB of staging each are more than"),
            std::string::npos)
      << up.err;
  EXPECT_FALSE(fs::exists(Dir())) << "a refused pool left state behind";
}

TEST_F(LocalPoolTest, DownCleansUpAfterAKilledKeeper) {
  const CommandResult up = Up(2);
  ASSERT_EQ(up.exit_code, 0) << up.err;
  const auto j = PoolJson();
  const pid_t keeper = j["keeper"].get<pid_t>();
  std::vector<Report> reports;
  for (const char* node : {"n1", "n2"}) {
    reports.push_back(ReportOf(node, (Dir() / (std::string(node) + ".sock")).string()));
    ASSERT_NE(reports.back().pid, 0) << node;
  }
  ASSERT_EQ(kill(keeper, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return !Running(keeper); }, 5s));
  // The roamds died with the keeper (PDEATHSIG); the directory and the
  // cgroups are down's to remove.
  const CommandResult down = Down();
  EXPECT_EQ(down.exit_code, 0) << down.err;
  ExpectGone(reports, keeper);
}

TEST_F(LocalPoolTest, TheKeeperLogsARoamdThatExits) {
  ASSERT_EQ(Up(2).exit_code, 0);
  const Report n2 = ReportOf("n2", (Dir() / "n2.sock").string());
  ASSERT_NE(n2.pid, 0);
  ASSERT_EQ(kill(n2.pid, SIGKILL), 0);
  const std::string expected = fmt::format("roamd of n2 (pid {}) exited: killed by Killed", n2.pid);
  EXPECT_TRUE(WaitFor(
      [&] { return ReadFile(Dir() / "keeper.log").find(expected) != std::string::npos; }, 5s))
      << ReadFile(Dir() / "keeper.log");
  EXPECT_TRUE(Connects(Dir() / "n1.sock")) << "the other node went too";
  const CommandResult down = Down();
  EXPECT_EQ(down.exit_code, 0) << down.err;
  EXPECT_FALSE(fs::exists(Dir()));
}

TEST_F(LocalPoolTest, UpReplacesTheStateOfADeadKeeper) {
  ASSERT_EQ(Up(1).exit_code, 0);
  const auto j = PoolJson();
  const pid_t keeper = j["keeper"].get<pid_t>();
  ASSERT_EQ(kill(keeper, SIGKILL), 0);
  ASSERT_TRUE(WaitFor([&] { return !Running(keeper); }, 5s));
  const CommandResult again = Up(2);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  const auto k = PoolJson();
  EXPECT_NE(k["keeper"].get<pid_t>(), keeper);
  EXPECT_EQ(k["nodes"].size(), 2u);
}

TEST_F(LocalPoolTest, ARoamdThatNeverListensFailsUpAndLeavesNothing) {
  const auto start = std::chrono::steady_clock::now();
  const CommandResult up = Up(2, {"FAKE_ROAMD_MODE=no-listen"});
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_NE(up.err.find("did not accept on its socket within 30 s"), std::string::npos) << up.err;
  EXPECT_NE(up.err.find("told not to listen"), std::string::npos) << up.err;
  EXPECT_EQ(std::count(up.err.begin(), up.err.end(), '\n'), 1) << up.err;
  // 30 s to wait, 5 s for SIGTERM to be ignored, and some slack.
  EXPECT_LT(took, 50s);
  EXPECT_FALSE(fs::exists(Dir()));
  EXPECT_FALSE(fs::exists(PoolCgroup()));
}

TEST_F(LocalPoolTest, ARoamdThatExitsFailsUpWithItsMessage) {
  // /bin/false ignores roamd's arguments and exits 1 at once.
  const CommandResult up = Up(1, {"ROAM_ROAMD=/bin/false"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_NE(up.err.find("roamd of n1 exited (exit 1) before it accepted"), std::string::npos)
      << up.err;
  EXPECT_FALSE(fs::exists(Dir()));
  EXPECT_FALSE(fs::exists(PoolCgroup()));
}

}  // namespace
}  // namespace roam::launch
