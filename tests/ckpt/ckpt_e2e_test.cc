// Checkpoint and restore of whole processes through the roam CLI, as a user
// runs them: self-checking workloads, real programs compared byte for byte
// with an undisturbed run, every refusal, and damaged images.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/test_util.h"

extern char** environ;

namespace roam {
namespace {

namespace fs = std::filesystem;
using testing::BuildDir;
using testing::ReadFile;
using testing::RunCommand;
using testing::TempDir;

std::string Bin(const std::string& name) { return (BuildDir() / "bin" / name).string(); }
std::string TestBin(const std::string& name) { return (BuildDir() / "tests" / name).string(); }

void Spit(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A process started for a test, killed and reaped when the test ends.
class Process {
 public:
  // stdin from `stdin_fd` (-1: /dev/null), stdout and stderr appended to `out`.
  Process(const std::vector<std::string>& argv, const fs::path& out, int stdin_fd = -1) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (stdin_fd >= 0) {
      posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0);
    } else {
      posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    }
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    // Only what the test gives: fds the test runner leaks would be refused.
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
  }
  ~Process() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // Exit status, 128+signal if killed.
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  bool RunningAndNotStopped() const {
    std::ifstream stat("/proc/" + std::to_string(pid_) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    const auto close = text.rfind(')');
    if (close == std::string::npos || close + 2 >= text.size()) return false;
    const char state = text[close + 2];
    return state == 'S' || state == 'R' || state == 'D';
  }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
};

// Waits until `path` contains `text`.
bool WaitFor(const fs::path& path, const std::string& text, double seconds = 20) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (ReadFile(path).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Waits until `done()` holds.
bool WaitUntil(const std::function<bool()>& done, double seconds = 20) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::string ProcFile(pid_t pid, const std::string& name) {
  return ReadFile("/proc/" + std::to_string(pid) + "/" + name);
}

// The value of `key` in /proc/PID/status ("" if the process is gone).
std::string StatusField(pid_t pid, const std::string& key) {
  std::istringstream in(ProcFile(pid, "status"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + ":", 0) == 0) {
      const auto value = line.find_first_not_of(" \t", key.size() + 1);
      return value == std::string::npos ? "" : line.substr(value);
    }
  }
  return "";
}

std::vector<pid_t> ParsePids(const std::string& text) {
  std::istringstream in(text);
  std::vector<pid_t> pids;
  for (pid_t p = 0; in >> p;) pids.push_back(p);
  return pids;
}

// A task's pid in each pid namespace it is in, outermost first (NSpid).
std::vector<pid_t> NsPids(pid_t pid) { return ParsePids(StatusField(pid, "NSpid")); }

std::vector<pid_t> ChildrenOf(pid_t pid) {
  return ParsePids(ProcFile(pid, "task/" + std::to_string(pid) + "/children"));
}

std::vector<pid_t> ThreadsOf(pid_t pid) {
  std::vector<pid_t> tids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    tids.push_back(std::stoi(e.path().filename().string()));
  }
  std::sort(tids.begin(), tids.end());
  return tids;
}

// The address ranges a process has mapped, touching mappings merged
// (the kernel may split or merge them differently), [vsyscall] left out.
std::vector<std::pair<std::uint64_t, std::uint64_t>> MappedRanges(pid_t pid) {
  std::istringstream in(ProcFile(pid, "maps"));
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (std::string line; std::getline(in, line);) {
    if (line.find("[vsyscall]") != std::string::npos) continue;
    const std::uint64_t start = std::stoull(line, nullptr, 16);
    const std::uint64_t end = std::stoull(line.substr(line.find('-') + 1), nullptr, 16);
    if (!ranges.empty() && ranges.back().second == start) {
      ranges.back().second = end;
    } else {
      ranges.emplace_back(start, end);
    }
  }
  return ranges;
}

std::string PidNamespaceOf(pid_t pid) {
  std::error_code ec;
  return fs::read_symlink("/proc/" + std::to_string(pid) + "/ns/pid", ec).string();
}

// `roam restore ... --pid-ns` running for a test, and the two children it
// makes: the restored process and the init of its pid namespace. If the
// namespace is still there when the test ends, its init is killed, which
// kills everything in it.
class NamespacedRestore {
 public:
  NamespacedRestore(const std::vector<std::string>& argv, const fs::path& log) : roam_(argv, log) {}
  NamespacedRestore(const NamespacedRestore&) = delete;
  NamespacedRestore& operator=(const NamespacedRestore&) = delete;
  ~NamespacedRestore() {
    const auto ids = init_ > 0 ? NsPids(init_) : std::vector<pid_t>{};
    if (ids.size() > 1 && ids.back() == 1) kill(init_, SIGKILL);
  }

