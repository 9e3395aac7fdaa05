// The processor seam of capture and restore: registers, the syscall ABI used
// for injection, the restart of interrupted syscalls, CPU features and the
// extended register state. Everything that knows x86-64 lives behind this
// header (implementation: core/ckpt/arch/x86_64/); the rest of core/ckpt
// treats Regs as opaque and uses these functions.
//
// Thread-safety: free functions; ptrace calls must come from the thread that
// attached to the tracee (a kernel rule).
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/ckpt/image/image.pb.h"
#include "roam/base/error.h"

namespace roam::ckpt::arch {

using Regs = struct user_regs_struct;

// The kernel's struct sigaction as rt_sigaction takes it (not glibc's).
struct KernelSigaction {
  std::uint64_t handler;
  std::uint64_t flags;
  std::uint64_t restorer;
  std::uint64_t mask;
};

inline constexpr const char* kMachine = "x86_64";
// `syscall` followed by `int3`: the trampoline restore injects through.
inline constexpr std::array<std::uint8_t, 3> kSyscallTrampoline = {0x0f, 0x05, 0xcc};
inline constexpr std::size_t kSyscallInsnSize = 2;

std::uint64_t InstructionPointer(const Regs& regs);
std::uint64_t StackPointer(const Regs& regs);
// The syscall number of an interrupted syscall, -1 when not in one.
std::int64_t InterruptedSyscall(const Regs& regs);

// Sets regs up to execute syscall `nr` with `args` at the `syscall`
// instruction at `insn`. orig_rax becomes -1 so that the kernel's restart
// logic, which runs on resume from a signal stop, leaves these regs alone.
void PrepareSyscall(Regs& regs, std::uint64_t insn, long nr,
                    const std::array<std::uint64_t, 6>& args);
// The raw return value (-errno on failure).
long SyscallReturn(const Regs& regs);

// Rewrites regs of a thread stopped inside an interrupted syscall so that,
// resumed in any process, it re-issues the call: the kernel's restart block
// (ERESTART_RESTARTBLOCK) does not survive into a new process, so relative
// nanosleep/clock_nanosleep are re-issued with the remaining time the kernel
// wrote back, and other restart-block calls return EINTR. Returns a one-line
// note of what was done (empty if nothing).
std::string FixupInterruptedSyscall(Regs& regs);

Result<Regs> GetRegs(pid_t tid);
Status SetRegs(pid_t tid, const Regs& regs);
// The NT_X86_XSTATE regset (FPU, SSE, AVX, ...) as the kernel returns it.
Result<std::vector<std::uint8_t>> GetXstate(pid_t tid);
Status SetXstate(pid_t tid, const std::vector<std::uint8_t>& xstate);

void ToProto(const Regs& regs, const std::vector<std::uint8_t>& xstate, image::X86Core* out);
Regs RegsFromProto(const image::X86Core& core);

// CPUID feature words that glibc's ifunc resolvers look at (leaf 1 ecx/edx,
// leaf 7 ebx/ecx/edx, leaf 0xd eax, extended leaf 0x80000001 ecx/edx).
std::vector<std::uint32_t> CpuFeatureWords();
// XCR0: the xstate components the OS enabled.
std::uint64_t XstateFeatures();

// Words the image needs that this CPU lacks, as "word N bits 0x..." lines;
// empty when this CPU has all of them.
std::vector<std::string> MissingCpuFeatures(const std::vector<std::uint32_t>& image_words,
                                            const std::vector<std::uint32_t>& host_words);

}  // namespace roam::ckpt::arch
