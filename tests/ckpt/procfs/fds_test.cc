#include "core/ckpt/procfs/fds.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <set>

#include <gtest/gtest.h>

#include "tests/support/test_util.h"

namespace roam::ckpt::procfs {
namespace {

// Closes a descriptor on every path out of a test.
struct Fd {
  explicit Fd(int n) : fd(n) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int fd;
};

const FdEntry* Find(const std::vector<FdEntry>& entries, int fd) {
  for (const FdEntry& e : entries) {
    if (e.fd == fd) return &e;
  }
  return nullptr;
}

TEST(FdsTest, ClassifiesByLinkNameThenMode) {
  constexpr uint32_t kAnon = 0600;  // anonymous inodes have no file type bits
  EXPECT_EQ(ClassifyFd("socket:[40155]", S_IFSOCK | 0777, 0), FdKind::kSocket);
  EXPECT_EQ(ClassifyFd("pipe:[40154]", S_IFIFO | 0600, 0), FdKind::kPipe);
  EXPECT_EQ(ClassifyFd("anon_inode:[eventfd]", kAnon, 0), FdKind::kEventfd);
  EXPECT_EQ(ClassifyFd("anon_inode:[eventpoll]", kAnon, 0), FdKind::kEpoll);
  EXPECT_EQ(ClassifyFd("anon_inode:inotify", kAnon, 0), FdKind::kInotify);
  EXPECT_EQ(ClassifyFd("anon_inode:[fanotify]", kAnon, 0), FdKind::kFanotify);
  EXPECT_EQ(ClassifyFd("anon_inode:[timerfd]", kAnon, 0), FdKind::kTimerfd);
  EXPECT_EQ(ClassifyFd("anon_inode:[signalfd]", kAnon, 0), FdKind::kSignalfd);
  EXPECT_EQ(ClassifyFd("anon_inode:[pidfd]", S_IRWXU, 0), FdKind::kPidfd);
  EXPECT_EQ(ClassifyFd("anon_inode:[userfaultfd]", kAnon, 0), FdKind::kUserfaultfd);
  EXPECT_EQ(ClassifyFd("anon_inode:[io_uring]", kAnon, 0), FdKind::kIoUring);
  EXPECT_EQ(ClassifyFd("anon_inode:[perf_event]", kAnon, 0), FdKind::kOtherAnon);
  EXPECT_EQ(ClassifyFd("/memfd:my mem (deleted)", S_IFREG | 0777, 0), FdKind::kMemfd);
  EXPECT_EQ(ClassifyFd("/tmp/fifo", S_IFIFO | 0644, 0), FdKind::kFifo);
  EXPECT_EQ(ClassifyFd("/dev/pts/3", S_IFCHR | 0620, 136), FdKind::kTty);
  EXPECT_EQ(ClassifyFd("/dev/tty", S_IFCHR | 0666, 5), FdKind::kTty);
  EXPECT_EQ(ClassifyFd("/dev/tty1", S_IFCHR | 0620, 4), FdKind::kTty);
  EXPECT_EQ(ClassifyFd("/dev/null", S_IFCHR | 0666, 1), FdKind::kCharDevice);
  EXPECT_EQ(ClassifyFd("/dev/vda", S_IFBLK | 0660, 254), FdKind::kBlockDevice);
  EXPECT_EQ(ClassifyFd("/home", S_IFDIR | 0755, 0), FdKind::kDirectory);
  EXPECT_EQ(ClassifyFd("/etc/passwd", S_IFREG | 0644, 0), FdKind::kRegular);
}

TEST(FdsTest, EveryKindHasADistinctName) {
  std::set<std::string_view> names;
  for (int k = 0; k <= static_cast<int>(FdKind::kOtherAnon); ++k) {
    names.insert(FdKindName(static_cast<FdKind>(k)));
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(FdKind::kOtherAnon) + 1);
  EXPECT_EQ(FdKindName(FdKind::kCharDevice), "char-device");
}

TEST(FdsTest, ParsesRealFdInfo) {
  // /proc/PID/fdinfo/N of an eventfd on the development machine.
  auto info = ParseFdInfo(
      "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n"
      "eventfd-count:                0\neventfd-id: 1\neventfd-semaphore: 0\n");
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->pos, 0);
  EXPECT_EQ(info->flags, static_cast<uint32_t>(O_CLOEXEC | O_RDWR));
  EXPECT_EQ(info->mnt_id, 17);
}

TEST(FdsTest, FdInfoWithoutFlagsOrWithBadPosIsCorrupt) {
  auto info = ParseFdInfo("pos:\t0\nmnt_id:\t17\n");
  ASSERT_FALSE(info.has_value());
  EXPECT_EQ(info.error().code(), Errc::kCorrupt);
  EXPECT_NE(info.error().message().find("flags"), std::string::npos);
  EXPECT_FALSE(ParseFdInfo("pos:\tx\nflags:\t0\nmnt_id:\t1\n").has_value());
  EXPECT_FALSE(ParseFdInfo("pos:\t0\nflags:\t09\nmnt_id:\t1\n").has_value());  // octal
}

TEST(FdsTest, ListFdsOfThisProcessClassifiesWhatItOpened) {
  std::array<int, 2> ends{};
  ASSERT_EQ(pipe2(ends.data(), O_CLOEXEC), 0);
  Fd read_end(ends[0]);
  Fd write_end(ends[1]);
  Fd event(eventfd(0, EFD_NONBLOCK));
  ASSERT_GE(event.fd, 0);
  roam::testing::TempDir dir;
  const std::string path = dir.path() / "data file";
  Fd file(open(path.c_str(), O_RDWR | O_CREAT, 0600));
  ASSERT_GE(file.fd, 0);
  ASSERT_EQ(write(file.fd, "hello", 5), 5);
  ASSERT_EQ(lseek(file.fd, 2, SEEK_SET), 2);
  Fd directory(open(dir.path().c_str(), O_RDONLY | O_DIRECTORY));
  ASSERT_GE(directory.fd, 0);

  auto fds = ListFds(getpid());
  ASSERT_TRUE(fds.has_value()) << fds.error().ToString();
  for (size_t i = 1; i < fds->size(); ++i) EXPECT_LT((*fds)[i - 1].fd, (*fds)[i].fd);
  // ListFds's own transient descriptors are closed and must not be listed.
  for (const FdEntry& entry : *fds) EXPECT_NE(fcntl(entry.fd, F_GETFD), -1) << entry.fd;

  const FdEntry* r = Find(*fds, read_end.fd);
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->kind, FdKind::kPipe);
  EXPECT_EQ(r->info.flags & O_ACCMODE, static_cast<uint32_t>(O_RDONLY));
  EXPECT_NE(r->info.flags & O_CLOEXEC, 0u);
  const FdEntry* w = Find(*fds, write_end.fd);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->kind, FdKind::kPipe);
  EXPECT_EQ(w->inode, r->inode);  // both ends of one pipe
  EXPECT_EQ(w->target, r->target);

  const FdEntry* e = Find(*fds, event.fd);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->kind, FdKind::kEventfd);
  EXPECT_EQ(e->target, "anon_inode:[eventfd]");
  EXPECT_NE(e->info.flags & O_NONBLOCK, 0u);

  const FdEntry* f = Find(*fds, file.fd);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->kind, FdKind::kRegular);
  EXPECT_EQ(f->target, path);
  EXPECT_EQ(f->size, 5u);
  EXPECT_EQ(f->info.pos, 2);
  EXPECT_GT(f->info.mnt_id, 0);
  struct stat st {};
  ASSERT_EQ(fstat(file.fd, &st), 0);
  EXPECT_EQ(f->inode, st.st_ino);
  EXPECT_EQ(f->mode, st.st_mode);

  const FdEntry* d = Find(*fds, directory.fd);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->kind, FdKind::kDirectory);
}

}  // namespace
}  // namespace roam::ckpt::procfs