  // Waits until both children exist and the process, named `comm` by then,
  // runs untraced: the restore is complete. False at once if roam exits.
  bool Find(const std::string& comm) {
    bool found = false;
    WaitUntil([&] {
      for (const pid_t c : ChildrenOf(roam_.pid())) {
        const auto ids = NsPids(c);
        if (ids.size() < 2) continue;
        (ids.back() == 1 ? init_ : process_) = c;
      }
      found = init_ > 0 && process_ > 0 && ProcFile(process_, "comm") == comm + "\n" &&
              StatusField(process_, "TracerPid") == "0";
      return found || StatusField(roam_.pid(), "State").rfind('Z', 0) == 0;
    });
    return found;
  }

  Process& roam() { return roam_; }
  pid_t process() const { return process_; }
  pid_t init() const { return init_; }

 private:
  Process roam_;
  pid_t init_ = -1;
  pid_t process_ = -1;
};

class CkptTest : public ::testing::Test {
 protected:
  void SetUp() override { ROAM_SKIP_UNLESS_ROOT("checkpoint/restore tests run as root in CI"); }

  fs::path Path(const std::string& name) const { return dir_.path() / name; }

  // roam checkpoint PID -o img, which must succeed and end the process.
  void CheckpointAndEnd(Process& w) {
    const auto cp = RunCommand(
        {Bin("roam"), "checkpoint", std::to_string(w.pid()), "-o", Path("img").string()});
    ASSERT_EQ(cp.exit_code, 0) << cp.err << cp.out;
    EXPECT_EQ(w.Wait(), 128 + SIGKILL) << "checkpoint without --leave-running ends the process";
  }

