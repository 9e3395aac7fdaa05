// Live migration modes through the library, on one host:
// - pre-copy: rounds copy a running process's memory while it maps, moves,
//   grows, drops and seals memory between them; the final capture reads only
//   what changed since, and the restored process finds every page as it last
//   wrote it;
// - post-copy from the frozen process: nothing is written anywhere, the
//   restored process runs at once and its pages come from the original;
// - stop-copy through staging memory faulted in ahead (no image file).
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/ckpt/dirty_tracker.h"
#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/page_store.h"
#include "core/ckpt/image/staging_pages.h"
#include "core/ckpt/lazy_pages.h"
#include "roam/ckpt/capture.h"
#include "roam/ckpt/restore.h"
#include "tests/support/test_util.h"

extern char** environ;

namespace roam::ckpt {
namespace {

using testing::Pipe;

// The CPUs this test process may use, before roam touched anything: roam
// pins tracer and tracee to one CPU while it works, and must undo it.
cpu_set_t OurCpus() {
  static const cpu_set_t initial = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    (void)sched_getaffinity(0, sizeof(set), &set);
    return set;
  }();
  return initial;
}

// Whether thread `tid` (0: this one) may run on the CPUs we started with.
bool SameAffinityAsUs(pid_t tid) {
  cpu_set_t ours = OurCpus(), theirs;
  if (sched_getaffinity(tid, sizeof(theirs), &theirs) != 0) return false;
  return CPU_EQUAL(&ours, &theirs);
}

// A field of /proc/PID/status, without its name.
std::string StatusField(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + ":", 0) == 0) {
      const auto value = line.find_first_not_of(" \t", name.size() + 1);
      return value == std::string::npos ? "" : line.substr(value);
    }
  }
  return "";
}

