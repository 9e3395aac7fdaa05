// Dirty-page tracking of a live child: it writes the pages it is told to,
// and each Collect must name exactly those (within its 64 MiB region), plus
// whole ranges it mapped, grew or moved since. After Stop it checks its own
// memory and keeps working.
#include "core/ckpt/dirty_tracker.h"
#include "core/ckpt/procfs/maps.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/test_util.h"

namespace roam::ckpt {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kRegionPages = 16384;  // 64 MiB
constexpr std::uint64_t kNewPages = 16;        // the region mmap'd later
constexpr std::uint64_t kBrkPages = 8;         // brk growth
constexpr std::uint64_t kMovedPages = 8;       // the region mremap moves

enum Op : std::uint64_t {
  kWrite = 1,
  kWriteAll,
  kDrop,
  kSeal,
  kUnseal,
  kMapAndGrow,
  kMove,
  kVerify,
  kExit
};

// What the child reports after each command.
struct Reply {
  std::uint64_t ok = 0;
  std::uint64_t a = 0;  // kMapAndGrow: new mapping; kMove: new address
  std::uint64_t b = 0;  // kMapAndGrow: old break
  std::uint64_t c = 0;  // kMapAndGrow: new break
};

bool ReadAll(int fd, void* buf, std::size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

bool WriteAll(int fd, const void* buf, std::size_t n) {
  return write(fd, buf, n) == static_cast<ssize_t>(n);
}

// The child: a 64 MiB region whose page i starts with stamp[i], and an
// 8-page region to be moved later. Commands: {op, count, indices...}.
[[noreturn]] void ChildMain(int cmd, int reply, std::uint64_t* stamps) {
  auto* region = static_cast<std::uint64_t*>(mmap(
      nullptr, kRegionPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  auto* movable = static_cast<std::uint64_t*>(mmap(
      nullptr, kMovedPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  // Where it moves to: reserved now, so the address is free then.
  void* landing = mmap(nullptr, kMovedPages * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED || movable == MAP_FAILED || landing == MAP_FAILED) _exit(2);
  for (std::uint64_t i = 0; i < kRegionPages; ++i) {
    stamps[i] = i * 7 + 1;
    region[i * kPage / 8] = stamps[i];
  }
  for (std::uint64_t i = 0; i < kMovedPages; ++i) movable[i * kPage / 8] = 0xabc + i;
  Reply r{1, reinterpret_cast<std::uint64_t>(region), 0, 0};
  if (!WriteAll(reply, &r, sizeof(r))) _exit(3);

  std::uint64_t round = 0;
  for (;;) {
    std::uint64_t head[2];
    if (!ReadAll(cmd, head, sizeof(head))) _exit(4);
    r = Reply{1, 0, 0, 0};
    ++round;
    switch (head[0]) {
      case kWrite:
        for (std::uint64_t k = 0; k < head[1]; ++k) {
          std::uint64_t i = 0;
          if (!ReadAll(cmd, &i, sizeof(i)) || i >= kRegionPages) _exit(5);
          stamps[i] = (round << 32) | i;
          region[i * kPage / 8] = stamps[i];
        }
        break;
      case kWriteAll:
        for (std::uint64_t i = 0; i < kRegionPages; ++i) {
          stamps[i] = (round << 32) | i;
          region[i * kPage / 8] = stamps[i];
        }
        break;
      case kDrop:  // MADV_DONTNEED: the page reads as zeros from now on
        for (std::uint64_t k = 0; k < head[1]; ++k) {
          std::uint64_t i = 0;
          if (!ReadAll(cmd, &i, sizeof(i)) || i >= kRegionPages) _exit(5);
          if (madvise(&region[i * kPage / 8], kPage, MADV_DONTNEED) != 0) _exit(11);
          stamps[i] = 0;
        }
        break;
      case kSeal:  // write, then make read-only
      case kUnseal:
        for (std::uint64_t k = 0; k < head[1]; ++k) {
          std::uint64_t i = 0;
          if (!ReadAll(cmd, &i, sizeof(i)) || i >= kRegionPages) _exit(5);
          if (head[0] == kSeal) {
            stamps[i] = (round << 32) | i;
            region[i * kPage / 8] = stamps[i];
          }
          const int prot = head[0] == kSeal ? PROT_READ : PROT_READ | PROT_WRITE;
          if (mprotect(&region[i * kPage / 8], kPage, prot) != 0) _exit(12);
        }
        break;
      case kMapAndGrow: {
        auto* fresh = static_cast<char*>(mmap(nullptr, kNewPages * kPage, PROT_READ | PROT_WRITE,
                                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (fresh == MAP_FAILED) _exit(6);
        fresh[2 * kPage] = 1;  // one page written; the whole range is new
        r.a = reinterpret_cast<std::uint64_t>(fresh);
        r.b = reinterpret_cast<std::uint64_t>(sbrk(0));
        char* old_break = static_cast<char*>(sbrk(static_cast<intptr_t>(kBrkPages * kPage)));
        if (old_break == reinterpret_cast<char*>(-1)) _exit(7);
        r.c = reinterpret_cast<std::uint64_t>(sbrk(0));
        old_break[kPage + 5] = 1;
        break;
      }
      case kMove: {
        void* moved = mremap(movable, kMovedPages * kPage, kMovedPages * kPage,
                             MREMAP_MAYMOVE | MREMAP_FIXED, landing);
        if (moved == MAP_FAILED) _exit(8);
        movable = static_cast<std::uint64_t*>(moved);
        r.a = reinterpret_cast<std::uint64_t>(moved);
        break;
      }
      case kVerify:
        for (std::uint64_t i = 0; i < kRegionPages; ++i) {
          if (region[i * kPage / 8] != stamps[i]) r.ok = 0;
        }
        for (std::uint64_t i = 0; i < kMovedPages; ++i) {
          if (movable[i * kPage / 8] != 0xabc + i) r.ok = 0;
        }
        break;
      case kExit:
        _exit(0);
      default:
        _exit(9);
    }
    if (!WriteAll(reply, &r, sizeof(r))) _exit(10);
  }
}

class Child final {
 public:
  Child() {
    stamps_.resize(kRegionPages);
    EXPECT_EQ(pipe2(cmd_, O_CLOEXEC), 0);
    EXPECT_EQ(pipe2(reply_, O_CLOEXEC), 0);
    pid_ = fork();
    if (pid_ == 0) {
      close(cmd_[1]);
      close(reply_[0]);
      ChildMain(cmd_[0], reply_[1], stamps_.data());
    }
    close(cmd_[0]);
    close(reply_[1]);
    const Reply r = Await();
    region_ = r.a;
  }
  ~Child() {
    // Never kill(-1): after Finish there is no child left.
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(cmd_[1]);
    close(reply_[0]);
  }
  pid_t pid() const { return pid_; }
  std::uint64_t region() const { return region_; }

  Reply Send(Op op, const std::vector<std::uint64_t>& pages = {}) {
    const std::uint64_t head[2] = {op, pages.size()};
    EXPECT_TRUE(WriteAll(cmd_[1], head, sizeof(head)));
    if (!pages.empty()) {
      EXPECT_TRUE(WriteAll(cmd_[1], pages.data(), pages.size() * sizeof(pages[0])));
    }
    return Await();
  }
  // Exit status once it left: 0 for a clean kExit.
  int Finish() {
    const std::uint64_t head[2] = {kExit, 0};
    EXPECT_TRUE(WriteAll(cmd_[1], head, sizeof(head)));
    int status = 0;
    EXPECT_EQ(waitpid(pid_, &status, 0), pid_);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  Reply Await() {
    Reply r{};
    EXPECT_TRUE(ReadAll(reply_[0], &r, sizeof(r))) << "child died";
    return r;
  }

  int cmd_[2] = {-1, -1};
  int reply_[2] = {-1, -1};
  pid_t pid_ = -1;
  std::uint64_t region_ = 0;
  std::vector<std::uint64_t> stamps_;
};

// Where the process's [vdso] is ({0, 0} if it has none).
std::pair<std::uint64_t, std::uint64_t> VdsoOf(pid_t pid) {
  const auto vmas = procfs::ReadMaps(pid);
  if (!vmas) return {0, 0};
  for (const auto& v : *vmas) {
    if (v.path == "[vdso]") return {v.start, v.end};
  }
  return {0, 0};
}

// The runs inside the region, as page indices [first, last).
PageRuns InRegion(const PageRuns& runs, std::uint64_t region) {
  const std::uint64_t end = region + kRegionPages * kPage;
  PageRuns out;
  for (const auto& [s, e] : runs) {
    const std::uint64_t lo = std::max(s, region), hi = std::min(e, end);
    if (lo < hi) out.emplace_back((lo - region) / kPage, (hi - region) / kPage);
  }
  return out;
}

bool Covers(const PageRuns& runs, std::uint64_t start, std::uint64_t end) {
  for (const auto& [s, e] : runs) {
    if (s <= start && end <= e) return true;
  }
  return false;
}

std::string Show(const PageRuns& runs) {
  std::string s;
  for (const auto& [a, b] : runs) s += "[" + std::to_string(a) + "," + std::to_string(b) + ") ";
  return s;
}

// Seizes and freezes the child, starts tracking through an injected
// userfaultfd, and lets it run on (detached) while returning the tracker.
Result<DirtyTracker> StartOnFrozen(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(Tracee tracee, Tracee::Seize(pid));
  ROAM_TRY(tracee.Interrupt());
  ROAM_ASSIGN_OR_RETURN(arch::Regs base, arch::GetRegs(pid));
  (void)arch::FixupInterruptedSyscall(base);
  ROAM_ASSIGN_OR_RETURN(RemoteMemory memory, RemoteMemory::Open(pid));
  const auto [vdso_start, vdso_end] = VdsoOf(pid);
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t insn,
                        FindSyscallInstruction(memory, vdso_start, vdso_end));
  SyscallInjector injector(tracee, base, insn);
  ROAM_ASSIGN_OR_RETURN(DirtyTracker tracker, DirtyTracker::Start(pid, injector));
  ROAM_TRY(arch::SetRegs(pid, base));
  ROAM_TRY(tracee.Detach());
  return tracker;
}

class DirtyTrackerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ROAM_SKIP_UNLESS_ROOT("seizes a child and takes a userfaultfd out of it");
    if (auto probe = DirtyTracker::Probe(); !probe) {
      GTEST_SKIP() << "kernel lacks async write-protect tracking: " << probe.error().ToString();
    }
  }
};

TEST_F(DirtyTrackerTest, CollectReportsExactlyTheWrittenPagesAndNewRanges) {
  Child child;
  const std::uint64_t region = child.region();
  auto tracker = StartOnFrozen(child.pid());
  ASSERT_TRUE(tracker.has_value()) << tracker.error().ToString();

  // Round 1: the child runs (not traced) while it writes and we collect.
  ASSERT_EQ(child.Send(kWrite, {3, 100, 101, 16000}).ok, 1u);
  auto t0 = std::chrono::steady_clock::now();
  auto runs = tracker->Collect();
  auto t1 = std::chrono::steady_clock::now();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_EQ(InRegion(*runs, region), (PageRuns{{3, 4}, {100, 102}, {16000, 16001}}))
      << Show(InRegion(*runs, region));
  std::printf("Collect, 64 MiB region, 4 pages written: %.3f ms (%zu runs in all)\n",
              std::chrono::duration<double, std::milli>(t1 - t0).count(), runs->size());

  // Round 2: only the new writes.
  ASSERT_EQ(child.Send(kWrite, {0, 5, 101, 16383}).ok, 1u);
  runs = tracker->Collect();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_EQ(InRegion(*runs, region), (PageRuns{{0, 1}, {5, 6}, {101, 102}, {16383, 16384}}))
      << Show(InRegion(*runs, region));

  // Dropped pages are holes now, which are not reported (pre-copy finds
  // them missing from pagemap); written again, they are.
  ASSERT_EQ(child.Send(kDrop, {42, 43}).ok, 1u);
  runs = tracker->Collect();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_TRUE(InRegion(*runs, region).empty()) << Show(InRegion(*runs, region));
  ASSERT_EQ(child.Send(kWrite, {43}).ok, 1u);
  runs = tracker->Collect();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_EQ(InRegion(*runs, region), (PageRuns{{43, 44}})) << Show(InRegion(*runs, region));

  // Written and made read-only before the round: still reported.
  ASSERT_EQ(child.Send(kSeal, {200}).ok, 1u);
  runs = tracker->Collect();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_EQ(InRegion(*runs, region), (PageRuns{{200, 201}})) << Show(InRegion(*runs, region));
  ASSERT_EQ(child.Send(kUnseal, {200}).ok, 1u);

  // Nothing written: nothing in the region. Timed as the idle scan.
  t0 = std::chrono::steady_clock::now();
  runs = tracker->Collect();
  t1 = std::chrono::steady_clock::now();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_TRUE(InRegion(*runs, region).empty()) << Show(InRegion(*runs, region));
  std::printf("Collect, 64 MiB region, nothing written: %.3f ms\n",
              std::chrono::duration<double, std::milli>(t1 - t0).count());

  // Round 3: a fresh mapping and brk growth are reported whole, and are
  // tracked page by page from then on.
  const Reply grown = child.Send(kMapAndGrow);
  ASSERT_EQ(grown.ok, 1u);
  runs = tracker->Collect();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  const std::uint64_t brk_lo = (grown.b + kPage - 1) / kPage * kPage;
  const std::uint64_t brk_hi = (grown.c + kPage - 1) / kPage * kPage;
  EXPECT_TRUE(Covers(*runs, grown.a, grown.a + kNewPages * kPage)) << Show(*runs);
  EXPECT_TRUE(Covers(*runs, brk_lo, brk_hi)) << Show(*runs) << " brk " << brk_lo << "-" << brk_hi;
  EXPECT_TRUE(InRegion(*runs, region).empty());
  runs = tracker->Collect();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_FALSE(Covers(*runs, grown.a, grown.a + kNewPages * kPage)) << "registered now";

  // Round 4: a moved range loses its registration and is reported whole.
  const Reply moved = child.Send(kMove);
  ASSERT_EQ(moved.ok, 1u);
  runs = tracker->Collect();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_TRUE(Covers(*runs, moved.a, moved.a + kMovedPages * kPage)) << Show(*runs);

  // Every page written: the cost of a full collect.
  ASSERT_EQ(child.Send(kWriteAll).ok, 1u);
  t0 = std::chrono::steady_clock::now();
  runs = tracker->Collect();
  t1 = std::chrono::steady_clock::now();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  EXPECT_EQ(InRegion(*runs, region), (PageRuns{{0, kRegionPages}}));
  std::printf(
      "Collect, 64 MiB region, all 16384 pages written: %.3f ms (%llu scans, %llu VMAs armed, "
      "%llu unarmable so far)\n",
      std::chrono::duration<double, std::milli>(t1 - t0).count(),
      static_cast<unsigned long long>(tracker->stats().scans),
      static_cast<unsigned long long>(tracker->stats().armed_vmas),
      static_cast<unsigned long long>(tracker->stats().unarmable_vmas));

  // After Stop the child is untracked, intact, and writes on.
  ASSERT_TRUE(tracker->Stop().has_value());
  EXPECT_EQ(child.Send(kVerify).ok, 1u) << "memory changed under tracking";
  ASSERT_EQ(child.Send(kWrite, {7, 8, 9}).ok, 1u);
  EXPECT_EQ(child.Send(kVerify).ok, 1u);
  EXPECT_FALSE(tracker->Collect().has_value());
  EXPECT_EQ(child.Finish(), 0);
}

TEST_F(DirtyTrackerTest, CollectOnAGoneProcessFails) {
  auto child = std::make_unique<Child>();
  auto tracker = StartOnFrozen(child->pid());
  ASSERT_TRUE(tracker.has_value()) << tracker.error().ToString();
  child.reset();  // killed and reaped
  EXPECT_FALSE(tracker->Collect().has_value());
}

std::uint64_t VmPteKb(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmPTE:", 0) == 0) return std::stoull(line.substr(6));
  }
  return 0;
}

// Arming a huge, almost empty mapping (a runtime's heap reservation) must
// not fill in page tables for all of it: markers go on populated ranges only.
TEST_F(DirtyTrackerTest, SparseMappingsCostNoPageTables) {
  constexpr std::uint64_t kHuge = 64ull << 30;
  int ready[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    auto* writable = static_cast<char*>(mmap(nullptr, kHuge, PROT_READ | PROT_WRITE,
                                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    void* reserved =
        mmap(nullptr, kHuge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (writable == MAP_FAILED || reserved == MAP_FAILED) _exit(2);
    for (std::uint64_t off = 0; off < kHuge; off += kHuge / 8) writable[off] = 1;
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(3);
    for (;;) pause();
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  close(ready[0]);
  const std::uint64_t before = VmPteKb(pid);
  auto tracker = StartOnFrozen(pid);
  const std::uint64_t after = VmPteKb(pid);
  auto runs = tracker ? tracker->Collect() : Result<PageRuns>(tracker.error());
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  ASSERT_TRUE(tracker.has_value()) << tracker.error().ToString();
  ASSERT_TRUE(runs.has_value()) << runs.error().ToString();
  std::printf("VmPTE %llu kB before tracking, %llu kB after\n",
              static_cast<unsigned long long>(before), static_cast<unsigned long long>(after));
  EXPECT_LT(after, before + 1024) << "page tables filled in for unpopulated memory";
}

}  // namespace
}  // namespace roam::ckpt
