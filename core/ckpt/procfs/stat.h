// Scheduling, CPU-time and memory-layout numbers of a task from /proc/PID/stat. The mm
// fields (code, data, brk, stack, argv and environment bounds) are what
// restore hands back to the kernel with PR_SET_MM_MAP; the kernel shows them
// as 0 to a reader that may not ptrace the target.
//
// Thread-safety: plain functions; safe from any thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "roam/base/error.h"

namespace roam::ckpt::procfs {

// Fields by their 1-based number in proc(5).
struct Stat {
  pid_t pid = 0;             // 1
  std::string comm;          // 2, raw: between the first '(' and the last ')'
  char state = '?';          // 3
  pid_t ppid = 0;            // 4
  pid_t pgrp = 0;            // 5
  pid_t session = 0;         // 6
  int tty_nr = 0;            // 7
  uint64_t utime = 0;        // 14, clock ticks in user mode, its threads included
  uint64_t stime = 0;        // 15, clock ticks in the kernel, its threads included
  int64_t num_threads = 0;   // 20
  uint64_t starttime = 0;    // 22, clock ticks after boot
  uint64_t start_code = 0;   // 26
  uint64_t end_code = 0;     // 27
  uint64_t start_stack = 0;  // 28
  uint64_t start_data = 0;   // 45
  uint64_t end_data = 0;     // 46
  uint64_t start_brk = 0;    // 47
  uint64_t arg_start = 0;    // 48
  uint64_t arg_end = 0;      // 49
  uint64_t env_start = 0;    // 50
  uint64_t env_end = 0;      // 51
};

// Text with fewer than 51 fields, or a field that does not parse, is
// Errc::kCorrupt naming the field.
Result<Stat> ParseStat(std::string_view text);
Result<Stat> ReadStat(pid_t pid);

}  // namespace roam::ckpt::procfs
