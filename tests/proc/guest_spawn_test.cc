// SpawnGuest: the guest gets exactly the identity, environment, directory,
// umask, stdio, fds, limits and cgroups it was given, in a pid namespace of
// its own; a failure is one line and leaves nothing behind; and the guest
// dies with its init, which dies with the thread that spawned it.
#include "roam/proc/guest_spawn.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/test_util.h"

namespace roam::proc {
namespace {

namespace fs = std::filesystem;
using testing::ReadFile;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

bool HasNoChildren() { return waitpid(-1, nullptr, WNOHANG | __WALL) < 0 && errno == ECHILD; }

// The value of a "Name:\t..." line of /proc/PID/status, tabs as spaces.
std::string StatusField(pid_t pid, const std::string& name) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + ":", 0) != 0) continue;
    std::string value = line.substr(name.size() + 1);
    for (char& c : value) {
      if (c == '\t') c = ' ';
    }
    const auto first = value.find_first_not_of(' ');
    const auto last = value.find_last_not_of(' ');
    return first == std::string::npos ? "" : value.substr(first, last - first + 1);
  }
  return "<none>";
}

std::string ReadAll(int fd) {
  std::string out;
  std::array<char, 4096> buf{};
  for (;;) {
    const ssize_t n = read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
}

struct Pipe {
  int read = -1;
  int write = -1;
  Pipe() {
    std::array<int, 2> fds{};
    if (pipe2(fds.data(), O_CLOEXEC) == 0) {
      read = fds[0];
      write = fds[1];
    }
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  ~Pipe() {
    CloseRead();
    CloseWrite();
  }
  void CloseRead() {
    if (read >= 0) close(std::exchange(read, -1));
  }
  void CloseWrite() {
    if (write >= 0) close(std::exchange(write, -1));
  }
};

// Waits for a child with a deadline; -1 if it is still there then.
int WaitFor(pid_t pid, std::chrono::seconds limit = std::chrono::seconds(20)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG | __WALL);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > end) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Kills and reaps the guest, then reaps its init, if a test left them (also
// after a failed wait: a dying init waits for the guest's reap).
struct GuestReaper {
  pid_t guest = -1;
  pid_t init = -1;
  explicit GuestReaper(const SpawnedGuest& g) : guest(g.pid), init(g.init_pid) {}
  GuestReaper(pid_t guest_pid, pid_t init_pid) : guest(guest_pid), init(init_pid) {}
  GuestReaper(const GuestReaper&) = delete;
  GuestReaper& operator=(const GuestReaper&) = delete;
  ~GuestReaper() {
    if (guest > 0) {
      kill(guest, SIGKILL);
      waitpid(guest, nullptr, __WALL);
    }
    if (init > 0) {
      kill(init, SIGKILL);
      waitpid(init, nullptr, __WALL);
    }
  }
  // Wait statuses, -1 while not reaped (then left to the destructor).
  int WaitGuest(std::chrono::seconds limit = std::chrono::seconds(20)) {
    const int status = WaitFor(guest, limit);
    if (status != -1) guest = -1;
    return status;
  }
  int WaitInit(std::chrono::seconds limit = std::chrono::seconds(20)) {
    const int status = WaitFor(init, limit);
    if (status != -1) init = -1;
    return status;
  }
  // The guest's wait status, then the init's exit (it ends with the guest).
  int WaitBoth() {
    const int status = WaitGuest();
    const int init_status = WaitInit();
    EXPECT_TRUE(init_status != -1 && WIFEXITED(init_status) && WEXITSTATUS(init_status) == 0)
        << init_status;
    return status;
  }
};

class GuestSpawnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ROAM_SKIP_UNLESS_ROOT("a pid namespace needs CAP_SYS_ADMIN, another uid needs CAP_SETUID");
    ASSERT_GE(null_in_, 0);
    ASSERT_GE(null_out_, 0);
  }
  void TearDown() override {
    close(null_in_);
    close(null_out_);
  }

  // Runs as root from /, stdio on /dev/null.
  GuestSpec Spec(std::vector<std::string> argv) const {
    GuestSpec spec;
    spec.argv = std::move(argv);
    spec.env = {"PATH=/usr/bin:/bin"};
    spec.cwd = "/";
    spec.uid = 0;
    spec.gid = 0;
    spec.stdio = {null_in_, null_out_, null_out_};
    return spec;
  }

  int null_in_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int null_out_ = open("/dev/null", O_WRONLY | O_CLOEXEC);
};

