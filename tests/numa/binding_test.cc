#include "roam/numa/binding.h"

#include <gtest/gtest.h>
#include <linux/mempolicy.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "roam/base/file.h"
#include "roam/numa/cpu_set.h"

namespace roam::numa {
namespace {

CpuSet Affinity(pid_t tid) {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(tid, sizeof mask, &mask) != 0) return {};
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &mask)) cpus.push_back(cpu);
  }
  return CpuSet::FromList(std::move(cpus));
}

// The value of `field` ("Cpus_allowed_list") in a /proc status file.
std::string StatusField(const std::string& path, const std::string& field) {
  auto text = ReadFile(path);
  if (!text.has_value()) return "<" + text.error().ToString() + ">";
  const auto at = text->find(field + ":");
  if (at == std::string::npos) return "<no " + field + ">";
  const auto start = text->find_first_not_of(" \t", at + field.size() + 1);
  return text->substr(start, text->find('\n', start) - start);
}

std::string ReadAll(int fd) {
  std::string out;
  std::array<char, 256> buffer;
  ssize_t n;
  while ((n = read(fd, buffer.data(), buffer.size())) > 0) out.append(buffer.data(), n);
  return out;
}

// Exit status of a child, or -1 if it did not exit normally.
int Reap(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

class BindingTest : public testing::Test {
 protected:
  void SetUp() override {
    const CpuSet allowed = Affinity(0);
    if (allowed.size() < 2) {
      GTEST_SKIP() << "binding to a subset needs 2 or more CPUs; this process may use "
                   << allowed.ToString();
    }
    // The last allowed CPU alone, on the node that holds it (node 0 where the
    // kernel has no NUMA sysfs).
    const int cpu = allowed.cpus().back();
    placement_.cpus = CpuSet{cpu};
    for (const auto& entry :
         std::filesystem::directory_iterator(fmt::format("/sys/devices/system/cpu/cpu{}", cpu))) {
      const std::string name = entry.path().filename().string();
      if (name.starts_with("node")) placement_.numa_node = std::stoi(name.substr(4));
    }
    original_ = allowed;
  }

  Placement placement_;
  CpuSet original_;
};

// Forks a child that runs `body` and writes what it returns into a pipe.
template <typename Body>
std::string InChild(Body body) {
  std::array<int, 2> fds{};
  if (pipe(fds.data()) != 0) return "<pipe failed>";
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const std::string report = body();
    (void)!write(fds[1], report.data(), report.size());
    _exit(0);
  }
  close(fds[1]);
  std::string report = ReadAll(fds[0]);
  close(fds[0]);
  if (Reap(pid) != 0) report += " <child did not exit 0>";
  return report;
}

TEST_F(BindingTest, BindSelfBindsCpusAndMemoryOfAForkedChild) {
  for (const BindMode mode : {BindMode::kStrict, BindMode::kBestEffort}) {
    const std::string report = InChild([&]() -> std::string {
      if (auto s = BindSelf(placement_, mode); !s.has_value()) return s.error().ToString();
      int policy = -1;
      SelfBinding::NodeMask nodes{};
      if (syscall(SYS_get_mempolicy, &policy, nodes.data(), 1025, nullptr, 0) != 0) {
        return "get_mempolicy failed";
      }
      return fmt::format("cpus {} policy {} node0bits {:x}", Affinity(0).ToString(), policy,
                         nodes[0]);
    });
    const int expected_policy = mode == BindMode::kStrict ? MPOL_BIND : MPOL_PREFERRED;
    EXPECT_EQ(report, fmt::format("cpus {} policy {} node0bits {:x}", placement_.cpus.ToString(),
                                  expected_policy, 1UL << placement_.numa_node));
  }
  EXPECT_EQ(Affinity(0), original_) << "the parent must stay unbound";
}

TEST_F(BindingTest, BindSelfSurvivesExec) {
  auto binding = SelfBinding::Prepare(placement_, BindMode::kStrict);
  ASSERT_TRUE(binding.has_value()) << binding.error().ToString();
  std::array<int, 2> fds{};
  ASSERT_EQ(pipe(fds.data()), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    if (binding->Apply().call != nullptr) _exit(3);
    dup2(fds[1], STDOUT_FILENO);
    execl("/bin/grep", "grep", "-E", "^(Cpus_allowed_list|Mems_allowed_list)", "/proc/self/status",
          static_cast<char*>(nullptr));
    _exit(4);
  }
  close(fds[1]);
  const std::string out = ReadAll(fds[0]);
  close(fds[0]);
  ASSERT_EQ(Reap(pid), 0) << out;
  EXPECT_NE(out.find("Cpus_allowed_list:\t" + placement_.cpus.ToString() + "\n"), std::string::npos)
      << out;
}

