#include "core/ckpt/arch/arch.h"

#include <sys/syscall.h>

#include <cerrno>

#include <gtest/gtest.h>

namespace roam::ckpt::arch {
namespace {

Regs InSyscall(long nr, long kernel_errno) {
  Regs r{};
  r.orig_rax = static_cast<std::uint64_t>(nr);
  r.rax = static_cast<std::uint64_t>(-kernel_errno);
  r.rip = 0x1002;
  return r;
}

TEST(ArchTest, RestartableSyscallIsReissued) {
  for (long code : {512L, 513L, 514L}) {  // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
    Regs r = InSyscall(SYS_read, code);
    EXPECT_EQ(InterruptedSyscall(r), SYS_read);
    EXPECT_EQ(FixupInterruptedSyscall(r), "");
    EXPECT_EQ(r.rax, static_cast<std::uint64_t>(SYS_read));
    EXPECT_EQ(r.rip, 0x1000u);
    EXPECT_EQ(static_cast<std::int64_t>(r.orig_rax), -1);
  }
}

TEST(ArchTest, RelativeSleepsResumeWithTheRemainingTime) {
  Regs r = InSyscall(SYS_clock_nanosleep, 516);  // ERESTART_RESTARTBLOCK
  r.rdx = 0x5000;                                // request
  r.r10 = 0x6000;                                // remaining, written back by the kernel
  EXPECT_NE(FixupInterruptedSyscall(r), "");
  EXPECT_EQ(r.rax, static_cast<std::uint64_t>(SYS_clock_nanosleep));
  EXPECT_EQ(r.rdx, 0x6000u);
  EXPECT_EQ(r.rip, 0x1000u);

  Regs n = InSyscall(SYS_nanosleep, 516);
  n.rdi = 0x5000;
  n.rsi = 0x6000;
  EXPECT_NE(FixupInterruptedSyscall(n), "");
  EXPECT_EQ(n.rdi, 0x6000u);
}

TEST(ArchTest, OtherRestartBlockCallsReturnEintr) {
  Regs r = InSyscall(SYS_nanosleep, 516);
  r.rsi = 0;  // no remaining-time buffer: the time left is unknown
  EXPECT_NE(FixupInterruptedSyscall(r), "");
  EXPECT_EQ(static_cast<long>(r.rax), -EINTR);
  EXPECT_EQ(r.rip, 0x1002u);
}

TEST(ArchTest, NotInASyscallIsLeftAlone) {
  Regs r{};
  r.orig_rax = static_cast<std::uint64_t>(-1);
  r.rax = 42;
  r.rip = 0x1000;
  EXPECT_EQ(InterruptedSyscall(r), -1);
  EXPECT_EQ(FixupInterruptedSyscall(r), "");
  EXPECT_EQ(r.rax, 42u);
  // A syscall that completed (rax is its result, not a restart code).
  Regs done = InSyscall(SYS_read, -5);
  EXPECT_EQ(InterruptedSyscall(done), -1);
}

TEST(ArchTest, PrepareSyscallLoadsTheAbi) {
  Regs r{};
  PrepareSyscall(r, 0x7000, SYS_mmap, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(r.rax, static_cast<std::uint64_t>(SYS_mmap));
  EXPECT_EQ(r.rdi, 1u);
  EXPECT_EQ(r.rsi, 2u);
  EXPECT_EQ(r.rdx, 3u);
  EXPECT_EQ(r.r10, 4u);
  EXPECT_EQ(r.r8, 5u);
  EXPECT_EQ(r.r9, 6u);
  EXPECT_EQ(r.rip, 0x7000u);
  EXPECT_EQ(static_cast<std::int64_t>(r.orig_rax), -1);
}

TEST(ArchTest, RegistersRoundTripThroughTheImageRecord) {
  Regs r{};
  r.rip = 0x401000;
  r.rsp = 0x7ffc0000;
  r.fs_base = 0x7f0000001000;
  r.r15 = 15;
  image::X86Core core;
  ToProto(r, {1, 2, 3}, &core);
  const Regs back = RegsFromProto(core);
  EXPECT_EQ(back.rip, r.rip);
  EXPECT_EQ(back.rsp, r.rsp);
  EXPECT_EQ(back.fs_base, r.fs_base);
  EXPECT_EQ(back.r15, 15u);
  EXPECT_EQ(core.xstate(), std::string("\x01\x02\x03", 3));
}

TEST(ArchTest, MissingCpuFeaturesNamesTheBits) {
  EXPECT_TRUE(MissingCpuFeatures({0b1010}, {0b1110}).empty());
  const auto missing = MissingCpuFeatures({0b1010, 0x100}, {0b0010, 0x100});
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_EQ(missing[0], "word 0 bits 0x8");
  EXPECT_TRUE(MissingCpuFeatures(CpuFeatureWords(), CpuFeatureWords()).empty());
}

}  // namespace
}  // namespace roam::ckpt::arch
