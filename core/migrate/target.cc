// The target side of a migration (migration.h). Handlers run inside the
// fabric's Progress and only check, record and answer; the restore runs in
// RunPending, outside Progress, because it waits for the source's Go in
// before_resume, progressing the same fabric: a handler that waited there
// would never see the message it waits for.
//
// Post-copy: the restore reads its pages through a RemotePageSource on a
// fabric of its own (the page server's thread cannot use this one); once
// the process runs, a waiter thread per migration joins the page server,
// tells the source (PagesDone, over the page fabric) and marks the run
// ended; RunPending reaps it. The target's thread never blocks on the
// stream.

#include <atomic>
#include <csignal>
#include <optional>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/image_dir.h"
#include "core/ckpt/lazy_pages.h"
#include "core/migrate/remote_page_source.h"
#include "core/migrate/staged_runs.h"
#include "core/migrate/wire.h"
#include "roam/base/deadline.h"
#include "roam/base/fault_injection.h"
#include "roam/ckpt/restore.h"
#include "roam/migrate/migration.h"

namespace roam::migrate {
namespace {

using Clock = std::chrono::steady_clock;
using transport::Bytes;

enum class State { kPrepared, kCommitted, kRestoring, kReady, kGo, kAborted };
struct Migration {
  Arrival arrival;
  std::string source_address;
  Clock::time_point expires;
  State state = State::kPrepared;
  wire::Commit commit;
  image::Image meta;
  pid_t pid = -1;
};
// A post-copy whose process runs here while its pages arrive.
struct PostCopyRun {
  Running running;
  std::shared_ptr<ckpt::LazyPageServer> server;
  std::unique_ptr<RemotePageSource> remote;
  std::thread waiter;
  std::atomic<bool> ended{false};
  Status result;  // written by the waiter before `ended`
};
// The last migration that ended here, for a late Status or Go.
struct Ended {
  std::uint64_t id = 0;
  Status result;
  pid_t pid = -1;
};

class TargetImpl final : public MigrationTarget {
 public:
  TargetImpl(transport::Fabric& fabric, TargetCallbacks callbacks, TargetOptions options)
      : fabric_(fabric), callbacks_(std::move(callbacks)), options_(std::move(options)) {}
  ~TargetImpl() override {
    for (std::uint16_t tag : {kTagPrepare, kTagCommit, kTagStatus, kTagGo, kTagAbort}) {
      fabric_.Handle(tag, [](const transport::Message&) -> Result<Bytes> {
        return MakeError(Errc::kUnavailable, "this node no longer takes migrations");
      });
    }
    // A process still missing pages cannot run on without its server: it
    // dies, the server sees the exit, and the waiter tells the source.
    for (auto& run : post_copies_) {
      if (!run->ended.load(std::memory_order_acquire)) ::kill(run->running.pid, SIGKILL);
      run->waiter.join();
    }
  }
  TargetImpl(const TargetImpl&) = delete;
  TargetImpl& operator=(const TargetImpl&) = delete;

  void RegisterHandlers() {
    fabric_.Handle(kTagPrepare, [this](const transport::Message& m) { return OnPrepare(m); });
    fabric_.Handle(kTagCommit, [this](const transport::Message& m) { return OnCommit(m); });
    fabric_.Handle(kTagStatus, [this](const transport::Message& m) { return OnStatus(m); });
    fabric_.Handle(kTagGo, [this](const transport::Message& m) { return OnGo(m); });
    fabric_.Handle(kTagAbort, [this](const transport::Message& m) { return OnAbort(m); });
  }

  // Best effort: without a spare the next post-copy opens its own.
  void OpenSparePageFabric() {
    if (!options_.page_fabric || spare_page_fabric_) return;
    if (auto opened = options_.page_fabric()) spare_page_fabric_ = std::move(*opened);
  }

  Status EnsureStaging(std::uint64_t bytes) {
    if (staging_ && staging_->size() >= bytes) return Ok();
    const std::size_t granule = std::max(options_.staging_granule, ckpt::kPageSize);
    const std::uint64_t want =
        (std::max<std::uint64_t>(bytes, 1) + granule - 1) / granule * granule;
    // The old region goes first: two at once could be more than the node has.
    staging_.reset();
    packed_key_.clear();
    // Faulted in by Allocate, not while a process is frozen at the source
    // (first touch is slow on a ballooned VM).
    ROAM_ASSIGN_OR_RETURN(staging_, fabric_.Allocate(want));
    ++allocations_;
    ROAM_ASSIGN_OR_RETURN(const Bytes key, staging_->PackKey());
    packed_key_.assign(reinterpret_cast<const char*>(key.data()), key.size());
    return Ok();
  }

