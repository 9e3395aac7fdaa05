// Migration of one process from this node to a peer over roam's transport,
// stop-copy, pre-copy or post-copy (MigrationMode): the source freezes the
// process, puts its pages into the target's staging memory with one-sided
// puts (for pre-copy, most of them in rounds before the freeze; for
// post-copy, none: the target asks for them after the process resumed
// there), hands over the metadata, and the target rebuilds the process
// there (ckpt::Restore in a PID namespace of its own). The process either
// runs at the target and is gone at the source, or runs on at the source
// exactly as before; on every error MigrateOut returns, the latter.
//
// Each daemon runs migrations on a migration thread with a Fabric of its own
// (one UCX worker), so a capture or restore blocks nothing else. The source
// side (MigrationSource::MigrateOut) is one blocking call that progresses the
// fabric itself. The target side (MigrationTarget) serves requests inside
// the fabric's Progress and does the restore in RunPending, outside it: a
// handler may not wait for another message of the same fabric, and the
// restore waits for the source's Go.
//
// Protocol (tags kMigrateTagFirst.., payloads in core/migrate/migrate.proto):
//   source                                     target
//   Prepare{id, page bytes, guest, address} -> accept(guest)?, staging sized
//                                           <- Prepared{staging key, capacity}
//   [pre-copy: rounds while it runs put changed pages, appending]
//   freeze; pages put into the staging in runs at increasing offsets (a
//   registered send ring bounds what is in flight); flush
//   Commit{id, image, run table}            -> checked, restore queued
//                                           <- COMMITTED
//   Status{id} (again while not READY)      -> (restore runs outside Progress,
//                                              then stops in before_resume,
//                                              progressing the fabric)
//                                           <- READY, or the restore's error
//   kill the frozen copy; record MOVED
//   Go{id}                                  -> resume; on_running(...)
//                                           <- RUNNING
// Before READY, any failure (refusal, restore error, timeout, unreachable
// target) makes the source resume its copy, record SOURCE_KEPT and send a
// best-effort Abort{id}; the target drops its copy on Abort.
//
// Post-copy (version 2 of the messages, see migrate.proto):
//   source                                     target
//   Prepare{..., post_copy}                 -> accept(guest, mode)?; no staging
//                                           <- Prepared{no key}
//   freeze (ckpt::CaptureAsSource: metadata only, the process stays frozen)
//   Commit{id, image, extent, post_copy}    -> checked, restore queued
//                                           <- COMMITTED
//   Status{id} ... (serving PageRequests)   -> restore with `lazy`: a
//                                              RemotePageSource on a fabric
//                                              of its own asks the pages
//                                              that must be there first
//                    <- PageRequest{id, vaddr, n}   (from the page fabric)
//   PageReply{bitmap, bytes} ->
//                                           <- READY (the page server runs)
//   record MOVED (never resumed from here on)
//   Go{id}                                  -> resume; on_running(...)
//                                           <- RUNNING
//   serve PageRequests (faults and the        the LazyPageServer places pages
//   background stream), Status{id} every      on fault and in address order
//   half second as a heartbeat
//                                           <- PagesDone{id, counts}
//   kill the frozen copy; MigrateOut returns
// Between Go and PagesDone the source's copy stays frozen, never resumed:
// there are never two copies, but the process depends on both nodes until
// the last page is in. That is post-copy's residual risk: if the target
// dies (or cannot be reached) after Go, the process is lost at both ends
// (the source kills its frozen copy, since the target may have run and
// written files; the report says post_copy_complete = false); if the
// source dies, the target's page server fails its next request and kills
// the process there. A loss before Go resumes the source's copy, as in
// stop-copy.
//
// Who has the process when the two lose each other after READY. The target
// resumes only on Go, or when the source answers an Outcome{id} question
// with MOVED; it kills its stopped copy on SOURCE_KEPT, UNKNOWN, or when the
// source cannot be reached within TargetOptions::go_timeout +
// outcome_timeout. This picks "at most one copy": a partition right after
// READY, once the source killed its copy, loses the process (neither node
// runs it; the source's report says go_acknowledged = false). It never
// yields two copies as long as the source's MigrationSource (which answers
// Outcome) lives as long as its fabric is progressed.
//
// Thread-safety: a MigrationSource and a MigrationTarget belong to the
// thread of their Fabric. Lifetime: both register request handlers on the
// fabric and must be destroyed before it; their destructors replace those
// handlers by ones that answer kUnavailable.
#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "roam/base/error.h"
#include "roam/transport/transport.h"

