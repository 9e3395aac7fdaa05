// Syscall injection into a live child: the child must not notice.
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "core/ckpt/inject/syscall_injector.h"
#include "core/ckpt/procfs/maps.h"

namespace roam::ckpt {
namespace {

// A child that counts up forever, writing each number to a pipe.
class CountingChild {
 public:
  CountingChild() {
    EXPECT_EQ(pipe2(fds_, O_CLOEXEC), 0);
    pid_ = fork();
    if (pid_ == 0) {
      close(fds_[0]);
      for (unsigned i = 0;; ++i) {
        if (write(fds_[1], &i, sizeof(i)) != sizeof(i)) _exit(1);
        usleep(1000);
      }
    }
    close(fds_[1]);
  }
  ~CountingChild() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    close(fds_[0]);
  }
  pid_t pid() const { return pid_; }
  unsigned Next() {
    unsigned v = 0;
    EXPECT_EQ(read(fds_[0], &v, sizeof(v)), static_cast<ssize_t>(sizeof(v)));
    return v;
  }

 private:
  int fds_[2];
  pid_t pid_;
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

TEST(InjectTest, InjectedSyscallsRunInTheChildWhichCarriesOn) {
  CountingChild child;
  const unsigned before = child.Next();

  auto tracee = Tracee::Seize(child.pid());
  ASSERT_TRUE(tracee.has_value()) << tracee.error().ToString();
  ASSERT_TRUE(tracee->Interrupt().has_value());
  auto regs = arch::GetRegs(child.pid());
  ASSERT_TRUE(regs.has_value()) << regs.error().ToString();
  const arch::Regs saved = *regs;
  arch::Regs base = saved;
  const std::string note = arch::FixupInterruptedSyscall(base);

  auto memory = RemoteMemory::Open(child.pid());
  ASSERT_TRUE(memory.has_value()) << memory.error().ToString();
  const auto [vdso_start, vdso_end] = VdsoOf(child.pid());
  ASSERT_NE(vdso_start, 0u);
  auto insn = FindSyscallInstruction(*memory, vdso_start, vdso_end);
  ASSERT_TRUE(insn.has_value()) << insn.error().ToString();

  SyscallInjector injector(*tracee, base, *insn);
  auto pid = injector.Call("getpid", SYS_getpid);
  ASSERT_TRUE(pid.has_value()) << pid.error().ToString();
  EXPECT_EQ(*pid, child.pid());

  auto scratch = RemoteScratch::Map(injector, *memory, 4096);
  ASSERT_TRUE(scratch.has_value()) << scratch.error().ToString();
  const std::uint64_t pattern = 0x1122334455667788;
  ASSERT_TRUE(scratch->Write(8, BytesOf(pattern)).has_value());
  std::uint64_t back = 0;
  ASSERT_TRUE(scratch->Read(8, WritableBytesOf(back)).has_value());
  EXPECT_EQ(back, pattern);

  // A failing call is an error with the errno, and the child is unharmed.
  auto bad = injector.Call("close 999", SYS_close, 999);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().sys_errno(), EBADF);

  ASSERT_TRUE(scratch->Release(injector).has_value());
  EXPECT_EQ(injector.calls(), 4u);
  ASSERT_TRUE(arch::SetRegs(child.pid(), base).has_value());
  ASSERT_TRUE(tracee->Detach().has_value());

  // The child goes on counting from where it was.
  const unsigned after = child.Next();
  EXPECT_GT(after, before);
  EXPECT_EQ(child.Next(), after + 1);
}

TEST(InjectTest, SeizingAMissingProcessIsAnError) {
  auto t = Tracee::Seize(999999999);
  ASSERT_FALSE(t.has_value());
}

}  // namespace
}  // namespace roam::ckpt
