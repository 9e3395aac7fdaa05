#include <cpuid.h>
#include <elf.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <cerrno>

#include "core/ckpt/arch/arch.h"

namespace roam::ckpt::arch {
namespace {

// Kernel-internal errnos a thread stopped in an interrupted syscall carries
// in rax (include/linux/errno.h); user space never sees them.
constexpr long kErestartSys = 512;
constexpr long kErestartNoIntr = 513;
constexpr long kErestartNoHand = 514;
constexpr long kErestartRestartBlock = 516;

// Large enough for every xstate layout the kernel exposes today (AMX needs
// about 11 KiB).
constexpr std::size_t kMaxXstate = 16 * 1024;

}  // namespace

std::uint64_t InstructionPointer(const Regs& regs) { return regs.rip; }
std::uint64_t StackPointer(const Regs& regs) { return regs.rsp; }

std::int64_t InterruptedSyscall(const Regs& regs) {
  const auto orig = static_cast<std::int64_t>(regs.orig_rax);
  if (orig < 0) return -1;
  const long ret = -static_cast<long>(regs.rax);
  if (ret == kErestartSys || ret == kErestartNoIntr || ret == kErestartNoHand ||
      ret == kErestartRestartBlock) {
    return orig;
  }
  return -1;
}

void PrepareSyscall(Regs& regs, std::uint64_t insn, long nr,
                    const std::array<std::uint64_t, 6>& args) {
  regs.rax = static_cast<std::uint64_t>(nr);
  regs.rdi = args[0];
  regs.rsi = args[1];
  regs.rdx = args[2];
  regs.r10 = args[3];
  regs.r8 = args[4];
  regs.r9 = args[5];
  regs.rip = insn;
  regs.orig_rax = static_cast<std::uint64_t>(-1);
}

long SyscallReturn(const Regs& regs) { return static_cast<long>(regs.rax); }

std::string FixupInterruptedSyscall(Regs& regs) {
  const std::int64_t nr = InterruptedSyscall(regs);
  if (nr < 0) return {};
  const long ret = -static_cast<long>(regs.rax);
  regs.orig_rax = static_cast<std::uint64_t>(-1);
  if (ret != kErestartRestartBlock) {
    regs.rax = static_cast<std::uint64_t>(nr);
    regs.rip -= kSyscallInsnSize;
    return {};
  }
  // The kernel wrote the remaining time to the rem argument; sleeping that
  // long from the restart point is what restart_syscall would have done.
  if (nr == SYS_nanosleep && regs.rsi != 0) {
    regs.rdi = regs.rsi;
    regs.rax = static_cast<std::uint64_t>(nr);
    regs.rip -= kSyscallInsnSize;
    return "interrupted nanosleep re-issued with the remaining time";
  }
  if (nr == SYS_clock_nanosleep && regs.r10 != 0) {
    regs.rdx = regs.r10;
    regs.rax = static_cast<std::uint64_t>(nr);
    regs.rip -= kSyscallInsnSize;
    return "interrupted clock_nanosleep re-issued with the remaining time";
  }
  regs.rax = static_cast<std::uint64_t>(-EINTR);
  return "interrupted syscall " + std::to_string(nr) + " returns EINTR after restore";
}

Result<Regs> GetRegs(pid_t tid) {
  Regs regs{};
  if (ptrace(PTRACE_GETREGS, tid, nullptr, &regs) != 0) {
    return ErrnoError(errno, "ptrace GETREGS of thread {}", tid);
  }
  return regs;
}

Status SetRegs(pid_t tid, const Regs& regs) {
  if (ptrace(PTRACE_SETREGS, tid, nullptr, &regs) != 0) {
    return ErrnoError(errno, "ptrace SETREGS of thread {}", tid);
  }
  return Ok();
}

Result<std::vector<std::uint8_t>> GetXstate(pid_t tid) {
  std::vector<std::uint8_t> buffer(kMaxXstate);
  iovec iov{buffer.data(), buffer.size()};
  if (ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, &iov) != 0) {
    return ErrnoError(errno, "ptrace GETREGSET NT_X86_XSTATE of thread {}", tid);
  }
  buffer.resize(iov.iov_len);
  return buffer;
}