  bool RunPending() override;
  bool HasPending() const override {
    for (const auto& run : post_copies_) {
      if (run->ended.load(std::memory_order_acquire)) return true;
    }
    return current_ && (current_->state == State::kCommitted ||
                        (current_->state == State::kPrepared && Clock::now() > current_->expires));
  }
  std::size_t post_copies() const override { return post_copies_.size(); }
  void Serve(const std::function<bool()>& stop) override {
    while (!stop()) {
      RunPending();
      (void)transport::ProgressUntil(
          fabric_, [&] { return stop() || HasPending(); }, std::chrono::milliseconds(50));
    }
  }
  std::size_t staging_capacity() const override { return staging_ ? staging_->size() : 0; }
  std::size_t staging_allocations() const override { return allocations_; }

 private:
  Result<Bytes> OnPrepare(const transport::Message& m);
  Result<Bytes> OnCommit(const transport::Message& m);
  Result<Bytes> OnStatus(const transport::Message& m);
  Result<Bytes> OnGo(const transport::Message& m);
  Result<Bytes> OnAbort(const transport::Message& m);

  void Restore();
  // The process runs: its page server goes on on a waiter thread.
  void StartPostCopy(const Running& running, std::shared_ptr<ckpt::LazyPageServer> server,
                     std::unique_ptr<RemotePageSource> remote);
  bool ReapPostCopies();
  Status WaitForGo(pid_t pid);
  Result<wire::Phase> AskOutcome();
  void End(Status result, pid_t pid);

  Result<Migration*> Find(std::uint64_t id) {
    if (!current_ || current_->arrival.migration_id != id) {
      return MakeError(Errc::kNotFound, "no migration {} under way here", id);
    }
    return &*current_;
  }