TEST_F(GuestSpawnTest, ExitCodeComesBackAndTheInitEndsWithTheGuest) {
  auto guest = SpawnGuest(Spec({"sh", "-c", "exit 7"}));
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);
  EXPECT_TRUE(guest->pidfd.valid());
  const int status = reaper.WaitBoth();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 7);
  EXPECT_TRUE(HasNoChildren());
}

TEST_F(GuestSpawnTest, RunsAsTheGivenUserInItsOwnSessionAndPidNamespace) {
  // A daemon commonly ignores SIGPIPE; its guests must not inherit that.
  struct sigaction ignore {};
  struct sigaction old {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGPIPE, &ignore, &old), 0);
  GuestSpec spec = Spec({"sleep", "1000"});
  spec.uid = kNobody;
  spec.gid = kNogroup;
  spec.groups = {kNogroup, 100};
  auto guest = SpawnGuest(spec);
  sigaction(SIGPIPE, &old, nullptr);
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);

  EXPECT_EQ(StatusField(guest->pid, "Uid"), "65534 65534 65534 65534");
  EXPECT_EQ(StatusField(guest->pid, "Gid"), "65534 65534 65534 65534");
  EXPECT_EQ(StatusField(guest->pid, "Groups"), "100 65534");
  EXPECT_EQ(StatusField(guest->pid, "NSpid"),
            std::to_string(guest->pid) + " " + std::to_string(guest->ns_pid));
  EXPECT_EQ(guest->ns_pid, 2);  // the first process after the init
  EXPECT_EQ(StatusField(guest->init_pid, "NSpid"), std::to_string(guest->init_pid) + " 1");
  EXPECT_EQ(StatusField(guest->pid, "SigBlk"), "0000000000000000");
  EXPECT_EQ(StatusField(guest->pid, "SigIgn"), "0000000000000000");
  // /proc/PID/stat: session (field 6) is its own pid, tty_nr (7) none.
  std::istringstream stat(ReadFile("/proc/" + std::to_string(guest->pid) + "/stat"));
  std::string field;
  std::vector<std::string> fields;
  while (stat >> field) fields.push_back(field);
  ASSERT_GT(fields.size(), 7U);
  EXPECT_EQ(fields[5], std::to_string(guest->pid));
  EXPECT_EQ(fields[6], "0");
}

TEST_F(GuestSpawnTest, EnvironmentIsExactlyTheGivenOne) {
  Pipe out;
  GuestSpec spec = Spec({"/usr/bin/env"});
  spec.env = {"A=1", "B=two words", "EMPTY="};
  spec.stdio[1] = out.write;
  auto guest = SpawnGuest(spec);
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);
  out.CloseWrite();
  EXPECT_EQ(ReadAll(out.read), "A=1\nB=two words\nEMPTY=\n");
  EXPECT_EQ(reaper.WaitBoth(), 0);
}

TEST_F(GuestSpawnTest, WorkingDirectoryAndUmaskApply) {
  testing::TempDir dir;
  Pipe out;
  GuestSpec spec = Spec({"sh", "-c", "pwd; umask"});
  spec.cwd = dir.path().string();
  spec.umask = 027;
  spec.stdio[1] = out.write;
  auto guest = SpawnGuest(spec);
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);
  out.CloseWrite();
  EXPECT_EQ(ReadAll(out.read), dir.path().string() + "\n0027\n");
  EXPECT_EQ(reaper.WaitBoth(), 0);
}

TEST_F(GuestSpawnTest, StdioGoesThroughTheGivenFds) {
  Pipe in;
  Pipe out;
  Pipe err;
  GuestSpec spec = Spec({"sh", "-c", "cat; echo oops >&2"});
  spec.stdio = {in.read, out.write, err.write};
  auto guest = SpawnGuest(spec);
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);
  in.CloseRead();
  out.CloseWrite();
  err.CloseWrite();
  ASSERT_EQ(write(in.write, "hello\n", 6), 6);
  in.CloseWrite();
  EXPECT_EQ(ReadAll(out.read), "hello\n");
  EXPECT_EQ(ReadAll(err.read), "oops\n");
  EXPECT_EQ(reaper.WaitBoth(), 0);
}

