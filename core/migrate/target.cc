// The target side of a stop-copy migration (migration.h). Handlers run
// inside the fabric's Progress and only check, record and answer; the
// restore runs in RunPending, outside Progress, because it waits for the
// source's Go in before_resume, progressing the same fabric: a handler that
// waited there would never see the message it waits for.
#include <sys/mman.h>

#include <optional>
#include <utility>

#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/image_dir.h"
#include "core/migrate/staged_runs.h"
#include "core/migrate/wire.h"
#include "roam/base/deadline.h"
#include "roam/ckpt/restore.h"
#include "roam/migrate/migration.h"

namespace roam::migrate {
namespace {

using Clock = std::chrono::steady_clock;
using transport::Bytes;
using transport::ByteView;

ByteView View(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

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
// The last migration that ended here, for a late Status or Go.
struct Ended {
  std::uint64_t id = 0;
  Status result;
  pid_t pid = -1;
};

class TargetImpl final : public MigrationTarget {
 public:
  TargetImpl(transport::Fabric& fabric, TargetCallbacks callbacks, const TargetOptions& options)
      : fabric_(fabric), callbacks_(std::move(callbacks)), options_(options) {}
  ~TargetImpl() override {
    for (std::uint16_t tag : {kTagPrepare, kTagCommit, kTagStatus, kTagGo, kTagAbort}) {
      fabric_.Handle(tag, [](const transport::Message&) -> Result<Bytes> {
        return MakeError(Errc::kUnavailable, "this node no longer takes migrations");
      });
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

  Status EnsureStaging(std::uint64_t bytes) {
    if (staging_ && staging_->size() >= bytes) return Ok();
    const std::size_t granule = std::max<std::size_t>(options_.staging_granule, 4096);
    const std::uint64_t want =
        (std::max<std::uint64_t>(bytes, 1) + granule - 1) / granule * granule;
    // The old region goes first: two at once could be more than the node has.
    staging_.reset();
    packed_key_.clear();
    ROAM_ASSIGN_OR_RETURN(staging_, fabric_.Allocate(want));
    ++allocations_;
    // Faulted in now, not while a process is frozen at the source (first
    // touch is slow on a ballooned VM). Best effort: EINVAL before 5.14.
    (void)::madvise(staging_->data(), staging_->size(), MADV_POPULATE_WRITE);
    ROAM_ASSIGN_OR_RETURN(const Bytes key, staging_->PackKey());
    packed_key_.assign(reinterpret_cast<const char*>(key.data()), key.size());
    return Ok();
  }

  bool RunPending() override;
  bool HasPending() const override {
    return current_ && (current_->state == State::kCommitted ||
                        (current_->state == State::kPrepared && Clock::now() > current_->expires));
  }
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
  std::string packed_key_;
  std::size_t allocations_ = 0;
  std::optional<Migration> current_;
  Ended ended_;
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
  Arrival arrival{p.migration_id, p.page_bytes, std::move(p.guest)};
  if (callbacks_.accept) ROAM_TRY(callbacks_.accept(arrival));
  ROAM_TRY(EnsureStaging(p.page_bytes));
  current_.emplace();
  current_->arrival = std::move(arrival);
  current_->source_address = std::move(p.source_address);
  current_->expires = DeadlineAfter(options_.commit_timeout);
  return wire::Encode(wire::Prepared{packed_key_, staging_->size()});
}

Result<Bytes> TargetImpl::OnCommit(const transport::Message& m) {
  ROAM_ASSIGN_OR_RETURN(wire::Commit c, wire::DecodeCommit(m.payload));
  ROAM_ASSIGN_OR_RETURN(Migration * mig, Find(c.migration_id));
  if (mig->state != State::kPrepared) {
    return MakeError(Errc::kProtocol, "migration {}: commit twice", c.migration_id);
  }
  if (c.staging_end > staging_->size()) {
    return MakeError(Errc::kCorrupt, "migration {}: runs up to {} bytes in a staging of {}",
                     c.migration_id, c.staging_end, staging_->size());
  }
  // Refused here, before anything is restored: the source resumes.
  auto meta = ckpt::DecodeImageMeta(View(c.image));
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

bool TargetImpl::RunPending() {
  if (!current_) return false;
  if (current_->state == State::kPrepared && Clock::now() > current_->expires) {
    End(MakeError(Errc::kTimeout, "no commit within {} ms", options_.commit_timeout.count()), -1);
    return true;
  }
  if (current_->state != State::kCommitted) return false;
  Restore();
  return true;
}

Result<wire::Phase> TargetImpl::AskOutcome() {
  const std::string& address = current_->source_address;
  ROAM_ASSIGN_OR_RETURN(
      auto source,
      fabric_.Connect({reinterpret_cast<const std::byte*>(address.data()), address.size()}));
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
  // The pages lie where the source put them; the run table says where.
  auto pages = StagedRuns::Create(staging_->bytes(), mig.commit.runs);
  if (!pages) return End(pages.error(), -1);

  ckpt::RestoreOptions restore;
  restore.pid_namespace = true;
  restore.init_ends_with_restorer = setup.init_ends_with_restorer;
  restore.stdio = setup.stdio;
  ckpt::RestoreHooks hooks;
  hooks.before_pages = setup.before_pages;
  hooks.before_resume = [this, &setup](pid_t pid) -> Status {
    if (setup.before_resume) ROAM_TRY(setup.before_resume(pid));
    return WaitForGo(pid);
  };
  auto restored = ckpt::Restore(mig.meta, **pages, restore, hooks);
  if (!restored) {
    return End(restored.error().WithContext(
                   fmt::format("migration {}: restore", mig.arrival.migration_id)),
               -1);
  }
  Running running{mig.arrival.migration_id, restored->pid, restored->init_pid, mig.arrival.guest};
  End(Ok(), restored->pid);
  if (callbacks_.on_running) callbacks_.on_running(running);
}

}  // namespace

Result<std::unique_ptr<MigrationTarget>> MigrationTarget::Create(transport::Fabric& fabric,
                                                                 TargetCallbacks callbacks,
                                                                 const TargetOptions& options) {
  auto target = std::make_unique<TargetImpl>(fabric, std::move(callbacks), options);
  if (options.initial_staging_bytes > 0)
    ROAM_TRY(target->EnsureStaging(options.initial_staging_bytes));
  target->RegisterHandlers();
  return std::unique_ptr<MigrationTarget>(std::move(target));
}

}  // namespace roam::migrate
