// PidNamespace: a child with a chosen pid inside, the creating thread's
// pid_for_children put back whatever the spawn does, the init ending with
// its process, and nothing left behind by an abandoned namespace.
#include "core/ckpt/pid_namespace.h"

#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "tests/support/test_util.h"

namespace roam::ckpt {
namespace {

namespace fs = std::filesystem;

constexpr pid_t kInside = 4242;

std::string PidForChildren() {
  std::error_code ec;
  return fs::read_symlink("/proc/thread-self/ns/pid_for_children", ec).string();
}

// The last NSpid field: the pid inside the task's own namespace.
pid_t PidInside(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("NSpid:", 0) != 0) continue;
    std::istringstream fields(line.substr(6));
    pid_t last = -1;
    for (pid_t p = 0; fields >> p;) last = p;
    return last;
  }
  return -1;
}

// A raw clone3 child with pid `inside` in the namespace the calling
// thread's children go to; it waits for a signal.
Result<pid_t> SpawnSleeper(pid_t inside) {
  clone_args args{};
  args.exit_signal = SIGCHLD;
  args.set_tid = reinterpret_cast<std::uint64_t>(&inside);
  args.set_tid_size = 1;
  const long pid = syscall(SYS_clone3, &args, sizeof(args));
  if (pid < 0) return ErrnoError(errno, "clone3 set_tid {}", inside);
  if (pid == 0) {
    for (;;) syscall(SYS_pause);
  }
  return static_cast<pid_t>(pid);
}

// Kills and reaps a child still there when a test ends; declared after the
// PidNamespace so that it goes first (a dying init waits for the reap).
struct ChildGuard {
  pid_t pid = -1;
  ChildGuard() = default;
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;
  ~ChildGuard() {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
};

bool HasNoChildren() { return waitpid(-1, nullptr, WNOHANG | __WALL) < 0 && errno == ECHILD; }

class PidNamespaceTest : public ::testing::Test {
 protected:
  void SetUp() override { ROAM_SKIP_UNLESS_ROOT("creating a pid namespace needs CAP_SYS_ADMIN"); }
};

TEST_F(PidNamespaceTest, ChildGetsItsPidInsideAndTheInitEndsWithIt) {
  const std::string before = PidForChildren();
  auto ns = PidNamespace::Create();
  ASSERT_TRUE(ns.has_value()) << ns.error().ToString();
  const pid_t init = ns->init_pid();
  EXPECT_EQ(PidInside(init), 1);
  ChildGuard guard;
  auto child = ns->SpawnInside([] { return SpawnSleeper(kInside); });
  ASSERT_TRUE(child.has_value()) << child.error().ToString();
  guard.pid = *child;
  EXPECT_EQ(PidForChildren(), before);
  EXPECT_EQ(PidInside(*child), kInside);
  ASSERT_TRUE(ns->Serve(kInside).has_value());
  EXPECT_EQ(ns->Release(), init);

  // The init forwards SIGTERM to the process (which dies of it), then exits.
  ASSERT_EQ(kill(init, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(*child, &status, 0), *child);
  guard.pid = -1;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  ASSERT_EQ(waitpid(init, &status, 0), init);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_TRUE(HasNoChildren());
}

TEST_F(PidNamespaceTest, FailedSpawnStillPutsPidForChildrenBack) {
  const std::string before = PidForChildren();
  auto ns = PidNamespace::Create();
  ASSERT_TRUE(ns.has_value()) << ns.error().ToString();
  // pid 1 is the init's: clone3 set_tid fails with EEXIST.
  auto child = ns->SpawnInside([] { return SpawnSleeper(1); });
  EXPECT_FALSE(child.has_value());
  EXPECT_EQ(PidForChildren(), before);
}

TEST_F(PidNamespaceTest, AbandonedNamespaceLeavesNothingBehind) {
  pid_t init = -1;
  pid_t child = -1;
  {
    // Destroyed in reverse: guard (the child), then the namespace.
    auto ns = PidNamespace::Create();
    ASSERT_TRUE(ns.has_value()) << ns.error().ToString();
    init = ns->init_pid();
    ChildGuard guard;
    auto spawned = ns->SpawnInside([] { return SpawnSleeper(kInside); });
    ASSERT_TRUE(spawned.has_value()) << spawned.error().ToString();
    child = *spawned;
    // As a failed restore does: the guard reaps its own child first, then
    // the namespace is dropped.
    guard.pid = child;
  }
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(init)));
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(child)));
  EXPECT_TRUE(HasNoChildren());
}

TEST_F(PidNamespaceTest, InitWithoutAProcessExits) {
  auto ns = PidNamespace::Create();
  ASSERT_TRUE(ns.has_value()) << ns.error().ToString();
  const pid_t init = ns->Release();
  int status = 0;
  ASSERT_EQ(waitpid(init, &status, 0), init);
  EXPECT_TRUE(WIFEXITED(status)) << status;
}

// A served process and its init, created from a thread that then ends.
struct Spawned {
  pid_t child = -1;
  pid_t init = -1;
};
Spawned SpawnFromEndedThread(InitLifetime lifetime) {
  Spawned out;
  std::thread([&] {
    auto ns = PidNamespace::Create(lifetime);
    if (!ns) return;
    auto child = ns->SpawnInside([] { return SpawnSleeper(kInside); });
    if (!child || !ns->Serve(kInside)) return;
    out.child = *child;
    out.init = ns->Release();
  }).join();
  return out;  // both reparented to a live thread of ours: still ours to reap
}

// Blocks until `pid` ends or 10 s pass; -1 then.
int WaitUpTo10s(pid_t pid) {
  for (int i = 0; i < 2000; ++i) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG | __WALL) == pid) return status;
    usleep(5000);
  }
  return -1;
}

// PR_SET_PDEATHSIG fires when the parent *thread* exits, not only the
// process; by default the init ignores its creator (roam restore --detach).
TEST_F(PidNamespaceTest, InitEndsWithItsCreatorThreadOnlyWhenAskedTo) {
  const Spawned kept = SpawnFromEndedThread(InitLifetime::kOutlivesCreator);
  ASSERT_GT(kept.child, 0);
  usleep(100 * 1000);
  EXPECT_EQ(waitpid(kept.init, nullptr, WNOHANG), 0) << "init gone with its creator";
  kill(kept.child, SIGKILL);
  EXPECT_NE(WaitUpTo10s(kept.child), -1);
  EXPECT_NE(WaitUpTo10s(kept.init), -1);

  const Spawned ended = SpawnFromEndedThread(InitLifetime::kEndsWithCreatorThread);
  ASSERT_GT(ended.child, 0);
  const int status = WaitUpTo10s(ended.child);
  if (status == -1) {  // reaped first: the init's exit waits for it
    kill(ended.child, SIGKILL);
    waitpid(ended.child, nullptr, 0);
  }
  EXPECT_TRUE(status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  const int init_status = WaitUpTo10s(ended.init);
  if (init_status == -1) {
    kill(ended.init, SIGKILL);
    waitpid(ended.init, nullptr, 0);
  }
  EXPECT_TRUE(init_status != -1 && WIFSIGNALED(init_status) && WTERMSIG(init_status) == SIGKILL)
      << init_status;
  EXPECT_TRUE(HasNoChildren());
}

}  // namespace
}  // namespace roam::ckpt
