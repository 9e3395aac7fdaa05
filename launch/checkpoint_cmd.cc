#include "launch/checkpoint_cmd.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <optional>
#include <string>

#include "core/ckpt/lazy_pages.h"
#include "roam/ckpt/capture.h"
#include "roam/ckpt/refusal.h"
#include "roam/ckpt/restore.h"

namespace roam::launch {
namespace {

struct CheckpointArgs {
  pid_t pid = 0;
  std::string dir;
  bool leave_running = false;
  bool check = false;
  int pre_copy_rounds = 0;
} g_checkpoint;

struct RestoreArgs {
  std::string dir;
  bool same_pid = false;
  bool pid_ns = false;
  bool detach = false;
  bool lazy = false;
  std::string stdio_paths[3];
} g_restore;

volatile sig_atomic_t g_child = 0;

void ForwardSignal(int sig) {
  if (g_child > 0) kill(g_child, sig);
}

int Fail(std::string_view what, const Error& error) {
  std::fprintf(stderr, "roam: %.*s: %s\n", static_cast<int>(what.size()), what.data(),
               error.ToString().c_str());
  return 1;
}

int RunCheck(pid_t pid) {
  auto refusals = ckpt::FindRefusals(pid);
  if (!refusals) return Fail("checkpoint --check", refusals.error());
  if (refusals->empty()) {
    std::printf("pid %d can be checkpointed and migrated\n", pid);
    return 0;
  }
  for (const auto& r : *refusals) {
    std::printf("pid %d cannot migrate: %s (%s)\n", pid, r.detail.c_str(),
                std::string(ckpt::RefusalReasonName(r.reason)).c_str());
  }
  return 1;
}

int RunCheckpoint() {
  if (g_checkpoint.check) return RunCheck(g_checkpoint.pid);
  if (g_checkpoint.dir.empty()) {
    std::fprintf(stderr, "roam: checkpoint: -o DIR is required (see roam checkpoint --help)\n");
    return 2;
  }
  ckpt::CaptureOptions options;
  options.leave_running = g_checkpoint.leave_running;
  std::optional<ckpt::PreCopy> pre_copy;
  if (g_checkpoint.pre_copy_rounds > 0) {
    auto started = ckpt::PreCopy::Start(g_checkpoint.pid);
    if (!started && started.error().code() == Errc::kUnsupported) {
      std::printf("note: no pre-copy (%s); stop-copy instead\n",
                  started.error().ToString().c_str());
    } else if (!started) {
      return Fail("checkpoint --pre-copy", started.error());
    } else {
      pre_copy.emplace(std::move(*started));
      // Rounds end early once one copies less than 1 MiB.
      auto rounds = pre_copy->Converge(g_checkpoint.pre_copy_rounds, 256);
      if (!rounds) return Fail("checkpoint --pre-copy", rounds.error());
      for (std::size_t i = 0; i < rounds->size(); ++i) {
        std::printf("pre-copy round %zu: %llu pages in %.1f ms\n", i + 1,
                    static_cast<unsigned long long>((*rounds)[i].pages_read),
                    static_cast<double>((*rounds)[i].ns) / 1e6);
      }
      options.pre_copy = &*pre_copy;
    }
  }
  auto stats = ckpt::CheckpointToDirectory(g_checkpoint.pid, g_checkpoint.dir, options);
  if (!stats) return Fail("checkpoint", stats.error());
  std::printf(
      "checkpointed pid %d to %s: %llu pages (%.1f MiB), %llu zero pages skipped, "
      "frozen %.1f ms, process %s\n",
      g_checkpoint.pid, g_checkpoint.dir.c_str(),
      static_cast<unsigned long long>(stats->pages_written),
      static_cast<double>(stats->pages_written) * 4096 / (1 << 20),
      static_cast<unsigned long long>(stats->zero_pages_skipped),
      static_cast<double>(stats->frozen_ns) / 1e6,
      options.leave_running ? "left running" : "killed");
  if (pre_copy) {
    std::printf("pre-copy: %llu pages came from the rounds, %llu read while frozen\n",
                static_cast<unsigned long long>(stats->pre_copied_pages),
                static_cast<unsigned long long>(stats->pages_read));
  }
  for (const auto& note : stats->notes) std::printf("note: %s\n", note.c_str());
  return 0;
}

int RunRestore() {
  ckpt::RestoreOptions options;
  options.same_pid = g_restore.same_pid;
  options.pid_namespace = g_restore.pid_ns;
  options.lazy = g_restore.lazy;
  int opened[3] = {-1, -1, -1};
  for (int i = 0; i < 3; ++i) {
    if (g_restore.stdio_paths[i].empty()) continue;
    const int flags = i == 0 ? O_RDONLY : (O_WRONLY | O_CREAT | O_APPEND);
    opened[i] = open(g_restore.stdio_paths[i].c_str(), flags | O_CLOEXEC, 0644);
    if (opened[i] < 0) {
      return Fail("restore", ErrnoError(errno, "open {}", g_restore.stdio_paths[i]));
    }
    options.stdio[static_cast<std::size_t>(i)] = opened[i];
  }
  auto stats = ckpt::RestoreFromDirectory(g_restore.dir, options);
  for (int fd : opened) {
    if (fd >= 0) close(fd);
  }
  if (!stats) return Fail("restore", stats.error());
  for (const auto& note : stats->notes)
    std::fprintf(stderr, "roam: restore: note: %s\n", note.c_str());
  // Post-copy: memory is still arriving; roam must stay until it is all in
  // place (or the process is gone).
  const auto finish_post_copy = [&stats]() -> int {
    if (!stats->post_copy) return 0;
    auto lazy = stats->post_copy->Wait();
    if (!lazy) return Fail("restore: post-copy", lazy.error());
    if (g_restore.detach) {
      std::printf("post-copy: %llu pages placed after resume in %.1f ms (%llu faults)\n",
                  static_cast<unsigned long long>(lazy->pages_on_fault + lazy->pages_streamed),
                  static_cast<double>(lazy->total_ns) / 1e6,
                  static_cast<unsigned long long>(lazy->faults));
    }
    return 0;
  };
  if (g_restore.detach) {
    if (stats->init_pid > 0) {
      std::printf("restored as pid %d (pid %d in its own pid namespace, init %d)\n", stats->pid,
                  stats->ns_pid, stats->init_pid);
    } else {
      std::printf("restored as pid %d\n", stats->pid);
    }
    std::fflush(stdout);
    return finish_post_copy();
  }
  // Wait like a shell: the process's exit status becomes ours, and the
  // signals a user sends us reach it.
  g_child = stats->pid;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) signal(sig, ForwardSignal);
  int status = 0;
  while (waitpid(stats->pid, &status, 0) < 0) {
    if (errno != EINTR) return Fail("restore", ErrnoError(errno, "wait for pid {}", stats->pid));
  }
  if (stats->init_pid > 0) {
    // The init exits once the process is gone; it could not finish exiting
    // before the process was reaped above.
    while (waitpid(stats->init_pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  if (const int failed = finish_post_copy(); failed != 0) return failed;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

}  // namespace

void AddCheckpointCommands(CLI::App& app) {
  CLI::App* cp =
      app.add_subcommand("checkpoint", "Capture a running process into an image directory");
  cp->add_option("pid", g_checkpoint.pid, "Process to capture")
      ->required()
      ->check(CLI::PositiveNumber);
  cp->add_option("-o,--output", g_checkpoint.dir, "Image directory (created, mode 0700)");
  cp->add_flag("--leave-running", g_checkpoint.leave_running, "Resume the process after capture");
  cp->add_flag("--check", g_checkpoint.check,
               "Only say whether the process could be captured, and why not");
  cp->add_option("--pre-copy", g_checkpoint.pre_copy_rounds,
                 "Copy memory while the process runs, up to N rounds, then freeze it "
                 "for what changed since")
      ->check(CLI::Range(1, 100));

  CLI::App* rs =
      app.add_subcommand("restore", "Rebuild a process from an image directory and wait for it");
  rs->add_option("dir", g_restore.dir, "Image directory")->required();
  rs->add_flag("--same-pid", g_restore.same_pid, "Keep the image's pid (must be free; needs root)");
  rs->add_flag("--pid-ns", g_restore.pid_ns,
               "Restore into a new pid namespace of its own, keeping its pid and tids there "
               "(needs root)");
  rs->add_flag("--detach", g_restore.detach,
               "Do not wait for the process (with --lazy: only until its memory is in place)");
  rs->add_flag("--lazy", g_restore.lazy,
               "Post-copy: resume at once, fill memory on fault and in the background");
  rs->add_option("--stdin", g_restore.stdio_paths[0], "File for fd 0 if it was a pipe or terminal");
  rs->add_option("--stdout", g_restore.stdio_paths[1], "File for fd 1 (appended)");
  rs->add_option("--stderr", g_restore.stdio_paths[2], "File for fd 2 (appended)");
}

int RunCheckpointCommands(const CLI::App& app) {
  if (app.get_subcommand("checkpoint")->parsed()) return RunCheckpoint();
  if (app.get_subcommand("restore")->parsed()) return RunRestore();
  return -1;
}

}  // namespace roam::launch
