// Identity, credentials and signal state of a task from /proc/PID/status:
// what capture records so restore can give the process its ids, signal
// dispositions summary and capabilities back, and what it checks before
// migrating (a tracer, seccomp filters).
//
// Note: inside roam::ckpt::procfs, `Status` is this struct; spell the
// Result<void> type roam::Status there.
//
// Thread-safety: plain functions; safe from any thread.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt::procfs {

struct Status {
  // As the kernel prints it: '\n' and '\\' in the comm are escaped there.
  // ReadComm() gives the raw bytes.
  std::string name;
  uint32_t umask = 0;
  char state = '?';  // 'R', 'S', 'D', 'T', 't', 'Z', ...
  pid_t tgid = 0;
  pid_t pid = 0;
  pid_t ppid = 0;
  pid_t tracer_pid = 0;
  std::array<uint32_t, 4> uid{};  // real, effective, saved, filesystem
  std::array<uint32_t, 4> gid{};
  std::vector<uint32_t> groups;
  int threads = 0;
  uint64_t sig_pending = 0;  // SigPnd: this thread's pending signals
  uint64_t shd_pending = 0;  // ShdPnd: the whole thread group's
  uint64_t blocked = 0;
  uint64_t ignored = 0;
  uint64_t caught = 0;
  uint64_t cap_inh = 0;
  uint64_t cap_prm = 0;
  uint64_t cap_eff = 0;
  uint64_t cap_bnd = 0;
  uint64_t cap_amb = 0;
  bool no_new_privs = false;
  int seccomp = 0;            // 0 off, 1 strict, 2 filter
  int seccomp_filters = 0;    // 0 also where the kernel does not report it (before 5.9)
  std::vector<pid_t> ns_pid;  // NSpid: the pid in each pid namespace, outermost first
  uint64_t rss_anon_kb = 0;   // RssAnon: resident anonymous memory (0 for a kernel thread)
};

// Unknown keys are ignored (the kernel adds some in most releases). A missing
// Name, Pid, Uid, Gid or Threads, a line without ':', or a bad value is
// Errc::kCorrupt.
Result<Status> ParseStatus(std::string_view text);
Result<Status> ReadStatus(pid_t pid);

}  // namespace roam::ckpt::procfs