  transport::Fabric& fabric_;
  TargetCallbacks callbacks_;
  TargetOptions options_;
  std::unique_ptr<transport::MemoryRegion> staging_;
  // The next post-copy's page fabric, opened ahead (options_.page_fabric).
  std::unique_ptr<transport::Fabric> spare_page_fabric_;
  std::string packed_key_;
  std::size_t allocations_ = 0;
  std::optional<Migration> current_;
  Ended ended_;
  std::vector<std::unique_ptr<PostCopyRun>> post_copies_;
};

Result<Bytes> TargetImpl::OnPrepare(const transport::Message& m) {
  ROAM_ASSIGN_OR_RETURN(wire::Prepare p, wire::DecodePrepare(m.payload));
  if (p.migration_id == 0) return MakeError(Errc::kInvalidArgument, "migration id 0");
  if (current_) {
    if (current_->state != State::kPrepared || Clock::now() <= current_->expires) {
      return MakeError(Errc::kResourceExhausted, "busy with migration {}",
                       current_->arrival.migration_id);
    }
    End(MakeError(Errc::kTimeout, "no commit within {} ms", options_.commit_timeout.count()), -1);
  }
  if (p.post_copy && !options_.page_fabric) {
    return MakeError(Errc::kUnsupported, "this node takes no post-copy (no page fabric)");
  }
  Arrival arrival{p.migration_id, p.page_bytes, std::move(p.guest),
                  p.post_copy ? MigrationMode::kPostCopy : MigrationMode::kStopCopy};
  if (callbacks_.accept) ROAM_TRY(callbacks_.accept(arrival));
  if (!p.post_copy) ROAM_TRY(EnsureStaging(p.page_bytes));
  current_.emplace();
  current_->arrival = std::move(arrival);
  current_->source_address = std::move(p.source_address);
  current_->expires = DeadlineAfter(options_.commit_timeout);
  if (p.post_copy) return wire::Encode(wire::Prepared{"", 0});
  return wire::Encode(wire::Prepared{packed_key_, staging_->size()});
}

Result<Bytes> TargetImpl::OnCommit(const transport::Message& m) {
  ROAM_ASSIGN_OR_RETURN(wire::Commit c, wire::DecodeCommit(m.payload));
  ROAM_ASSIGN_OR_RETURN(Migration * mig, Find(c.migration_id));
  if (mig->state != State::kPrepared) {
    return MakeError(Errc::kProtocol, "migration {}: commit twice", c.migration_id);
  }
  const bool post_copy = mig->arrival.mode == MigrationMode::kPostCopy;
  if (c.post_copy != post_copy) {
    return MakeError(Errc::kProtocol, "migration {}: prepared {}post-copy, committed {}",
                     c.migration_id, post_copy ? "" : "not ", c.post_copy ? "post-copy" : "not");
  }
  if (!post_copy && c.staging_end > staging_->size()) {
    return MakeError(Errc::kCorrupt, "migration {}: runs up to {} bytes in a staging of {}",
                     c.migration_id, c.staging_end, staging_->size());
  }
  // Refused here, before anything is restored: the source resumes.
  auto meta = ckpt::DecodeImageMeta(std::as_bytes(std::span(c.image)));
  if (!meta) {
    Error e = meta.error().WithContext(fmt::format("migration {}", c.migration_id));
    End(e, -1);
    return e;
  }
  if (Status compatible = ckpt::CheckCompatibility(*meta); !compatible) {
    End(compatible, -1);
    return compatible.error();
  }
  mig->meta = std::move(*meta);
  mig->arrival.page_bytes = c.page_bytes;
  mig->commit = std::move(c);
  mig->state = State::kCommitted;
  return wire::EncodePhase(wire::Phase::kCommitted);
}

Result<Bytes> TargetImpl::OnStatus(const transport::Message& m) {
  ROAM_ASSIGN_OR_RETURN(const wire::Query q, wire::DecodeQuery(m.payload));
  if (current_ && current_->arrival.migration_id == q.migration_id) {
    switch (current_->state) {
      case State::kPrepared:
        return wire::EncodePhase(wire::Phase::kPrepared);
      case State::kCommitted:
      case State::kRestoring:
        return wire::EncodePhase(wire::Phase::kCommitted);
      case State::kReady:
        return wire::EncodePhase(wire::Phase::kReady, current_->pid);
      case State::kGo:
        return wire::EncodePhase(wire::Phase::kRunning, current_->pid);
      case State::kAborted:
        return wire::EncodePhase(wire::Phase::kAborted);
    }
  }
  for (const auto& run : post_copies_) {
    if (run->running.migration_id == q.migration_id) {
      return wire::EncodePhase(wire::Phase::kRunning, run->running.pid);
    }
  }
  if (ended_.id == q.migration_id && q.migration_id != 0) {
    ROAM_TRY(ended_.result);
    return wire::EncodePhase(wire::Phase::kRunning, ended_.pid);
  }
  return MakeError(Errc::kNotFound, "no migration {} here", q.migration_id);
}

Result<Bytes> TargetImpl::OnGo(const transport::Message& m) {
  ROAM_ASSIGN_OR_RETURN(const wire::Query q, wire::DecodeQuery(m.payload));
  if (current_ && current_->arrival.migration_id == q.migration_id &&
      (current_->state == State::kReady || current_->state == State::kGo)) {
    current_->state = State::kGo;
    return wire::EncodePhase(wire::Phase::kRunning, current_->pid);
  }
  if (ended_.id == q.migration_id && q.migration_id != 0 && ended_.result.has_value()) {
    return wire::EncodePhase(wire::Phase::kRunning, ended_.pid);
  }
  return MakeError(Errc::kProtocol, "go for migration {}, which is not ready here", q.migration_id);
}

Result<Bytes> TargetImpl::OnAbort(const transport::Message& m) {
  ROAM_ASSIGN_OR_RETURN(const wire::Query q, wire::DecodeQuery(m.payload));
  ROAM_ASSIGN_OR_RETURN(Migration * mig, Find(q.migration_id));
  switch (mig->state) {
    case State::kPrepared:
    case State::kCommitted:
      End(MakeError(Errc::kCancelled, "aborted by the source"), -1);
      break;
    case State::kReady:
      mig->state = State::kAborted;  // WaitForGo ends the restore
      break;
    case State::kRestoring:  // not served while restoring
    case State::kAborted:
      break;
    case State::kGo:
      return MakeError(Errc::kProtocol, "abort of migration {} after go", q.migration_id);
  }
  return wire::EncodePhase(wire::Phase::kAborted);
}

void TargetImpl::End(Status result, pid_t pid) {
  if (!current_) return;
  if (!result && callbacks_.on_failed) callbacks_.on_failed(current_->arrival, result.error());
  ended_ = Ended{current_->arrival.migration_id, std::move(result), pid};
  current_.reset();
}

bool TargetImpl::ReapPostCopies() {
  bool reaped = false;
  for (std::size_t i = 0; i < post_copies_.size();) {
    PostCopyRun& run = *post_copies_[i];
    if (!run.ended.load(std::memory_order_acquire)) {
      ++i;
      continue;
    }
    run.waiter.join();
    const Running running = run.running;
    const Status result = run.result;
    post_copies_.erase(post_copies_.begin() + static_cast<std::ptrdiff_t>(i));
    if (callbacks_.on_post_copy_end) callbacks_.on_post_copy_end(running, result);
    reaped = true;
  }
  return reaped;
}

void TargetImpl::StartPostCopy(const Running& running, std::shared_ptr<ckpt::LazyPageServer> server,
                               std::unique_ptr<RemotePageSource> remote) {
  auto run = std::make_unique<PostCopyRun>();
  run->running = running;
  run->server = std::move(server);
  run->remote = std::move(remote);
  PostCopyRun* raw = run.get();
  // From here the server's thread alone uses the page fabric until Wait
  // returns; then this waiter does (the join is the hand-over).
  raw->waiter = std::thread([raw] {
    auto stats = raw->server->Wait();
    wire::PagesDone done;
    done.migration_id = raw->running.migration_id;
    done.complete = stats.has_value();
    if (stats) {
      done.pages_on_fault = stats->pages_on_fault;
      done.pages_streamed = stats->pages_streamed;
      done.faults = stats->faults;
      done.zero_pages = stats->zero_pages;
      raw->result = Ok();
    } else {
      done.error = stats.error().ToString();
      raw->result = stats.error().WithContext("post-copy: the process was killed here");
    }
    // Best effort: a source that cannot be told drops its copy when its
    // post_copy_timeout ends, or when it notices this node is gone. The
    // named fault: PagesDone is never sent, as when this node dies with
    // the process.
    if (!FaultInjected("migrate-target-no-done")) (void)raw->remote->SendDone(done);
    raw->remote.reset();  // the page fabric, on the thread that used it last
    raw->ended.store(true, std::memory_order_release);
  });
  post_copies_.push_back(std::move(run));
}

bool TargetImpl::RunPending() {
  const bool reaped = ReapPostCopies();
  if (!current_) return reaped;
  if (current_->state == State::kPrepared && Clock::now() > current_->expires) {
    End(MakeError(Errc::kTimeout, "no commit within {} ms", options_.commit_timeout.count()), -1);
    return true;
  }
  if (current_->state != State::kCommitted) return reaped;
  Restore();
  return true;
}

Result<wire::Phase> TargetImpl::AskOutcome() {
  const std::string& address = current_->source_address;
  ROAM_ASSIGN_OR_RETURN(auto source, fabric_.Connect(std::as_bytes(std::span(address))));
  ROAM_ASSIGN_OR_RETURN(
      const Bytes reply,
      transport::RequestBlocking(fabric_, *source, kTagOutcome,
                                 wire::Encode(wire::Query{current_->arrival.migration_id}),
                                 options_.outcome_timeout));
  ROAM_ASSIGN_OR_RETURN(const wire::PhaseReply phase, wire::DecodePhase(reply));
  return phase.phase;
}

Status TargetImpl::WaitForGo(pid_t pid) {
  current_->pid = pid;
  current_->state = State::kReady;
  // Two rounds: a source still deciding (IN_PROGRESS) gets one more wait.
  for (int round = 0; round < 2; ++round) {
    (void)transport::ProgressUntil(
        fabric_,
        [this] { return current_->state == State::kGo || current_->state == State::kAborted; },
        options_.go_timeout);
    if (current_->state == State::kGo) return Ok();
    if (current_->state == State::kAborted) {
      return MakeError(Errc::kCancelled, "aborted by the source");
    }
    // No Go: only the source knows whether its copy is gone.
    auto outcome = AskOutcome();
    if (current_->state == State::kGo) return Ok();  // arrived meanwhile
    if (!outcome) {
      return outcome.error().WithContext("no go from the source, and no outcome: dropped");
    }
    if (*outcome == wire::Phase::kMoved) {
      current_->state = State::kGo;
      return Ok();
    }
    if (*outcome != wire::Phase::kInProgress) {
      return MakeError(Errc::kCancelled, "the source says {}: dropped", wire::PhaseName(*outcome));
    }
  }
  return MakeError(Errc::kTimeout, "no go from the source: dropped");
}

void TargetImpl::Restore() {
  Migration& mig = *current_;
  mig.state = State::kRestoring;
  RestoreSetup setup;
  if (callbacks_.restore_setup) {
    auto got = callbacks_.restore_setup(mig.arrival);
    if (!got) return End(got.error(), -1);
    setup = std::move(*got);
  }
  ckpt::RestoreOptions restore;
  // One of the two is set: the pages come from the source (post-copy) or
  // lie in the staging.
  std::unique_ptr<RemotePageSource> remote;
  std::unique_ptr<StagedRuns> staged;
  if (mig.arrival.mode == MigrationMode::kPostCopy) {
    // The pages are still in the frozen source; most are asked for after
    // the process resumed.
    std::unique_ptr<transport::Fabric> fabric = std::move(spare_page_fabric_);
    if (!fabric) {
      auto opened = options_.page_fabric();
      if (!opened) return End(opened.error().WithContext("post-copy: page fabric"), -1);
      fabric = std::move(*opened);
    }
    RemotePageSource::Options remote_options;
    remote_options.stream_pages = options_.stream_request_pages;
    remote_options.in_flight = options_.stream_requests_in_flight;
    remote_options.timeout = options_.page_timeout;
    auto created =
        RemotePageSource::Create(std::move(fabric), std::as_bytes(std::span(mig.source_address)),
                                 mig.arrival.migration_id, mig.commit.extent, remote_options);
    if (!created) return End(created.error().WithContext("post-copy"), -1);
    remote = std::move(*created);
    restore.lazy = true;
  } else {
    // The pages lie where the source put them; the run table says where.
    auto created = StagedRuns::Create(staging_->bytes(), mig.commit.runs);
    if (!created) return End(created.error(), -1);
    staged = std::move(*created);
  }
  ckpt::PageSource& pages = remote ? static_cast<ckpt::PageSource&>(*remote) : *staged;

  restore.pid_namespace = true;
  restore.init_ends_with_restorer = setup.init_ends_with_restorer;
  restore.stdio = setup.stdio;
  ckpt::RestoreHooks hooks;
  hooks.before_pages = setup.before_pages;
  hooks.before_resume = [this, &setup](pid_t pid) -> Status {
    if (setup.before_resume) ROAM_TRY(setup.before_resume(pid));
    return WaitForGo(pid);
  };
  auto restored = ckpt::Restore(mig.meta, pages, restore, hooks);
  if (!restored) {
    return End(restored.error().WithContext(
                   fmt::format("migration {}: restore", mig.arrival.migration_id)),
               -1);
  }
  Running running{mig.arrival.migration_id, restored->pid, restored->init_pid, mig.arrival.guest};
  End(Ok(), restored->pid);
  if (callbacks_.on_running) callbacks_.on_running(running);
  if (remote) {
    OpenSparePageFabric();
    if (restored->post_copy) {
      StartPostCopy(running, std::move(restored->post_copy), std::move(remote));
    } else {
      // No userfaultfd here: the restore read every page before the
      // process ran (see RestoreOptions::lazy); the source may drop it.
      (void)remote->SendDone(wire::PagesDone{running.migration_id, true, {}, 0, 0, 0, 0});
      if (callbacks_.on_post_copy_end) callbacks_.on_post_copy_end(running, Ok());
    }
  }
}

}  // namespace

Result<std::unique_ptr<MigrationTarget>> MigrationTarget::Create(transport::Fabric& fabric,
                                                                 TargetCallbacks callbacks,
                                                                 const TargetOptions& options) {
  auto target = std::make_unique<TargetImpl>(fabric, std::move(callbacks), options);
  if (options.initial_staging_bytes > 0)
    ROAM_TRY(target->EnsureStaging(options.initial_staging_bytes));
  target->OpenSparePageFabric();
  target->RegisterHandlers();
  return std::unique_ptr<MigrationTarget>(std::move(target));
}

}  // namespace roam::migrate
