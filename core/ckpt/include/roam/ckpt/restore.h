// Restore: rebuild a captured process as a new process that continues
// exactly where the original stopped. A stub child is forked under ptrace,
// emptied, and refilled through injected syscalls: every mapping at its
// address, the pages, the vdso moved into place, the mm fields
// (PR_SET_MM_MAP), files, signal state, limits, registers.
//
// Restore checks the image against this node first (kernel, CPU features,
// xstate, vdso layout, the identity of every mapped file) and starts nothing
// on a mismatch. A restore runs with the credentials of its caller; a root
// caller gives the process the uids and gids recorded in the image (never
// more privilege than root had, and no capabilities unless it was root).
//
// Thread-safety: one restore per thread (ptrace ties the stub to it).
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "roam/base/error.h"

namespace roam::image {
class Image;
}

namespace roam::ckpt {

class PageSource;
class LazyPageServer;

struct RestoreOptions {
  // Keep the image's pid (clone3 set_tid): the pid must be free here, and
  // the caller needs CAP_CHECKPOINT_RESTORE. Without it the process gets a
  // new pid, and a multi-threaded image is refused.
  bool same_pid = false;
  // Restore into a fresh PID namespace behind a small init (pid 1: reaps
  // orphans, forwards signals, exits with the process), with the image's pid
  // and every thread's tid there: they are always free, so multi-threaded
  // images need nothing else. Needs CAP_SYS_ADMIN; implies same_pid's ids.
  bool pid_namespace = false;
  // pid_namespace only: the init (and with it the process) is killed when
  // the thread that called Restore exits (PR_SET_PDEATHSIG), as a daemon's
  // guests must be. Default: the init outlives the restorer (`roam restore
  // --detach`).
  bool init_ends_with_restorer = false;
  // Files for fds 0-2 when the process had a pipe or terminal there; -1
  // gives the restorer's own.
  std::array<int, 3> stdio = {-1, -1, -1};
  // Post-copy: resume at once and fill private anonymous writable memory on
  // fault and by a background stream (userfaultfd). Falls back to stop-copy,
  // with a note, where userfaultfd is not available to the caller.
  bool lazy = false;
};

// Run in the restorer while the new process is stopped.
struct RestoreHooks {
  std::function<Status(pid_t)> before_pages;   // cgroup, CPU and memory binding
  std::function<Status(pid_t)> before_resume;  // last look before it runs
};

struct RestoreStats {
  pid_t pid = -1;     // in the caller's pid namespace
  pid_t ns_pid = -1;  // in its own pid namespace (the image's pid when kept)
  // pid_namespace only: the namespace's init, also the caller's child. It
  // exits once the process is gone; reap it after the process (the kernel
  // holds a dying init until the process has been reaped).
  pid_t init_pid = -1;
  std::uint64_t pages_written = 0;
  std::size_t injected_syscalls = 0;
  std::uint64_t restore_ns = 0;    // stub start to resume
  std::vector<std::string> notes;  // what could not be restored exactly
  std::uint64_t lazy_pages = 0;    // pages left to the post-copy server
  // Post-copy only: the server still filling memory after the process
  // resumed, and the page source it reads (kept alive with it). Wait() on the
  // server before letting go of either.
  std::shared_ptr<LazyPageServer> post_copy;
  std::shared_ptr<PageSource> post_copy_source;
};

// Ok if this node can run the image; kIncompatible naming the first
// difference otherwise.
Status CheckCompatibility(const image::Image& meta);

// The new process runs when this returns; it is the caller's child, and so
// is the init of its pid namespace (pid_namespace).
Result<RestoreStats> Restore(const image::Image& meta, PageSource& pages,
                             const RestoreOptions& options, const RestoreHooks& hooks = {});

// Validates the image directory (metadata, compatibility, the page stream's
// structure) before starting anything, then restores it. Page payloads are
// verified as they are read: all of them before the process runs for
// stop-copy; for post-copy as they are served, a damaged one killing the
// process after it resumed.
Result<RestoreStats> RestoreFromDirectory(const std::filesystem::path& dir,
                                          const RestoreOptions& options,
                                          const RestoreHooks& hooks = {});

}  // namespace roam::ckpt