TEST_F(GuestSpawnTest, NoOtherFdReachesTheGuest) {
  const int leaked = open("/dev/null", O_RDONLY);  // no O_CLOEXEC
  ASSERT_GE(leaked, 3);
  // The same fd twice, and as 0: copies must not clobber each other.
  GuestSpec spec = Spec({"sleep", "1000"});
  spec.stdio = {leaked, null_out_, null_out_};
  auto guest = SpawnGuest(spec);
  close(leaked);
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);
  std::set<std::string> fds;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(guest->pid) + "/fd")) {
    fds.insert(e.path().filename().string());
  }
  EXPECT_EQ(fds, (std::set<std::string>{"0", "1", "2"}));
}

TEST_F(GuestSpawnTest, LimitsApplyAndOneAboveTheHardLimitIsClamped) {
  GuestSpec spec = Spec({"sleep", "1000"});
  spec.limits = {{RLIMIT_NOFILE, 64, 128}, {RLIMIT_MSGQUEUE, 1000, RLIM_INFINITY}};
  rlimit msgqueue{};
  ASSERT_EQ(getrlimit(RLIMIT_MSGQUEUE, &msgqueue), 0);
  auto guest = SpawnGuest(spec);
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);
  const std::string limits = ReadFile("/proc/" + std::to_string(guest->pid) + "/limits");
  EXPECT_NE(limits.find("Max open files            64                   128"), std::string::npos)
      << limits;
  // Raising a hard limit needs CAP_SYS_RESOURCE, which root here may lack:
  // then the hard limit stays and the soft one is applied below it.
  const std::string hard =
      msgqueue.rlim_max == RLIM_INFINITY ? "unlimited" : std::to_string(msgqueue.rlim_max);
  const std::string line = fmt::format("Max msgqueue size         {:<21}{:<21}bytes", 1000, hard);
  EXPECT_NE(limits.find(line), std::string::npos) << line << "\n" << limits;
}

TEST_F(GuestSpawnTest, MissingProgramIsOneLineAndLeavesNothing) {
  ASSERT_TRUE(HasNoChildren());
  auto guest = SpawnGuest(Spec({"nosuchprog-roam"}));
  ASSERT_FALSE(guest.has_value());
  EXPECT_EQ(guest.error().code(), Errc::kNotFound);
  EXPECT_EQ(guest.error().message(), "cannot run 'nosuchprog-roam'");
  EXPECT_EQ(guest.error().ToString(),
            "not-found: cannot run 'nosuchprog-roam': No such file or directory (ENOENT)");
  EXPECT_TRUE(HasNoChildren());  // guest and init both reaped
}

TEST_F(GuestSpawnTest, OtherRefusalsAreTypedAndLeaveNothing) {
  testing::TempDir dir;
  const fs::path plain = dir.path() / "plain";
  std::ofstream(plain) << "not a program\n";
  fs::permissions(plain, fs::perms::owner_read);

  auto no_exec = SpawnGuest(Spec({plain.string()}));
  ASSERT_FALSE(no_exec.has_value());
  EXPECT_EQ(no_exec.error().code(), Errc::kPermissionDenied) << no_exec.error().ToString();

  GuestSpec missing_dir = Spec({"true"});
  missing_dir.cwd = (dir.path() / "gone").string();
  auto no_dir = SpawnGuest(missing_dir);
  ASSERT_FALSE(no_dir.has_value());
  EXPECT_EQ(no_dir.error().code(), Errc::kNotFound);
  EXPECT_NE(no_dir.error().message().find("working directory"), std::string::npos);

  auto no_argv = SpawnGuest(Spec({}));
  ASSERT_FALSE(no_argv.has_value());
  EXPECT_EQ(no_argv.error().code(), Errc::kInvalidArgument);

  GuestSpec no_uid = Spec({"true"});
  no_uid.uid = kUnsetId;
  auto unset = SpawnGuest(no_uid);
  ASSERT_FALSE(unset.has_value());
  EXPECT_EQ(unset.error().code(), Errc::kInvalidArgument);

  GuestSpec bad_fd = Spec({"true"});
  bad_fd.stdio[2] = -1;
  auto no_stdio = SpawnGuest(bad_fd);
  ASSERT_FALSE(no_stdio.has_value());
  EXPECT_EQ(no_stdio.error().code(), Errc::kInvalidArgument);
  EXPECT_TRUE(HasNoChildren());
}