TEST_F(BindingTest, BindProcessBindsEveryThread) {
  std::array<int, 2> ready{};
  ASSERT_EQ(pipe(ready.data()), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    // Three threads besides the main one, then wait to be killed.
    std::vector<std::thread> threads;
    threads.reserve(3);
    for (int i = 0; i < 3; ++i) threads.emplace_back([] { pause(); });
    (void)!write(ready[1], "r", 1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);

  const Status s = BindProcess(pid, placement_, BindMode::kStrict);
  EXPECT_TRUE(s.has_value()) << s.error().ToString();
  int threads = 0;
  for (const auto& task : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid))) {
    ++threads;
    EXPECT_EQ(StatusField(task.path() / "status", "Cpus_allowed_list"), placement_.cpus.ToString())
        << task.path();
  }
  EXPECT_EQ(threads, 4);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  EXPECT_EQ(Affinity(0), original_) << "the caller must stay unbound";
}

TEST_F(BindingTest, BindProcessOfASleepingProgram) {
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until the child has exec'd sleep, so the binding applies to it.
  for (int i = 0; i < 500; ++i) {
    auto comm = ReadFile(fmt::format("/proc/{}/comm", pid));
    if (comm.has_value() && comm->starts_with("sleep")) break;
    usleep(2000);
  }
  const Status s = BindProcess(pid, placement_, BindMode::kBestEffort);
  EXPECT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_EQ(StatusField(fmt::format("/proc/{}/status", pid), "Cpus_allowed_list"),
            placement_.cpus.ToString());
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

TEST(BindingRefusalTest, NonexistentPidIsNotFound) {
  auto pid_max = ReadFile("/proc/sys/kernel/pid_max");
  ASSERT_TRUE(pid_max.has_value()) << pid_max.error().ToString();
  const pid_t pid = std::stoi(*pid_max);  // pids stay below pid_max
  const Status s = BindProcess(pid, Placement{.numa_node = 0, .cpus = {0}}, BindMode::kStrict);
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Errc::kNotFound);
  EXPECT_EQ(s.error().message(), fmt::format("pid {}: no such process", pid));
  const Status zero = BindProcess(0, Placement{.numa_node = 0, .cpus = {0}}, BindMode::kStrict);
  ASSERT_FALSE(zero.has_value());
  EXPECT_EQ(zero.error().code(), Errc::kInvalidArgument);
}

TEST(BindingRefusalTest, ACpuTheMachineLacksIsRefusedInOneLine) {
  const CpuSet before = Affinity(0);
  const Placement p{.numa_node = 0, .cpus = {0, 4095}};
  for (const Status& s :
       {BindSelf(p, BindMode::kBestEffort), BindProcess(getpid(), p, BindMode::kBestEffort)}) {
    ASSERT_FALSE(s.has_value());
    EXPECT_EQ(s.error().code(), Errc::kInvalidArgument);
    const std::string line = s.error().ToString();
    EXPECT_NE(line.find("CPU 4095 is not on this machine (online: "), std::string::npos) << line;
    EXPECT_EQ(line.find('\n'), std::string::npos) << line;
  }
  EXPECT_EQ(Affinity(0), before) << "a refused binding changes nothing";
}

TEST(BindingRefusalTest, ANodeTheMachineLacksIsRefused) {
  const Placement p{.numa_node = 1023, .cpus = {0}};
  const Status s = BindSelf(p, BindMode::kBestEffort);
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(s.error().message().find("NUMA node 1023 is not on this machine"), std::string::npos)
      << s.error().ToString();
  const Status none = BindSelf(Placement{}, BindMode::kBestEffort);
  ASSERT_FALSE(none.has_value());
  EXPECT_NE(none.error().message().find("no CPUs"), std::string::npos);
}

}  // namespace
}  // namespace roam::numa