  TempDir dir_;
};

TEST_F(CkptTest, SelfCheckingWorkloadSurvivesStopCopy) {
  Spit(Path("data"), "ABCDEFGHIJ");
  Spit(Path("stdin"), "go on\n");
  int p[2];
  ASSERT_EQ(pipe(p), 0);  // stdin is a pipe: the restorer supplies fd 0
  Process w({TestBin("ckpt_workload"), "1.5", Path("data").string()}, Path("out"), p[0]);
  close(p[0]);
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  const auto cp =
      RunCommand({Bin("roam"), "checkpoint", std::to_string(w.pid()), "-o", Path("img").string()});
  ASSERT_EQ(cp.exit_code, 0) << cp.err << cp.out;
  EXPECT_EQ(w.Wait(), 128 + SIGKILL);  // checkpoint without --leave-running ends it
  close(p[1]);
  struct stat st {};
  ASSERT_EQ(stat(Path("img").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  const auto rs =
      RunCommand({Bin("roam"), "restore", Path("img").string(), "--stdin", Path("stdin").string()});
  EXPECT_EQ(rs.exit_code, 0) << rs.err;
  const std::string out = ReadFile(Path("out"));
  EXPECT_NE(out.find("data ABCDEFGH\n"), std::string::npos) << out;
  EXPECT_NE(out.find("stdin go on\n"), std::string::npos) << out;
  EXPECT_NE(out.find("ok after"), std::string::npos) << out;
  EXPECT_EQ(out.find("broken"), std::string::npos) << out;
}

// Post-copy: the process resumes before its 64 MiB heap is in place; the
// workload's full pattern scan proves every page arrived.
TEST_F(CkptTest, SelfCheckingWorkloadSurvivesPostCopy) {
  Spit(Path("data"), "ABCDEFGHIJ");
  Spit(Path("stdin"), "lazy\n");
  Process w({TestBin("ckpt_workload"), "1.0", Path("data").string()}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  const auto rs = RunCommand({Bin("roam"), "restore", Path("img").string(), "--lazy", "--same-pid",
                              "--stdin", Path("stdin").string()});
  EXPECT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_EQ(rs.err.find("post-copy unavailable"), std::string::npos) << rs.err;
  const std::string out = ReadFile(Path("out"));
  EXPECT_NE(out.find("ok after"), std::string::npos) << out;
  EXPECT_EQ(out.find("broken"), std::string::npos) << out;
}

// Post-copy and fork: the restored process forks as soon as it runs, while
// most of its 48 MiB are still missing; the child must see the source's
// bytes, not zeros, and so must the parent.
TEST_F(CkptTest, ChildForkedRightAfterLazyRestoreSeesEveryByte) {
  Spit(Path("stdin"), "go\n");
  int p[2];
  ASSERT_EQ(pipe(p), 0);  // blocks reading it until the restore gives a line
  Process w({TestBin("ckpt_forker"), "48"}, Path("out"), p[0]);
  close(p[0]);
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  close(p[1]);
  const auto rs = RunCommand(
      {Bin("roam"), "restore", Path("img").string(), "--lazy", "--stdin", Path("stdin").string()});
  EXPECT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_EQ(rs.err.find("post-copy unavailable"), std::string::npos) << rs.err;
  const std::string out = ReadFile(Path("out"));
  EXPECT_NE(out.find("child ok"), std::string::npos) << out;
  EXPECT_NE(out.find("parent ok"), std::string::npos) << out;
}

TEST_F(CkptTest, ThreadsSurvivePostCopy) {
  Process w({TestBin("ckpt_threads"), "1.0"}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  const auto rs =
      RunCommand({Bin("roam"), "restore", Path("img").string(), "--same-pid", "--lazy"});
  EXPECT_EQ(rs.exit_code, 0) << rs.err << ReadFile(Path("out"));
  EXPECT_NE(ReadFile(Path("out")).find("ok threads"), std::string::npos) << ReadFile(Path("out"));
}

TEST_F(CkptTest, BlockedReadIsRestartedAfterRestore) {
  Spit(Path("data"), "ABCDEFGHIJ");
  Spit(Path("stdin"), "late line\n");
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  Process w({TestBin("ckpt_workload"), "0.1", Path("data").string()}, Path("out"), p[0]);
  close(p[0]);
  // After "data" it blocks reading stdin.
  ASSERT_TRUE(WaitFor(Path("out"), "data ABCDEFGH")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  close(p[1]);
  const auto rs =
      RunCommand({Bin("roam"), "restore", Path("img").string(), "--stdin", Path("stdin").string()});
  EXPECT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_NE(ReadFile(Path("out")).find("stdin late line\nok after"), std::string::npos)
      << ReadFile(Path("out"));
}

TEST_F(CkptTest, LeaveRunningKeepsTheOriginalGoing) {
  Spit(Path("data"), "ABCDEFGHIJ");
  Process w({TestBin("ckpt_workload"), "0.8", Path("data").string()}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready"));
  const auto cp = RunCommand({Bin("roam"), "checkpoint", std::to_string(w.pid()), "-o",
                              Path("img").string(), "--leave-running"});
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  EXPECT_EQ(w.Wait(), 0) << ReadFile(Path("out"));
  EXPECT_NE(ReadFile(Path("out")).find("ok after"), std::string::npos);
}

// Real programs nobody here wrote: output after a mid-run checkpoint and
// restore must equal an undisturbed run, byte for byte.
void CompareWithUndisturbed(const TempDir& dir, const std::vector<std::string>& argv,
                            const std::string& output_file, int checkpoint_after_ms,
                            const std::vector<std::string>& checkpoint_flags = {}) {
  const fs::path reference = dir.path() / "reference";
  const fs::path migrated = dir.path() / "migrated";
  auto with_output = [&](const fs::path& out) {
    std::vector<std::string> a = argv;
    for (auto& s : a) {
      if (s == "@OUT") s = out.string();
    }
    return a;
  };
  {
    Process ref(with_output(reference), output_file.empty() ? reference : dir.path() / "ref.log");
    ASSERT_EQ(ref.Wait(), 0) << ReadFile(dir.path() / "ref.log");
  }
  Process run(with_output(migrated), output_file.empty() ? migrated : dir.path() / "mig.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(checkpoint_after_ms));
  std::vector<std::string> checkpoint = {Bin("roam"), "checkpoint", std::to_string(run.pid()), "-o",
                                         (dir.path() / "img").string()};
  checkpoint.insert(checkpoint.end(), checkpoint_flags.begin(), checkpoint_flags.end());
  const auto cp = RunCommand(checkpoint);
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  EXPECT_EQ(run.Wait(), 128 + SIGKILL) << "the program finished before the checkpoint";
  if (!checkpoint_flags.empty()) std::printf("%s", cp.out.c_str());
  const auto rs = RunCommand({Bin("roam"), "restore", (dir.path() / "img").string()});
  ASSERT_EQ(rs.exit_code, 0) << rs.err;
  const std::string a = ReadFile(reference), b = ReadFile(migrated);
  EXPECT_GT(a.size(), 0u);
  EXPECT_TRUE(a == b) << "outputs differ: " << a.size() << " vs " << b.size() << " bytes";
}

TEST_F(CkptTest, PythonLoopMatchesUndisturbedRun) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/python3";
  Spit(Path("loop.py"),
       "import hashlib\n"
       "h = hashlib.sha256()\n"
       "acc = 0\n"
       "for i in range(12_000_000):\n"
       "    acc = (acc * 31 + i) % 1_000_003\n"
       "    if i % 400_000 == 0:\n"
       "        h.update(str(acc).encode()); print(i, acc, h.hexdigest()[:16], flush=True)\n"
       "print('done', acc)\n");
  CompareWithUndisturbed(dir_, {"/usr/bin/python3", Path("loop.py").string()}, "", 600);
}

// A signal pending for the thread itself (tgkill while blocked) is still
// pending after a restore that gave the process a new pid.
TEST_F(CkptTest, ThreadSignalPendingAcrossANewPid) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/python3";
  Spit(Path("pending.py"),
       "import signal, threading, time\n"
       "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n"
       "signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)\n"
       "print('ready', flush=True)\n"
       "time.sleep(1.0)\n"
       "print('pending' if signal.SIGUSR1 in signal.sigpending() else 'lost', flush=True)\n");
  Process w({"/usr/bin/python3", Path("pending.py").string()}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  const auto rs = RunCommand({Bin("roam"), "restore", Path("img").string()});
  EXPECT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_NE(ReadFile(Path("out")).find("pending"), std::string::npos) << ReadFile(Path("out"));
}

TEST_F(CkptTest, BcPiMatchesUndisturbedRun) {
  if (access("/usr/bin/bc", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/bc";
  Spit(Path("pi.bc"), "scale=2000\n4*a(1)\nquit\n");
  CompareWithUndisturbed(dir_, {"/usr/bin/bc", "-lq", Path("pi.bc").string()}, "", 300);
}

void CompareXz(const TempDir& dir, const std::vector<std::string>& checkpoint_flags) {
  // 8 MiB of compressible but not trivial data.
  {
    std::ofstream in((dir.path() / "input"), std::ios::binary);
    std::uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < (8 << 20) / 8; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      const std::uint64_t v = x % 64;
      in.write(reinterpret_cast<const char*>(&v), sizeof(v));
    }
  }
  const std::string script =
      "exec /usr/bin/xz -9 -T1 -c " + (dir.path() / "input").string() + " > \"$1\"";
  CompareWithUndisturbed(dir, {"/bin/sh", "-c", script, "sh", "@OUT"}, "log", 1500,
                         checkpoint_flags);
}

TEST_F(CkptTest, XzMatchesUndisturbedRun) {
  if (access("/usr/bin/xz", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/xz";
  CompareXz(dir_, {});
}

// Pre-copy rounds while xz keeps writing its dictionary, then the freeze.
TEST_F(CkptTest, XzWithPreCopyMatchesUndisturbedRun) {
  if (access("/usr/bin/xz", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/xz";
  CompareXz(dir_, {"--pre-copy", "3"});
}

// Without root the engine does what the kernel allows (ptrace of one's own
// processes, PR_SET_MM_MAP without the exe link) and says what it could not.
TEST_F(CkptTest, UnprivilegedUserCheckpointsAndRestoresOwnProcess) {
  if (access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "needs setpriv (util-linux)";
  constexpr uid_t kNobody = 65534;
  const fs::path home = Path("nobody");
  fs::create_directory(home);
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  ASSERT_EQ(chown(home.c_str(), kNobody, kNobody), 0);
  Spit(home / "data", "ABCDEFGHIJ");
  Spit(home / "out", "");
  ASSERT_EQ(chown((home / "out").c_str(), kNobody, kNobody), 0);
  const std::vector<std::string> as_nobody = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                              "--clear-groups", "--"};
  auto nobody = [&](std::vector<std::string> argv) {
    argv.insert(argv.begin(), as_nobody.begin(), as_nobody.end());
    return argv;
  };
  Process w(nobody({TestBin("ckpt_workload"), "1.0", (home / "data").string()}), home / "out");
  ASSERT_TRUE(WaitFor(home / "out", "ready")) << ReadFile(home / "out");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // Pre-copy too: its userfaultfd is made by the target, here not root.
  const auto cp = RunCommand(nobody({Bin("roam"), "checkpoint", std::to_string(w.pid()), "-o",
                                     (home / "img").string(), "--pre-copy", "2"}));
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  EXPECT_NE(cp.out.find("pre-copy round 1"), std::string::npos) << cp.out;
  w.Wait();

  // Keeping the pid needs CAP_CHECKPOINT_RESTORE: refused, nothing started.
  const auto same =
      RunCommand(nobody({Bin("roam"), "restore", (home / "img").string(), "--same-pid"}));
  EXPECT_EQ(same.exit_code, 1);
  EXPECT_NE(same.err.find("permission-denied"), std::string::npos) << same.err;
  // So does a pid namespace of its own (CAP_SYS_ADMIN).
  const auto before = ReadFile(home / "out");
  const auto ns = RunCommand(nobody({Bin("roam"), "restore", (home / "img").string(), "--pid-ns"}));
  EXPECT_EQ(ns.exit_code, 1);
  EXPECT_EQ(std::count(ns.err.begin(), ns.err.end(), '\n'), 1) << ns.err;
  EXPECT_NE(ns.err.find("permission-denied"), std::string::npos) << ns.err;
  EXPECT_NE(ns.err.find("CAP_SYS_ADMIN"), std::string::npos) << ns.err;
  EXPECT_EQ(ReadFile(home / "out"), before) << "the refused restore ran the process";

  // Post-copy needs what nobody lacks (fork events want CAP_SYS_PTRACE; a
  // userfaultfd for kernel faults wants root): stop-copy, and it says so.
  const auto rs = RunCommand(nobody({Bin("roam"), "restore", (home / "img").string(), "--lazy"}));
  EXPECT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_NE(rs.err.find("exe link not restored"), std::string::npos) << rs.err;
  EXPECT_NE(rs.err.find("post-copy unavailable, restored by stop-copy"), std::string::npos)
      << rs.err;
  EXPECT_NE(ReadFile(home / "out").find("ok after"), std::string::npos) << ReadFile(home / "out");
}

TEST_F(CkptTest, SamePidRestoreKeepsThePid) {
  Spit(Path("data"), "ABCDEFGHIJ");
  Process w({TestBin("ckpt_workload"), "1.0", Path("data").string()}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready"));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  const auto rs =
      RunCommand({Bin("roam"), "restore", Path("img").string(), "--same-pid", "--detach"});
  ASSERT_EQ(rs.exit_code, 0) << rs.err;
  EXPECT_EQ(rs.out, "restored as pid " + std::to_string(w.pid()) + "\n");
  EXPECT_EQ(rs.err.find("pid changed"), std::string::npos) << rs.err;
  // It was reparented away from the exited roam: wait for its output.
  EXPECT_TRUE(WaitFor(Path("out"), "ok after")) << ReadFile(Path("out"));
}

TEST_F(CkptTest, ThreadsKeepTheirIdsRobustMutexAndRaise) {
  Process w({TestBin("ckpt_threads"), "1.5"}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  // New thread ids would break glibc: refused without --same-pid.
  const auto refused = RunCommand({Bin("roam"), "restore", Path("img").string()});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("--same-pid"), std::string::npos) << refused.err;
  const auto rs = RunCommand({Bin("roam"), "restore", Path("img").string(), "--same-pid"});
  EXPECT_EQ(rs.exit_code, 0) << rs.err << ReadFile(Path("out"));
  EXPECT_NE(ReadFile(Path("out")).find("ok threads"), std::string::npos) << ReadFile(Path("out"));
}

// The pool's way: each process in a pid namespace of its own behind a roam
// init, where its pid and every tid are free even while the original still
// runs here with them. Restored twice at once, both keep the ids; the
// workload's raise(), pthread_kill() and robust mutex check them.
TEST_F(CkptTest, PidNamespaceRestoreKeepsIdsWhileTheyAreInUseHere) {
  Process w({TestBin("ckpt_threads"), "4.0"}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto cp = RunCommand({Bin("roam"), "checkpoint", std::to_string(w.pid()), "-o",
                              Path("img").string(), "--leave-running"});
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  const std::vector<pid_t> tids = ThreadsOf(w.pid());
  ASSERT_EQ(tids.size(), 5u);

  NamespacedRestore first({Bin("roam"), "restore", Path("img").string(), "--pid-ns"},
                          Path("first.log"));
  NamespacedRestore second({Bin("roam"), "restore", Path("img").string(), "--pid-ns"},
                           Path("second.log"));
  for (auto* r : {&first, &second}) {
    ASSERT_TRUE(r->Find("ckpt_threads"))
        << ReadFile(Path("first.log")) << ReadFile(Path("second.log"));
    EXPECT_NE(PidNamespaceOf(r->process()), PidNamespaceOf(getpid()));
    EXPECT_EQ(NsPids(r->process()).back(), w.pid());
    std::vector<pid_t> inside;
    for (const pid_t t : ThreadsOf(r->process())) inside.push_back(NsPids(t).back());
    std::sort(inside.begin(), inside.end());
    EXPECT_EQ(inside, tids);
    // Exactly the original's memory map: nothing of the restorer (whose
    // copy the restore began as) is left.
    EXPECT_EQ(MappedRanges(r->process()), MappedRanges(w.pid()))
        << ProcFile(r->process(), "maps") << "\noriginal:\n"
        << ProcFile(w.pid(), "maps");
    // The init lives as long as the process: it must not hold the image.
    EXPECT_EQ(ProcFile(r->init(), "maps").find("pages.img"), std::string::npos)
        << ProcFile(r->init(), "maps");
  }
  EXPECT_NE(PidNamespaceOf(first.process()), PidNamespaceOf(second.process()));
  EXPECT_EQ(w.Wait(), 0) << ReadFile(Path("out"));
  EXPECT_EQ(first.roam().Wait(), 0) << ReadFile(Path("first.log")) << ReadFile(Path("out"));
  EXPECT_EQ(second.roam().Wait(), 0) << ReadFile(Path("second.log")) << ReadFile(Path("out"));
  EXPECT_NE(ReadFile(Path("out")).find("ok threads"), std::string::npos) << ReadFile(Path("out"));
  EXPECT_EQ(ReadFile(Path("out")).find("broken"), std::string::npos) << ReadFile(Path("out"));
  // roam reaped the inits after the processes.
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(first.init())));
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(second.init())));
}

// A process restored into its own pid namespace is captured with the ids it
// knows (those inside) and moves again into a fresh namespace.
TEST_F(CkptTest, ProcessRestoredInAPidNamespaceMovesAgain) {
  Process w({TestBin("ckpt_threads"), "3.0"}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::vector<pid_t> tids = ThreadsOf(w.pid());
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  NamespacedRestore first({Bin("roam"), "restore", Path("img").string(), "--pid-ns"},
                          Path("first.log"));
  ASSERT_TRUE(first.Find("ckpt_threads")) << ReadFile(Path("first.log")) << ReadFile(Path("out"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto check =
      RunCommand({Bin("roam"), "checkpoint", "--check", std::to_string(first.process())});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  const auto cp = RunCommand(
      {Bin("roam"), "checkpoint", std::to_string(first.process()), "-o", Path("img2").string()});
  ASSERT_EQ(cp.exit_code, 0) << cp.err;
  EXPECT_EQ(first.roam().Wait(), 128 + SIGKILL) << ReadFile(Path("first.log"));
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(first.init())));

  NamespacedRestore again({Bin("roam"), "restore", Path("img2").string(), "--pid-ns"},
                          Path("again.log"));
  ASSERT_TRUE(again.Find("ckpt_threads")) << ReadFile(Path("again.log")) << ReadFile(Path("out"));
  EXPECT_EQ(NsPids(again.process()).back(), w.pid());
  std::vector<pid_t> inside;
  for (const pid_t t : ThreadsOf(again.process())) inside.push_back(NsPids(t).back());
  std::sort(inside.begin(), inside.end());
  EXPECT_EQ(inside, tids);
  EXPECT_EQ(again.roam().Wait(), 0) << ReadFile(Path("again.log")) << ReadFile(Path("out"));
  EXPECT_NE(ReadFile(Path("out")).find("ok threads"), std::string::npos) << ReadFile(Path("out"));
  EXPECT_EQ(ReadFile(Path("out")).find("broken"), std::string::npos) << ReadFile(Path("out"));
}

// Signals reach the restored process straight, through the init and through
// roam restore; an orphan it leaves is reaped by the init; the init ends
// with the process.
TEST_F(CkptTest, PidNamespaceInitForwardsSignalsAndReapsOrphans) {
  Process w({TestBin("ckpt_signals")}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));
  NamespacedRestore r({Bin("roam"), "restore", Path("img").string(), "--pid-ns"}, Path("log"));
  ASSERT_TRUE(r.Find("ckpt_signals")) << ReadFile(Path("log")) << ReadFile(Path("out"));
  EXPECT_EQ(NsPids(r.process()).back(), w.pid());
  EXPECT_EQ(PidNamespaceOf(r.init()), PidNamespaceOf(r.process()));

  // roam comes last: the init forwarding proves roam has finished restoring
  // and is about to install its own forwarding.
  int sent = 0;
  for (const pid_t to : {r.process(), r.init(), r.roam().pid()}) {
    ASSERT_GT(to, 0);
    ASSERT_EQ(kill(to, SIGUSR1), 0);
    EXPECT_TRUE(WaitFor(Path("out"), "usr1 " + std::to_string(++sent)))
        << "SIGUSR1 sent to pid " << to << " did not arrive: " << ReadFile(Path("out"));
  }

  ASSERT_EQ(kill(r.process(), SIGUSR2), 0);
  ASSERT_TRUE(WaitFor(Path("out"), "orphan ")) << ReadFile(Path("out"));
  EXPECT_NE(ReadFile(Path("out")).find(" ppid 1\n"), std::string::npos)
      << "the orphan was not reparented to the namespace's init: " << ReadFile(Path("out"));
  EXPECT_TRUE(WaitUntil([&] { return ChildrenOf(r.init()).empty(); }))
      << "the init left a zombie: children "
      << ProcFile(r.init(), "task/" + std::to_string(r.init()) + "/children");

  ASSERT_EQ(kill(r.init(), SIGTERM), 0);
  EXPECT_EQ(r.roam().Wait(), 0) << ReadFile(Path("log")) << ReadFile(Path("out"));
  EXPECT_NE(ReadFile(Path("out")).find("term after 3 usr1"), std::string::npos)
      << ReadFile(Path("out"));
  EXPECT_FALSE(fs::exists("/proc/" + std::to_string(r.init())));
}

class RefusalTest : public CkptTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(RefusalTest, RefusedAndLeftRunning) {
  const std::string reason = GetParam();
  Process w({TestBin("ckpt_refusal"), reason}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready")) << ReadFile(Path("out"));
  if (reason == "traced") {
    ASSERT_EQ(ptrace(PTRACE_SEIZE, w.pid(), nullptr, nullptr), 0);
  }
  const auto check = RunCommand({Bin("roam"), "checkpoint", "--check", std::to_string(w.pid())});
  EXPECT_EQ(check.exit_code, 1);
  EXPECT_NE(check.out.find("(" + reason + ")"), std::string::npos) << check.out;

  const auto cp =
      RunCommand({Bin("roam"), "checkpoint", std::to_string(w.pid()), "-o", Path("img").string()});
  EXPECT_EQ(cp.exit_code, 1);
  EXPECT_EQ(std::count(cp.err.begin(), cp.err.end(), '\n'), 1) << cp.err;
  EXPECT_NE(cp.err.find("not-migratable"), std::string::npos) << cp.err;
  EXPECT_FALSE(fs::exists(Path("img"))) << "a refused checkpoint created its directory";
  EXPECT_TRUE(w.RunningAndNotStopped()) << "the refused process is not running";
  if (reason == "traced") ptrace(PTRACE_DETACH, w.pid(), nullptr, nullptr);
}

INSTANTIATE_TEST_SUITE_P(EveryReason, RefusalTest,
                         ::testing::Values("socket", "eventfd", "epoll", "inotify", "timerfd",
                                           "signalfd", "memfd", "sysv-shm", "posix-shm",
                                           "shared-anonymous", "device-mapping", "child-processes",
                                           "seccomp", "namespaces", "external-pipe", "traced"));

TEST_F(CkptTest, CheckSaysAPlainProcessCanMigrate) {
  Process w({TestBin("ckpt_refusal"), "none"}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready"));
  const auto check = RunCommand({Bin("roam"), "checkpoint", "--check", std::to_string(w.pid())});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  EXPECT_NE(check.out.find("can be checkpointed"), std::string::npos);
  EXPECT_TRUE(w.RunningAndNotStopped());
}

TEST_F(CkptTest, MissingProcessIsAOneLineError) {
  const auto cp = RunCommand({Bin("roam"), "checkpoint", "999999999", "-o", Path("img").string()});
  EXPECT_NE(cp.exit_code, 0);
  EXPECT_EQ(std::count(cp.err.begin(), cp.err.end(), '\n'), 1) << cp.err;
}

// A damaged image is refused with a clear error before anything runs.
TEST_F(CkptTest, DamagedImagesAreRefused) {
  Spit(Path("data"), "ABCDEFGHIJ");
  Process w({TestBin("ckpt_workload"), "30", Path("data").string()}, Path("out"));
  ASSERT_TRUE(WaitFor(Path("out"), "ready"));
  ASSERT_NO_FATAL_FAILURE(CheckpointAndEnd(w));

  struct Damage {
    const char* name;
    const char* file;
    std::function<void(std::string&)> apply;
  };
  const std::vector<Damage> damages = {
      {"truncated pages", "pages.img", [](std::string& s) { s.resize(s.size() / 2); }},
      {"flipped page byte", "pages.img", [](std::string& s) { s[s.size() / 3] ^= 0x40; }},
      {"truncated meta", "meta.img", [](std::string& s) { s.resize(s.size() - 7); }},
      {"flipped meta byte", "meta.img", [](std::string& s) { s[s.size() - 20] ^= 0x01; }},
      {"wrong version", "meta.img", [](std::string& s) { s[8] = 99; }},
  };
  for (const auto& d : damages) {
    const fs::path copy = Path(std::string("bad-") + d.name);
    fs::copy(Path("img"), copy);
    std::string bytes = ReadFile(copy / d.file);
    d.apply(bytes);
    Spit(copy / d.file, bytes);
    const auto before = ReadFile(Path("out"));
    const auto rs = RunCommand({Bin("roam"), "restore", copy.string()});
    EXPECT_NE(rs.exit_code, 0) << d.name;
    EXPECT_EQ(std::count(rs.err.begin(), rs.err.end(), '\n'), 1) << d.name << ": " << rs.err;
    EXPECT_TRUE(rs.err.find("corrupt") != std::string::npos ||
                rs.err.find("incompatible") != std::string::npos)
        << d.name << ": " << rs.err;
    EXPECT_EQ(ReadFile(Path("out")), before) << d.name << ": the process ran";
  }
}

}  // namespace
}  // namespace roam