namespace roam::migrate {

// The transport tags of this protocol; the range is reserved for it.
inline constexpr std::uint16_t kMigrateTagFirst = 0x4d00;
inline constexpr std::uint16_t kTagPrepare = 0x4d00;
inline constexpr std::uint16_t kTagCommit = 0x4d01;
inline constexpr std::uint16_t kTagStatus = 0x4d02;
inline constexpr std::uint16_t kTagGo = 0x4d03;
inline constexpr std::uint16_t kTagAbort = 0x4d04;
inline constexpr std::uint16_t kTagOutcome = 0x4d08;    // served by the source
inline constexpr std::uint16_t kTagPages = 0x4d09;      // served by the source
inline constexpr std::uint16_t kTagPagesDone = 0x4d0a;  // served by the source
inline constexpr std::uint16_t kMigrateTagLast = 0x4d0f;

enum class MigrationMode {
  // Freeze, put every page, restore: downtime grows with the memory.
  kStopCopy,
  // Rounds while the process runs (ckpt::PreCopy: dirty tracking by
  // userfaultfd write-protect) read its pages straight into the send ring
  // and put them into the target's staging, the first round all of them,
  // each later one what was written since; frozen, only the pages written
  // since the last round are read and put, the rest are restored from where
  // a round put them. The staging asked for is twice the anonymous memory
  // (pages rewritten between rounds are put again).
  // kUnsupported where the kernel cannot track writes.
  kPreCopy,
  // Frozen only for the metadata: the process resumes at the target before
  // its private anonymous writable memory arrived, and the target's page
  // server (userfaultfd) asks the frozen source for each first touch and
  // streams the rest in address order; then the source drops its copy.
  // Downtime no longer grows with that memory. The target's owner must give
  // TargetOptions::page_fabric (kUnsupported otherwise); a target where
  // userfaultfd is unavailable restores it by stop-copy over the same
  // requests (slower, still correct).
  kPostCopy,
};

struct MigrateOptions {
  std::uint64_t migration_id = 0;  // unique per source node; 0 is refused
  MigrationMode mode = MigrationMode::kStopCopy;
  // Pre-copy: rounds until one reads fewer than `enough_pages` pages, at
  // most `max_rounds` of them.
  int max_rounds = 4;
  std::uint64_t enough_pages = 1024;
  // Pre-copy: called after each round's pages were put, the process still
  // running (tests change its memory here).
  std::function<void(int round)> on_round;
  // Handed to the target owner's accept and on_running, opaque here (the
  // deputy's address, the uid, the home node...).
  std::string guest;
  // Prepare round trip (the target sizes and faults in its staging).
  std::chrono::milliseconds prepare_timeout{30000};
  // From the metadata's arrival to the restored process stopped at the
  // target. The source's FabricOptions::peer_timeout must exceed the
  // restore too: the target does not progress while it restores.
  std::chrono::milliseconds restore_timeout{60000};
  // A put without its local completion, a flush, Commit, Go.
  std::chrono::milliseconds io_timeout{10000};
  // Staging asked for beyond the process's anonymous resident memory when
  // Prepare is sent (it keeps running until the freeze and may grow): a
  // capture that outgrows the staging fails (kResourceExhausted) and the
  // process runs on.
  std::uint64_t headroom_bytes = std::uint64_t{16} << 20;
  // Called on the migrating thread after each put is issued.
  std::function<void(std::uint64_t bytes_sent, std::uint64_t bytes_expected)> progress;
  // Post-copy: from Go until the target said every page is in. Past it the
  // source drops its copy (the target's process dies at its next request).
  std::chrono::milliseconds post_copy_timeout{600000};
};

struct MigrationReport {
  std::uint64_t downtime_ns = 0;  // frozen at the source until Go was acknowledged
  std::uint64_t frozen_ns = 0;    // capture's own measure: freeze to kill
  std::uint64_t total_ns = 0;     // the whole MigrateOut
  // Part of the downtime: Commit sent until READY (metadata checked, the
  // process rebuilt at the target); the rest is freeze, page transfer and
  // kill.
  std::uint64_t restore_ns = 0;
  std::uint64_t bytes_sent = 0;         // page bytes put
  std::uint64_t bytes_sent_frozen = 0;  // of which while the process was frozen
  int rounds = 0;                       // pre-copy rounds
  std::uint64_t pages = 0;
  std::uint64_t runs = 0;
  // The process at the target, as the target's daemon sees it (READY).
  pid_t target_pid = -1;
  // Whether the target acknowledged Go. False: the source's copy is gone
  // and the target decides by asking Outcome (see above).
  bool go_acknowledged = false;
  // Post-copy. Downtime and frozen_ns end at Go as above (frozen_ns is then
  // the capture of the metadata alone); the source's copy stays frozen
  // until the target's PagesDone, `source_dropped_ns` after Go.
  std::uint64_t source_dropped_ns = 0;
  // PagesDone arrived and said the target's server placed every page. False
  // with `post_copy_error`: the process was lost (see above), at both ends.
  bool post_copy_complete = false;
  std::string post_copy_error;
  std::uint64_t page_requests = 0;  // served by the source (before Go too)
  std::uint64_t bytes_served = 0;   // page bytes in their replies
  // As the target's page server counted them (PagesDone).
  std::uint64_t pages_on_fault = 0;
  std::uint64_t pages_streamed = 0;
  std::uint64_t faults = 0;
};

struct SourceOptions {
  // The registered send ring pages are read into and put from (faulted in
  // at the first migration unless allocate_now, reused after); bounds the
  // bytes in flight.
  std::size_t ring_bytes = std::size_t{64} << 20;
  // Outcomes remembered for the target's questions.
  std::size_t outcomes_kept = 1024;
  // Allocate and fault in the ring in Create rather than at the first
  // migration (a daemon: its first move is then as quick as the next).
  bool allocate_now = false;
};

// The source side of one node: the send ring, and the record of outcomes
// that a target asks for when Go did not reach it.
class MigrationSource {
 public:
  static Result<std::unique_ptr<MigrationSource>> Create(transport::Fabric& fabric,
                                                         const SourceOptions& options = {});
  virtual ~MigrationSource() = default;

