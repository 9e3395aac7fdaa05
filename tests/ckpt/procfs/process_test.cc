#include "core/ckpt/procfs/process.h"

#include <elf.h>
#include <sys/auxv.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "core/ckpt/procfs/procfs.h"
#include "tests/support/test_util.h"

namespace roam::ckpt::procfs {
namespace {

// Above any pid_max (at most 2^22), so no process ever has it.
constexpr pid_t kNoSuchPid = 1 << 30;

bool Contains(const std::vector<pid_t>& pids, pid_t pid) {
  return std::find(pids.begin(), pids.end(), pid) != pids.end();
}

TEST(ProcessTest, ListThreadsSeesAStartedThreadWithTheLeaderFirst) {
  std::promise<pid_t> tid;
  std::promise<void> stop;
  std::thread thread([&tid, done = stop.get_future()] {
    tid.set_value(gettid());
    done.wait();
  });
  // Joins on every path out of the test, a failed assertion included.
  struct Joiner {
    std::promise<void>& stop;
    std::thread& thread;
    ~Joiner() {
      stop.set_value();
      thread.join();
    }
  } joiner{stop, thread};
  const pid_t thread_tid = tid.get_future().get();

  auto tids = ListThreads(getpid());
  ASSERT_TRUE(tids.has_value()) << tids.error().ToString();
  ASSERT_GE(tids->size(), 2u);
  EXPECT_EQ(tids->front(), getpid());
  EXPECT_TRUE(Contains(*tids, thread_tid));
}

TEST(ProcessTest, ListChildrenSeesAForkedChild) {
  const pid_t child = fork();
  ASSERT_GE(child, 0) << std::strerror(errno);
  if (child == 0) {
    pause();
    _exit(0);
  }
  // Kills and reaps the child on every path out of the test.
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  } reaper{child};

  auto children = ListChildren(getpid());
  ASSERT_TRUE(children.has_value()) << children.error().ToString();
  EXPECT_TRUE(Contains(*children, child));
  auto grandchildren = ListChildren(child);
  ASSERT_TRUE(grandchildren.has_value()) << grandchildren.error().ToString();
  EXPECT_TRUE(grandchildren->empty());
}

TEST(ProcessTest, ReadAuxvEndsWithAtNullAndMatchesGetauxval) {
  auto auxv = ReadAuxv(getpid());
  ASSERT_TRUE(auxv.has_value()) << auxv.error().ToString();
  ASSERT_GE(auxv->size(), 2u);
  ASSERT_EQ(auxv->size() % 2, 0u);
  EXPECT_EQ((*auxv)[auxv->size() - 2], uint64_t{AT_NULL});
  bool found = false;
  for (size_t i = 0; i + 1 < auxv->size(); i += 2) {
    if ((*auxv)[i] == AT_PAGESZ) {
      found = true;
      EXPECT_EQ((*auxv)[i + 1], getauxval(AT_PAGESZ));
    }
  }
  EXPECT_TRUE(found);
}

TEST(ProcessTest, ParseAuxvStopsAtAtNullAndNeedsOne) {
  const std::array<uint64_t, 6> words = {AT_PAGESZ, 4096, AT_NULL, 0, 77, 88};
  const std::string_view bytes(reinterpret_cast<const char*>(words.data()), sizeof(words));
  auto auxv = ParseAuxv(bytes);
  ASSERT_TRUE(auxv.has_value()) << auxv.error().ToString();
  EXPECT_EQ(*auxv, (std::vector<uint64_t>{AT_PAGESZ, 4096, AT_NULL, 0}));
  auto truncated = ParseAuxv(bytes.substr(0, 2 * sizeof(uint64_t) + 3));
  ASSERT_FALSE(truncated.has_value());
  EXPECT_EQ(truncated.error().code(), Errc::kCorrupt);
}

TEST(ProcessTest, ReadsLinksCommAndPersonality) {
  auto exe = ReadLink(getpid(), "exe");
  ASSERT_TRUE(exe.has_value()) << exe.error().ToString();
  EXPECT_EQ(*exe, std::filesystem::read_symlink("/proc/self/exe").string());
  auto cwd = ReadLink(getpid(), "cwd");
  ASSERT_TRUE(cwd.has_value()) << cwd.error().ToString();
  EXPECT_EQ(*cwd, std::filesystem::current_path().string());

  std::array<char, 16> name{};  // TASK_COMM_LEN
  ASSERT_EQ(prctl(PR_GET_NAME, name.data()), 0);
  auto comm = ReadComm(getpid());
  ASSERT_TRUE(comm.has_value()) << comm.error().ToString();
  EXPECT_EQ(*comm, name.data());

  auto persona = ReadPersonality(getpid());
  ASSERT_TRUE(persona.has_value()) << persona.error().ToString();
  EXPECT_EQ(*persona, static_cast<uint32_t>(personality(0xffffffff)));
}

TEST(ProcessTest, ReadNamespacesGivesTheInodes) {
  auto namespaces = ReadNamespaces(getpid());
  ASSERT_TRUE(namespaces.has_value()) << namespaces.error().ToString();
  for (const std::string_view ns : {"pid", "net"}) {
    const auto it = std::find_if(namespaces->begin(), namespaces->end(),
                                 [ns](const auto& entry) { return entry.first == ns; });
    ASSERT_NE(it, namespaces->end()) << ns;
    struct stat st {};
    ASSERT_EQ(stat(("/proc/self/ns/" + std::string(ns)).c_str(), &st), 0);
    EXPECT_EQ(it->second, st.st_ino) << ns;
  }
}

TEST(ProcessTest, EveryReaderSaysNoProcess) {
  const auto expect_no_process = [](const Error& error) {
    EXPECT_EQ(error.code(), Errc::kNotFound) << error.ToString();
    EXPECT_EQ(error.message(), "no process 1073741824") << error.ToString();
  };
  expect_no_process(ReadMaps(kNoSuchPid).error());
  expect_no_process(PagemapReader::Open(kNoSuchPid).error());
  expect_no_process(ReadStatus(kNoSuchPid).error());
  expect_no_process(ReadStat(kNoSuchPid).error());
  expect_no_process(ListFds(kNoSuchPid).error());
  expect_no_process(ListThreads(kNoSuchPid).error());
  expect_no_process(ListChildren(kNoSuchPid).error());
  expect_no_process(ReadAuxv(kNoSuchPid).error());
  expect_no_process(ReadLink(kNoSuchPid, "exe").error());
  expect_no_process(ReadComm(kNoSuchPid).error());
  expect_no_process(ReadPersonality(kNoSuchPid).error());
  expect_no_process(ReadNamespaces(kNoSuchPid).error());
}

TEST(ProcessTest, AnotherUsersProcessIsPermissionDenied) {
  if (roam::testing::IsRoot()) GTEST_SKIP() << "root may inspect every process";
  auto init = ReadStatus(1);
  ASSERT_TRUE(init.has_value()) << init.error().ToString();  // status is world-readable
  if (init->uid[1] == geteuid()) GTEST_SKIP() << "pid 1 runs as this user";
  for (const auto& error : {ReadMaps(1).error(), ListFds(1).error()}) {
    EXPECT_EQ(error.code(), Errc::kPermissionDenied) << error.ToString();
  }
}

}  // namespace
}  // namespace roam::ckpt::procfs
