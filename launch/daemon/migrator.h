// roamd's migration thread: a transport Fabric of its own (the "data"
// fabric, one UCX worker) and a thread that drives it, so that freezing,
// moving and rebuilding a process blocks nothing on the event loop.
//   - Outgoing: Submit(job) queues a move of a local guest; the thread runs
//     migrate::MigrationSource::MigrateOut and hands the result back to the
//     loop (on_done). The thread ptraces the process for the move, so it is
//     the only thread that ever does.
//   - Incoming: the thread serves migrate::MigrationTarget; the restored
//     process gets fresh stdio pipes (this daemon keeps the other ends) and
//     joins the guest cgroup before its pages are written; once it runs,
//     the loop is told (on_arrived) and adopts it as a guest.
// Results reach the loop through an eventfd it watches: callbacks run on
// the loop's thread, never on the migration thread.
//
// The restored processes and their inits are children of this daemon
// (waitable from the loop's thread); the inits' parent-death signal follows
// the migration thread, which lives as long as the Migrator.
//
// Thread-safety: Submit from the loop's thread. Lifetime: destroy on the
// loop's thread before the loop; the destructor stops and joins the thread
// (a move under way finishes first).
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "launch/daemon/event_loop.h"
#include "roam/base/error.h"
#include "roam/base/unique_fd.h"
#include "roam/migrate/migration.h"
#include "roam/transport/transport.h"

namespace roam::daemon {

struct MigrationJob {
  std::uint64_t migration_id = 0;   // unique per node, never 0
  std::string id;                   // the process's pool id
  pid_t pid = -1;                   // here
  transport::Bytes target_address;  // the target daemon's data fabric
  std::string guest;                // migrate::MigrateOptions::guest
  migrate::MigrationMode mode = migrate::MigrationMode::kStopCopy;
};

struct MigrationOutcome {
  std::string id;
  Result<migrate::MigrationReport> report;
};

struct Arrival {
  migrate::Running running;
  std::array<UniqueFd, 3> stdio;  // our ends: stdin's writer, stdout's and stderr's readers
  UniqueFd stdin_reader;          // another read end of its stdin (see node.cc HandOver)
};

// A guest's stdio pipes, all close-on-exec: `theirs` are the guest's ends
// (stdin's reader, stdout's and stderr's writers), `ours` the daemon's,
// non-blocking.
struct GuestPipes {
  std::array<UniqueFd, 3> theirs;
  std::array<UniqueFd, 3> ours;
};
Result<GuestPipes> MakeGuestPipes();

class Migrator final {
 public:
  struct Callbacks {
    std::function<void(MigrationOutcome)> on_done;
    std::function<void(Arrival)> on_arrived;
    // A move under way: page bytes sent and expected (a few times a second).
    std::function<void(const std::string& id, std::uint64_t done, std::uint64_t total)> on_progress;
    // On the migration thread: may the node take this guest (opaque
    // bytes, migration id)? And, once it is rebuilt and before it runs, is
    // it what that record says (its credentials)? An error refuses it and
    // the process runs on at its old node.
    std::function<Status(const std::string& guest, std::uint64_t migration_id)> accept;
    std::function<Status(const std::string& guest, pid_t pid)> verify;
  };

  // `page_fabric` opens the fabric an incoming post-copy fetches its pages
  // on (one per move, used by the page server's thread). `staging_bytes`:
  // the incoming moves' staging, allocated and faulted in now; a move that
  // needs more grows it (and pays for that fresh memory during the move).
  static Result<std::unique_ptr<Migrator>> Start(
      EventLoop& loop, std::unique_ptr<transport::Fabric> fabric,
      std::function<Result<std::unique_ptr<transport::Fabric>>()> page_fabric,
      std::string guest_cgroup, std::size_t staging_bytes, Callbacks callbacks);
  ~Migrator();
  Migrator(const Migrator&) = delete;
  Migrator& operator=(const Migrator&) = delete;

  void Submit(MigrationJob job);

 private:
  Migrator(EventLoop& loop, std::unique_ptr<transport::Fabric> fabric, std::string guest_cgroup,
           Callbacks callbacks, UniqueFd wake_thread, UniqueFd wake_loop);
  void ThreadMain();
  void RunJob(MigrationJob job);
  void PostToLoop(std::function<void()> task);
  void DrainLoopTasks();
  Result<migrate::RestoreSetup> Setup(const migrate::Arrival& arrival);

  EventLoop& loop_;
  std::unique_ptr<transport::Fabric> fabric_;
  std::string guest_cgroup_;
  Callbacks callbacks_;
  UniqueFd wake_thread_;  // eventfd: jobs or stop for the thread
  UniqueFd wake_loop_;    // eventfd: results for the loop
  WatchId loop_watch_;

  std::mutex mu_;
  std::deque<MigrationJob> jobs_;                 // guarded by mu_
  std::deque<std::function<void()>> loop_tasks_;  // guarded by mu_
  std::atomic<bool> stop_{false};

  // Thread-only state.
  std::unique_ptr<migrate::MigrationSource> source_;
  std::unique_ptr<migrate::MigrationTarget> target_;
  std::array<UniqueFd, 3> pending_ours_;    // the arriving process's pipes, our ends
  std::array<UniqueFd, 3> pending_theirs_;  // and its ends, until it runs
  std::map<transport::Bytes, std::unique_ptr<transport::Endpoint>> endpoints_;

  std::thread thread_;
};

}  // namespace roam::daemon