Status SetXstate(pid_t tid, const std::vector<std::uint8_t>& xstate) {
  std::vector<std::uint8_t> copy = xstate;
  iovec iov{copy.data(), copy.size()};
  if (ptrace(PTRACE_SETREGSET, tid, NT_X86_XSTATE, &iov) != 0) {
    return ErrnoError(errno, "ptrace SETREGSET NT_X86_XSTATE of thread {}", tid);
  }
  return Ok();
}

void ToProto(const Regs& r, const std::vector<std::uint8_t>& xstate, image::X86Core* out) {
  out->set_r15(r.r15);
  out->set_r14(r.r14);
  out->set_r13(r.r13);
  out->set_r12(r.r12);
  out->set_rbp(r.rbp);
  out->set_rbx(r.rbx);
  out->set_r11(r.r11);
  out->set_r10(r.r10);
  out->set_r9(r.r9);
  out->set_r8(r.r8);
  out->set_rax(r.rax);
  out->set_rcx(r.rcx);
  out->set_rdx(r.rdx);
  out->set_rsi(r.rsi);
  out->set_rdi(r.rdi);
  out->set_orig_rax(r.orig_rax);
  out->set_rip(r.rip);
  out->set_cs(r.cs);
  out->set_eflags(r.eflags);
  out->set_rsp(r.rsp);
  out->set_ss(r.ss);
  out->set_fs_base(r.fs_base);
  out->set_gs_base(r.gs_base);
  out->set_ds(r.ds);
  out->set_es(r.es);
  out->set_fs(r.fs);
  out->set_gs(r.gs);
  out->set_xstate(xstate.data(), xstate.size());
}

Regs RegsFromProto(const image::X86Core& c) {
  Regs r{};
  r.r15 = c.r15();
  r.r14 = c.r14();
  r.r13 = c.r13();
  r.r12 = c.r12();
  r.rbp = c.rbp();
  r.rbx = c.rbx();
  r.r11 = c.r11();
  r.r10 = c.r10();
  r.r9 = c.r9();
  r.r8 = c.r8();
  r.rax = c.rax();
  r.rcx = c.rcx();
  r.rdx = c.rdx();
  r.rsi = c.rsi();
  r.rdi = c.rdi();
  r.orig_rax = c.orig_rax();
  r.rip = c.rip();
  r.cs = c.cs();
  r.eflags = c.eflags();
  r.rsp = c.rsp();
  r.ss = c.ss();
  r.fs_base = c.fs_base();
  r.gs_base = c.gs_base();
  r.ds = c.ds();
  r.es = c.es();
  r.fs = c.fs();
  r.gs = c.gs();
  return r;
}

std::vector<std::uint32_t> CpuFeatureWords() {
  std::vector<std::uint32_t> words(7, 0);
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(1, 0, &a, &b, &c, &d)) {
    // ecx bit 27 (OSXSAVE) and the APIC id in ebx are per-boot facts, not
    // features; leaf 1 edx/ecx otherwise are.
    words[0] = c & ~(1U << 27);
    words[1] = d;
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    words[2] = b;
    words[3] = c;
    words[4] = d;
  }
  if (__get_cpuid_count(0x80000001, 0, &a, &b, &c, &d)) {
    words[5] = c;
    words[6] = d;
  }
  return words;
}

std::uint64_t XstateFeatures() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || (c & (1U << 27)) == 0) return 0;
  std::uint32_t lo = 0, hi = 0;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<std::uint64_t>(hi) << 32) | lo;
}

std::vector<std::string> MissingCpuFeatures(const std::vector<std::uint32_t>& image_words,
                                            const std::vector<std::uint32_t>& host_words) {
  std::vector<std::string> missing;
  for (std::size_t i = 0; i < image_words.size(); ++i) {
    const std::uint32_t host = i < host_words.size() ? host_words[i] : 0;
    const std::uint32_t lacking = image_words[i] & ~host;
    if (lacking != 0) missing.push_back(fmt::format("word {} bits {:#x}", i, lacking));
  }
  return missing;
}

}  // namespace roam::ckpt::arch