// A unique v1 cpu cgroup, removed at the end (its processes reaped first).
class CgroupDir final {
 public:
  CgroupDir() : path_(fs::path("/sys/fs/cgroup/cpu") / testing::UniqueName("roam-proc-")) {
    std::error_code ec;
    created_ = fs::create_directory(path_, ec);
  }
  CgroupDir(const CgroupDir&) = delete;
  CgroupDir& operator=(const CgroupDir&) = delete;
  ~CgroupDir() {
    if (created_) rmdir(path_.c_str());
  }
  bool created() const { return created_; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  bool created_ = false;
};

TEST_F(GuestSpawnTest, JoinsTheGivenCgroupsBeforeItRuns) {
  if (!fs::exists("/sys/fs/cgroup/cpu/cgroup.procs")) {
    GTEST_SKIP() << "no cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu";
  }
  CgroupDir cgroup;
  ASSERT_TRUE(cgroup.created()) << cgroup.path();
  {
    Pipe out;
    GuestSpec spec = Spec({"cat", "/proc/self/cgroup"});
    spec.cgroup_procs = {(cgroup.path() / "cgroup.procs").string()};
    spec.stdio[1] = out.write;
    auto guest = SpawnGuest(spec);
    ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
    GuestReaper reaper(*guest);
    out.CloseWrite();
    // What the program itself sees, from its first instruction on.
    const std::string seen = ReadAll(out.read);
    EXPECT_NE(seen.find(":cpu:/" + cgroup.path().filename().string() + "\n"), std::string::npos)
        << seen;
    EXPECT_EQ(reaper.WaitBoth(), 0);
  }
  // A cgroup that cannot be joined fails the spawn, leaving nothing.
  GuestSpec spec = Spec({"sleep", "1000"});
  spec.cgroup_procs = {(cgroup.path() / "cgroup.procs").string(),
                       (cgroup.path() / "gone" / "cgroup.procs").string()};
  auto refused = SpawnGuest(spec);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), Errc::kNotFound) << refused.error().ToString();
  EXPECT_TRUE(HasNoChildren());
  EXPECT_EQ(ReadFile(cgroup.path() / "cgroup.procs"), "");
}

TEST_F(GuestSpawnTest, KillingTheInitKillsTheGuest) {
  auto guest = SpawnGuest(Spec({"sleep", "1000"}));
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);
  ASSERT_EQ(kill(guest->init_pid, SIGKILL), 0);
  const int status = reaper.WaitGuest();
  ASSERT_TRUE(status != -1 && WIFSIGNALED(status)) << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

TEST_F(GuestSpawnTest, GuestDiesWhenItsSpawnerIsKilled) {
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  Pipe pids;
  const pid_t spawner = fork();
  ASSERT_GE(spawner, 0);
  if (spawner == 0) {
    auto guest = SpawnGuest(Spec({"sleep", "1000"}));
    const std::array<pid_t, 2> sent = {guest ? guest->pid : -1, guest ? guest->init_pid : -1};
    (void)!write(pids.write, sent.data(), sizeof(sent));
    for (;;) pause();
  }
  pids.CloseWrite();
  std::array<pid_t, 2> got = {-1, -1};
  ASSERT_EQ(read(pids.read, got.data(), sizeof(got)), static_cast<ssize_t>(sizeof(got)));
  kill(spawner, SIGKILL);
  waitpid(spawner, nullptr, 0);
  GuestReaper reaper(got[0], got[1]);  // reparented to us: still ours to reap
  ASSERT_GT(got[0], 0);
  const int status = reaper.WaitGuest(std::chrono::seconds(10));
  const int init_status = reaper.WaitInit(std::chrono::seconds(10));
  prctl(PR_SET_CHILD_SUBREAPER, 0);
  ASSERT_TRUE(status != -1 && WIFSIGNALED(status)) << "guest left running: " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(init_status) && WTERMSIG(init_status) == SIGKILL) << init_status;
}

// PR_SET_PDEATHSIG follows the spawning thread, not the process: a guest
// spawned from a thread that ends dies with it, though the process goes on.
TEST_F(GuestSpawnTest, GuestDiesWhenItsSpawningThreadEnds) {
  Result<SpawnedGuest> guest = MakeError(Errc::kInternal, "not run");
  std::thread([&] { guest = SpawnGuest(Spec({"sleep", "1000"})); }).join();
  ASSERT_TRUE(guest.has_value()) << guest.error().ToString();
  GuestReaper reaper(*guest);  // reparented to this thread's process: still ours
  const int status = reaper.WaitGuest(std::chrono::seconds(10));
  ASSERT_TRUE(status != -1 && WIFSIGNALED(status)) << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

}  // namespace
}  // namespace roam::proc