  // Moves `pid` (a process this thread may ptrace) to the peer of `target`.
  // Blocks, progressing the fabric. On error the process runs here as
  // before; the error is the target's refusal (its code and message), the
  // restore's error, kTimeout, kUnavailable, or the capture's refusal.
  virtual Result<MigrationReport> MigrateOut(transport::Endpoint& target, pid_t pid,
                                             const MigrateOptions& options) = 0;
  // How often the send ring was allocated (once, unless it failed).
  virtual std::size_t ring_allocations() const = 0;
};

// One migration without a MigrationSource of its own: nothing answers the
// target's Outcome question afterwards, so a lost Go makes the target drop
// the process (see above). Daemons keep a MigrationSource. It takes over
// the fabric's Outcome tag: not for a fabric that has a MigrationSource.
Result<MigrationReport> MigrateOut(transport::Fabric& fabric, transport::Endpoint& target,
                                   pid_t pid, const MigrateOptions& options);

// What the target's owner is asked and told.
struct Arrival {
  std::uint64_t migration_id = 0;
  std::uint64_t page_bytes = 0;  // expected at Prepare, exact at restore; 0 in post-copy
  std::string guest;
  // Stop-copy also stands for pre-copy: the target cannot tell them apart.
  MigrationMode mode = MigrationMode::kStopCopy;
};

// What the owner supplies for the restore.
struct RestoreSetup {
  // Files for fds 0-2 when the process had a pipe or terminal there; -1
  // gives the target's own. They must stay open until on_running or the
  // failure (the restore dups them).
  std::array<int, 3> stdio = {-1, -1, -1};
  // Run while the new process is stopped (cgroup, binding); an error fails
  // the migration and the source's copy runs on.
  std::function<Status(pid_t)> before_pages;
  std::function<Status(pid_t)> before_resume;  // before READY is reported
  // The process dies with the thread that serves the target (its
  // namespace's init has PR_SET_PDEATHSIG), as a daemon's guests must.
  bool init_ends_with_restorer = false;
};

struct Running {
  std::uint64_t migration_id = 0;
  pid_t pid = -1;       // in the target's pid namespace; the owner's child
  pid_t init_pid = -1;  // its namespace's init, also a child: reap it after pid
  std::string guest;
};

struct TargetCallbacks {
  // May refuse with a typed error (full, draining, wrong user); the source
  // receives it as MigrateOut's error. Empty: accept everything.
  std::function<Status(const Arrival&)> accept;
  // Empty: the target's own stdio and no hooks.
  std::function<Result<RestoreSetup>(const Arrival&)> restore_setup;
  // The process runs here now.
  std::function<void(const Running&)> on_running;
  // A migration failed at this end after accept (logged by the owner).
  std::function<void(const Arrival&, const Error&)> on_failed;
  // Post-copy: the page server ended after on_running. Ok: every page is in
  // and the source dropped its copy; an error: the process was killed here
  // (its pages could not be had). Called on the fabric's thread, from
  // RunPending.
  std::function<void(const Running&, const Status&)> on_post_copy_end;
};

struct TargetOptions {
  // Staging faulted in at creation (0: at the first Prepare).
  std::size_t initial_staging_bytes = 0;
  // Staging grows in steps of this (a reallocation each time).
  std::size_t staging_granule = std::size_t{16} << 20;
  // Prepared but no Commit for this long: the source is gone, the staging
  // is free for the next one.
  std::chrono::milliseconds commit_timeout{120000};
  // READY without Go for this long: ask the source for the outcome.
  std::chrono::milliseconds go_timeout{10000};
  std::chrono::milliseconds outcome_timeout{5000};
  // Post-copy: opens the fabric the page server's requests go over (one per
  // migration, used by the restore and then by the server's thread, never
  // by this one meanwhile: a Fabric belongs to one thread at a time). The
  // same backend and options as this target's own. Empty: post-copy is
  // refused (kUnsupported). One is opened ahead (at Create, and again after
  // each post-copy's restore), so opening it is not downtime.
  std::function<Result<std::unique_ptr<transport::Fabric>>()> page_fabric = nullptr;
  // Post-copy: pages per request of the background stream (at most 255),
  // and stream requests kept in flight ahead of the server.
  std::uint32_t stream_request_pages = 128;
  std::uint32_t stream_requests_in_flight = 4;
  // Post-copy: a page request unanswered this long fails the server (the
  // process is killed).
  std::chrono::milliseconds page_timeout{10000};
};

// The target side of one node: serves the protocol's requests on its
// fabric and owns the staging region (fabric-allocated so that peers can
// write it one-sidedly, faulted in ahead). The staging is reused from one
// migration to the next, grown (reallocated) only when a Prepare needs more
// than it has, and never shrunk: a node keeps the memory of its largest
// migration. One migration at a time; a Prepare while one is under way is
// refused with kResourceExhausted. A post-copy whose process runs here is
// no longer under way in that sense: its page server (a thread of its own,
// with the page fabric) goes on while the next migration arrives.
// Destroying the target kills the processes of unfinished post-copies
// (they cannot run without their pages) and joins their servers.
class MigrationTarget {
 public:
  static Result<std::unique_ptr<MigrationTarget>> Create(transport::Fabric& fabric,
                                                         TargetCallbacks callbacks,
                                                         const TargetOptions& options = {});
  virtual ~MigrationTarget() = default;

  // Does the work queued by the handlers (a restore, which blocks until Go,
  // abort or timeout, progressing the fabric) and reaps the post-copy page
  // servers that ended (their PagesDone was sent from the server's side,
  // so a late reap delays nothing but on_post_copy_end). Call it on the
  // fabric's thread after Progress, never from inside it. True if it did
  // something.
  virtual bool RunPending() = 0;
  // Whether RunPending has work (a daemon's loop stops sleeping). An ended
  // post-copy server does not wake the fabric's event fd: a loop that
  // sleeps on it should sleep with a timeout while post_copies() > 0.
  virtual bool HasPending() const = 0;
  // Post-copies whose process runs here with pages still arriving.
  virtual std::size_t post_copies() const = 0;
  // Progresses the fabric and runs pending work until `stop()` holds.
  virtual void Serve(const std::function<bool()>& stop) = 0;

  virtual std::size_t staging_capacity() const = 0;
  // How often the staging was (re)allocated.
  virtual std::size_t staging_allocations() const = 0;
};

}  // namespace roam::migrate