// Reads one line (without the newline); empty at end of file.
std::string ReadLine(int fd) {
  std::string line;
  char c = 0;
  while (read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

// Kills and reaps a child the test still owns.
struct Child {
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  int Wait() {
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  pid_t pid = -1;
};

class LiveMigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ROAM_SKIP_UNLESS_ROOT("seizes the workload and injects into it");
    (void)OurCpus();
  }

  // Starts the workload with its stdin and stdout on the fixture's pipes.
  void Spawn(Child& child) {
    const std::string workload = (testing::BuildDir() / "tests" / "ckpt_precopy").string();
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in_.fd[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out_.fd[1], 1);
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    char* argv[] = {const_cast<char*>(workload.c_str()), nullptr};
    ASSERT_EQ(posix_spawn(&child.pid, argv[0], &actions, nullptr, argv, environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    ASSERT_EQ(ReadLine(out_.fd[0]), "ready");
  }

  // The workload's hash of its memory.
  std::string Hash(int in, int out) {
    EXPECT_EQ(write(in, "h", 1), 1);
    return ReadLine(out);
  }

  // Sends command `c` and waits for its acknowledgement.
  void Command(char c) {
    ASSERT_EQ(write(in_.fd[1], &c, 1), 1);
    ASSERT_EQ(ReadLine(out_.fd[0]), std::string("done ") + c);
  }

  Pipe in_, out_;
};

TEST_F(LiveMigrationTest, PreCopyChangesBetweenRoundsArriveAfterRestore) {
  if (auto probe = DirtyTracker::Probe(); !probe) {
    GTEST_SKIP() << "kernel lacks async write-protect tracking: " << probe.error().ToString();
  }
  Child original;
  ASSERT_NO_FATAL_FAILURE(Spawn(original));

  auto pre = PreCopy::Start(original.pid);
  ASSERT_TRUE(pre.has_value()) << pre.error().ToString();
  auto first = pre->CopyRound();
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  EXPECT_GE(first->pages_read, 8192u) << "the first round copies the whole 32 MiB region";

  Command('w');  // every 7th page: 1171 pages
  Command('m');  // a new 4 MiB mapping: not registered yet
  auto second = pre->CopyRound();
  ASSERT_TRUE(second.has_value()) << second.error().ToString();
  EXPECT_LT(second->pages_read, first->pages_read / 2) << "a round copies only what changed";
  EXPECT_GE(second->pages_read, 1171u + 1024u);

  Command('r');  // the new mapping moves and grows
  Command('b');  // brk grows
  Command('d');  // pages dropped after they were copied
  ASSERT_TRUE(pre->CopyRound().has_value());

  // After the last round: only the final capture can see these.
  Command('s');
  Command('w');
  const std::string before = Hash(in_.fd[1], out_.fd[0]);
  ASSERT_EQ(before.rfind("hash ", 0), 0u) << before;

  testing::TempDir dir;
  const auto image = dir.path() / "img";
  CaptureOptions options;
  options.pre_copy = &*pre;
  auto captured = CheckpointToDirectory(original.pid, image, options);
  ASSERT_TRUE(captured.has_value()) << captured.error().ToString();
  EXPECT_EQ(original.Wait(), 128 + SIGKILL);
  EXPECT_GT(captured->pre_copied_pages, 8000u) << "most pages come from the rounds";
  std::printf("final capture: %llu pages from the rounds, %llu in the image, frozen %.2f ms\n",
              static_cast<unsigned long long>(captured->pre_copied_pages),
              static_cast<unsigned long long>(captured->pages_written),
              static_cast<double>(captured->frozen_ns) / 1e6);

  Pipe in2, out2;
  RestoreOptions restore;
  restore.stdio = {in2.fd[0], out2.fd[1], -1};
  auto restored = RestoreFromDirectory(image, restore);
  ASSERT_TRUE(restored.has_value()) << restored.error().ToString();
  Child copy;
  copy.pid = restored->pid;
  in2.CloseRead();
  out2.CloseWrite();
  ASSERT_EQ(write(in2.fd[1], "hv", 2), 2);
  EXPECT_EQ(ReadLine(out2.fd[0]), before) << "memory differs from the frozen process's";
  EXPECT_EQ(ReadLine(out2.fd[0]), "ok");
  EXPECT_EQ(copy.Wait(), 0);
}

TEST_F(LiveMigrationTest, PostCopyFromTheFrozenProcess) {
  Child original;
  ASSERT_NO_FATAL_FAILURE(Spawn(original));
  Command('w');
  Command('m');
  Command('d');
  const std::string before = Hash(in_.fd[1], out_.fd[0]);

  image::Image meta;
  CaptureStats captured;
  auto source = CaptureAsSource(original.pid, &meta, &captured);
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  EXPECT_GE((*source)->pages(), 8192u + 1024u);

  Pipe in2, out2;
  RestoreOptions restore;
  restore.lazy = true;
  restore.stdio = {in2.fd[0], out2.fd[1], -1};
  auto restored = Restore(meta, **source, restore);
  ASSERT_TRUE(restored.has_value()) << restored.error().ToString();
  Child copy;
  copy.pid = restored->pid;
  ASSERT_TRUE(restored->post_copy) << "post-copy was not used";
  EXPECT_TRUE(SameAffinityAsUs(copy.pid)) << "the copy kept the pin of the restore";
  EXPECT_TRUE(SameAffinityAsUs(0)) << "roam kept its own pin";
  std::printf("frozen %.2f ms, restored in %.2f ms, %llu pages left to post-copy\n",
              static_cast<double>(captured.frozen_ns) / 1e6,
              static_cast<double>(restored->restore_ns) / 1e6,
              static_cast<unsigned long long>(restored->lazy_pages));
  in2.CloseRead();
  out2.CloseWrite();
  // The copy runs while its pages still come from the frozen original.
  EXPECT_EQ(Hash(in2.fd[1], out2.fd[0]), before) << "memory differs from the frozen process's";
  auto served = restored->post_copy->Wait();
  ASSERT_TRUE(served.has_value()) << served.error().ToString();
  (*source)->Kill();
  EXPECT_EQ(original.Wait(), 128 + SIGKILL) << "the original goes once the copy has everything";
  ASSERT_EQ(write(in2.fd[1], "v", 1), 1);
  EXPECT_EQ(ReadLine(out2.fd[0]), "ok");
  EXPECT_EQ(copy.Wait(), 0);
}

TEST_F(LiveMigrationTest, StopCopyThroughStagingMemory) {
  Child original;
  ASSERT_NO_FATAL_FAILURE(Spawn(original));
  Command('w');
  Command('m');
  Command('d');
  Command('s');
  const std::string before = Hash(in_.fd[1], out_.fd[0]);

  // Staging made before the freeze and used twice: the second capture
  // reuses the memory of the first after Reset.
  auto staging = StagingPages::Create(std::size_t{64} << 20);
  ASSERT_TRUE(staging.has_value()) << staging.error().ToString();
  for (int pass = 0; pass < 2; ++pass) {
    SCOPED_TRACE(pass);
    (*staging)->Reset();
    image::Image meta;
    CaptureOptions options;
    options.leave_running = pass == 0;
    auto captured = Capture(original.pid, options, &meta, **staging);
    ASSERT_TRUE(captured.has_value()) << captured.error().ToString();
    EXPECT_GE(captured->pages_written, 8192u);
    EXPECT_LE((*staging)->used(), captured->pages_written * kPageSize + (4 << 20))
        << "pages went into the staging, zero pages apart";
    if (pass == 0) continue;
    EXPECT_EQ(original.Wait(), 128 + SIGKILL);

    Pipe in2, out2;
    RestoreOptions restore;
    restore.stdio = {in2.fd[0], out2.fd[1], -1};
    auto restored = Restore(meta, **staging, restore);
    ASSERT_TRUE(restored.has_value()) << restored.error().ToString();
    Child copy;
    copy.pid = restored->pid;
    in2.CloseRead();
    out2.CloseWrite();
    EXPECT_EQ(Hash(in2.fd[1], out2.fd[0]), before) << "memory differs from the frozen process's";
    ASSERT_EQ(write(in2.fd[1], "v", 1), 1);
    EXPECT_EQ(ReadLine(out2.fd[0]), "ok");
    EXPECT_EQ(copy.Wait(), 0);
  }
}

TEST_F(LiveMigrationTest, FailedRestoreResumesTheFrozenProcess) {
  Child original;
  ASSERT_NO_FATAL_FAILURE(Spawn(original));
  const std::string before = Hash(in_.fd[1], out_.fd[0]);
  image::Image meta;
  CaptureStats captured;
  auto source = CaptureAsSource(original.pid, &meta, &captured);
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  // Frozen, but with its own signal mask again: should roam die now, the
  // process would run on as it was, not with every signal blocked.
  EXPECT_EQ(StatusField(original.pid, "SigBlk"), "0000000000000000");
  RestoreOptions restore;
  restore.same_pid = true;  // the original still holds it: refused
  EXPECT_FALSE(Restore(meta, **source, restore).has_value());
  (*source)->Resume();
  EXPECT_TRUE(SameAffinityAsUs(original.pid)) << "the original kept the pin of the capture";
  EXPECT_TRUE(SameAffinityAsUs(0)) << "roam kept its own pin";
  EXPECT_EQ(Hash(in_.fd[1], out_.fd[0]), before) << "the original runs on as it was";
  ASSERT_EQ(write(in_.fd[1], "v", 1), 1);
  EXPECT_EQ(ReadLine(out_.fd[0]), "ok");
  EXPECT_EQ(original.Wait(), 0);
}

}  // namespace
}  // namespace roam::ckpt
