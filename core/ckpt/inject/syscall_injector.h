// Making a stopped thread run system calls on roam's behalf, and reading and
// writing its memory. Capture uses it to ask the kernel what /proc does not
// show (signal handlers, brk, the clear-child-tid address); restore uses it
// to rebuild a process from inside a stub.
//
// No code is patched: calls go through a `syscall` instruction that already
// exists in the target (its vdso) or through a trampoline page restore maps.
// Each call stops at syscall entry and exit (PTRACE_SYSCALL), so nothing else
// of the thread runs.
//
// Thread-safety: use from the thread that attached the Tracee.
// Lifetime: a SyscallInjector borrows the Tracee; it must not outlive it.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "core/ckpt/arch/arch.h"
#include "core/ckpt/inject/tracee.h"
#include "roam/base/error.h"

namespace roam::ckpt {

// /proc/PID/mem of a process: writes work even on read-only mappings
// (the kernel uses FOLL_FORCE), which restore relies on. Writes go by
// process_vm_writev where it can, which is faster for large runs.
class RemoteMemory final {
 public:
  static Result<RemoteMemory> Open(pid_t pid);
  RemoteMemory(RemoteMemory&& other) noexcept;
  RemoteMemory& operator=(RemoteMemory&& other) noexcept;
  RemoteMemory(const RemoteMemory&) = delete;
  RemoteMemory& operator=(const RemoteMemory&) = delete;
  ~RemoteMemory();

  Status Read(std::uint64_t address, std::span<std::byte> out) const;
  Status Write(std::uint64_t address, std::span<const std::byte> data) const;

 private:
  RemoteMemory(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  pid_t pid_ = -1;
  int fd_ = -1;
};

// The address of a `syscall` instruction (0f 05) in [start, end) of the
// process, e.g. its vdso, where the kernel's fallback paths have one.
Result<std::uint64_t> FindSyscallInstruction(const RemoteMemory& memory, std::uint64_t start,
                                             std::uint64_t end);

class SyscallInjector final {
 public:
  // `tracee` must be in a ptrace stop; `base` are the registers calls start
  // from (usually the thread's own, so the stack pointer is sane).
  SyscallInjector(Tracee& tracee, const arch::Regs& base, std::uint64_t syscall_insn)
      : tracee_(tracee), base_(base), insn_(syscall_insn) {}

  void set_syscall_instruction(std::uint64_t insn) { insn_ = insn; }

  // Runs syscall `nr` in the tracee and returns its raw result (-errno on
  // failure). Fails only if the tracee could not be driven.
  Result<long> Raw(long nr, std::uint64_t a0 = 0, std::uint64_t a1 = 0, std::uint64_t a2 = 0,
                   std::uint64_t a3 = 0, std::uint64_t a4 = 0, std::uint64_t a5 = 0);
  // Like Raw, but a negative result becomes an Error naming `what`.
  Result<long> Call(std::string_view what, long nr, std::uint64_t a0 = 0, std::uint64_t a1 = 0,
                    std::uint64_t a2 = 0, std::uint64_t a3 = 0, std::uint64_t a4 = 0,
                    std::uint64_t a5 = 0);

  std::size_t calls() const { return calls_; }

  // What the last injected call created if it was a clone, by its id in
  // roam's pid namespace (the call's own result is the id in the tracee's
  // namespace); -1 otherwise. Needs PTRACE_O_TRACECLONE on the tracee.
  pid_t last_clone_child() const { return last_clone_child_; }

 private:
  Tracee& tracee_;
  arch::Regs base_;
  std::uint64_t insn_;
  std::size_t calls_ = 0;
  pid_t last_clone_child_ = -1;
};

// A private anonymous mapping made inside the tracee by injected mmap, for
// syscall arguments and results; unmapped by Release() (call it before
// detaching: the destructor cannot inject).
class RemoteScratch final {
 public:
  static Result<RemoteScratch> Map(SyscallInjector& injector, const RemoteMemory& memory,
                                   std::size_t size);
  std::uint64_t address() const { return address_; }
  std::size_t size() const { return size_; }
  Status Write(std::size_t offset, std::span<const std::byte> data) const;
  Status Read(std::size_t offset, std::span<std::byte> out) const;
  Status Release(SyscallInjector& injector);

 private:
  RemoteScratch(const RemoteMemory& memory, std::uint64_t address, std::size_t size)
      : memory_(&memory), address_(address), size_(size) {}
  const RemoteMemory* memory_;
  std::uint64_t address_;
  std::size_t size_;
};

template <typename T>
std::span<const std::byte> BytesOf(const T& value) {
  return std::as_bytes(std::span<const T, 1>(&value, 1));
}
template <typename T>
std::span<std::byte> WritableBytesOf(T& value) {
  return std::as_writable_bytes(std::span<T, 1>(&value, 1));
}

}  // namespace roam::ckpt
