// The source side of a stop-copy migration (migration.h): Prepare, the
// capture into the target's staging through PutPageSink, Commit and the
// wait for READY inside the capture's commit callback (the process still
// frozen), then Go once the capture killed the original.
#include <sys/mman.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/image_dir.h"
#include "core/ckpt/image/page_store.h"
#include "core/migrate/put_page_sink.h"
#include "core/migrate/sent_pages.h"
#include "core/migrate/wire.h"
#include "roam/base/deadline.h"
#include "roam/ckpt/capture.h"
#include "roam/migrate/migration.h"

namespace roam::migrate {
namespace {

using Clock = std::chrono::steady_clock;
using transport::Bytes;
using transport::ByteView;

std::uint64_t NsSince(Clock::time_point t) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t).count());
}

ByteView View(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// The process's anonymous resident memory (RssAnon), what a capture puts at
// most, zero pages apart (copied-on-write file pages count as anonymous).
Result<std::uint64_t> AnonymousBytes(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/status";
  std::ifstream in(path);
  if (!in) return MakeError(Errc::kNotFound, "no process {} ({} unreadable)", pid, path);
  for (std::string line; std::getline(in, line);) {
    std::uint64_t kib = 0;
    if (std::sscanf(line.c_str(), "RssAnon: %" SCNu64 " kB", &kib) == 1) return kib * 1024;
  }
  return MakeError(Errc::kNotFound, "process {} has no RssAnon (a zombie or kernel thread?)", pid);
}

// A named fault-injection point: true when $ROAM_FAULT names it (criu's
// CRIU_FAULT). "migrate-source-no-go": the Go after a kill is lost, as in a
// partition right after READY.
bool FaultInjected(std::string_view point) {
  const char* fault = std::getenv("ROAM_FAULT");
  return fault != nullptr && point == fault;
}

// Outcomes the target may ask about, oldest dropped first.
class OutcomeLedger final {
 public:
  explicit OutcomeLedger(std::size_t keep) : keep_(keep) {}
  void Set(std::uint64_t id, wire::Phase phase) {
    if (outcomes_.emplace(id, phase).second) {
      order_.push_back(id);
      if (order_.size() > keep_) {
        outcomes_.erase(order_.front());
        order_.pop_front();
      }
    } else {
      outcomes_[id] = phase;
    }
  }
  wire::Phase Get(std::uint64_t id) const {
    auto it = outcomes_.find(id);
    return it == outcomes_.end() ? wire::Phase::kUnknown : it->second;
  }

 private:
  std::size_t keep_;
  std::map<std::uint64_t, wire::Phase> outcomes_;
  std::deque<std::uint64_t> order_;
};

Result<wire::PhaseReply> Ask(transport::Fabric& fabric, transport::Endpoint& ep, std::uint16_t tag,
                             ByteView payload, std::chrono::milliseconds timeout) {
  ROAM_ASSIGN_OR_RETURN(const Bytes reply,
                        transport::RequestBlocking(fabric, ep, tag, payload, timeout));
  return wire::DecodePhase(reply);
}

class SourceImpl final : public MigrationSource {
 public:
  SourceImpl(transport::Fabric& fabric, const SourceOptions& options)
      : fabric_(fabric),
        options_(options),
        ledger_(std::make_shared<OutcomeLedger>(options.outcomes_kept)) {
    fabric_.Handle(kTagOutcome, [ledger = ledger_](const transport::Message& m) -> Result<Bytes> {
      ROAM_ASSIGN_OR_RETURN(const wire::Query q, wire::DecodeQuery(m.payload));
      return wire::EncodePhase(ledger->Get(q.migration_id));
    });
  }
  ~SourceImpl() override {
    // Nothing remembers outcomes any more: a target that asks drops its copy.
    fabric_.Handle(kTagOutcome, [](const transport::Message&) -> Result<Bytes> {
      return wire::EncodePhase(wire::Phase::kUnknown);
    });
  }
  SourceImpl(const SourceImpl&) = delete;
  SourceImpl& operator=(const SourceImpl&) = delete;

  Result<MigrationReport> MigrateOut(transport::Endpoint& target, pid_t pid,
                                     const MigrateOptions& options) override;
  std::size_t ring_allocations() const override { return ring_allocations_; }

  Status EnsureRing() {
    if (ring_) return Ok();
    ROAM_ASSIGN_OR_RETURN(ring_, fabric_.Allocate(options_.ring_bytes));
    ++ring_allocations_;
    // Faulted in now, not while a process is frozen (first touch of fresh
    // memory is slow on a ballooned VM). Best effort: EINVAL before 5.14.
    (void)::madvise(ring_->data(), ring_->size(), MADV_POPULATE_WRITE);
    return Ok();
  }
  // Best effort: the target drops what it staged or restored.
  void SendAbort(transport::Endpoint& target, std::uint64_t id, std::chrono::milliseconds timeout) {
    if (!target.status().has_value()) return;
    (void)transport::RequestBlocking(fabric_, target, kTagAbort, wire::Encode(wire::Query{id}),
                                     timeout);
  }
  Result<MigrationReport> Run(transport::Endpoint& target, pid_t pid,
                              const MigrateOptions& options);

  transport::Fabric& fabric_;
  SourceOptions options_;
  std::shared_ptr<OutcomeLedger> ledger_;
  std::unique_ptr<transport::MemoryRegion> ring_;
  std::size_t ring_allocations_ = 0;
};

Result<MigrationReport> SourceImpl::MigrateOut(transport::Endpoint& target, pid_t pid,
                                               const MigrateOptions& options) {
  if (options.migration_id == 0) return MakeError(Errc::kInvalidArgument, "migration id 0");
  ledger_->Set(options.migration_id, wire::Phase::kInProgress);
  auto report = Run(target, pid, options);
  if (!report) {
    // Whatever failed, the capture resumed the process (or never froze it).
    ledger_->Set(options.migration_id, wire::Phase::kSourceKept);
    SendAbort(target, options.migration_id, std::chrono::milliseconds(1000));
    return report.error().WithContext(
        fmt::format("migration {} of pid {} to {}", options.migration_id, pid, target.peer()));
  }
  return report;
}

Result<MigrationReport> SourceImpl::Run(transport::Endpoint& target, pid_t pid,
                                        const MigrateOptions& options) {
  const Clock::time_point started = Clock::now();
  const std::uint64_t id = options.migration_id;
  ROAM_TRY(target.status());
  ROAM_TRY(EnsureRing());
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t anonymous, AnonymousBytes(pid));
  const bool pre_copy = options.mode == MigrationMode::kPreCopy;
  std::optional<ckpt::PreCopy> tracking;
  if (pre_copy) {
    // Before Prepare: a kernel that cannot track refuses before the target
    // staged anything.
    ROAM_ASSIGN_OR_RETURN(tracking, ckpt::PreCopy::Start(pid));
  }
  ROAM_ASSIGN_OR_RETURN(const Bytes address, fabric_.Address());

  // 1. Prepare: the target accepts (or refuses) and sizes its staging.
  wire::Prepare prepare{id, anonymous * (pre_copy ? 2 : 1) + options.headroom_bytes, options.guest,
                        std::string(reinterpret_cast<const char*>(address.data()), address.size())};
  ROAM_ASSIGN_OR_RETURN(const Bytes prepared_bytes,
                        transport::RequestBlocking(fabric_, target, kTagPrepare,
                                                   wire::Encode(prepare), options.prepare_timeout));
  ROAM_ASSIGN_OR_RETURN(const wire::Prepared prepared, wire::DecodePrepared(prepared_bytes));
  ROAM_ASSIGN_OR_RETURN(auto staging, target.UnpackKey(View(prepared.staging_key)));
  if (prepared.capacity > staging->length()) {
    return MakeError(Errc::kProtocol, "target offered {} bytes of staging in a region of {}",
                     prepared.capacity, staging->length());
  }

  // 2. Capture into the target's staging; 3. commit while frozen.
  SentPages sent;
  PutPageSink sink(fabric_, target, *staging, prepared.capacity, ring_->bytes(),
                   PutPageSink::Options{.sent = &sent,
                                        .timeout = options.io_timeout,
                                        .expected_bytes = anonymous,
                                        .progress = options.progress});
  MigrationReport report;
  const auto commit = [&](const image::Image& meta) -> Status {
    wire::Commit c{id, ckpt::EncodeImageMeta(meta), sink.runs(), 0};
    const Bytes message = wire::Encode(c);
    if (message.size() > transport::kMaxMessageBytes) {
      return MakeError(Errc::kResourceExhausted,
                       "metadata and run table of {} bytes exceed a message ({} runs)",
                       message.size(), c.runs.size());
    }
    const Clock::time_point commit_sent = Clock::now();
    ROAM_ASSIGN_OR_RETURN(const wire::PhaseReply committed,
                          Ask(fabric_, target, kTagCommit, message, options.io_timeout));
    if (committed.phase != wire::Phase::kCommitted) {
      return MakeError(Errc::kProtocol, "target answered commit with {}",
                       wire::PhaseName(committed.phase));
    }
    // The restore runs outside the target's Progress: a Status request
    // waits there until the process is stopped before its first
    // instruction (READY) or the restore failed (its error comes back).
    const Clock::time_point deadline = DeadlineAfter(options.restore_timeout);
    const Bytes query = wire::Encode(wire::Query{id});
    while (true) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        return MakeError(Errc::kTimeout, "target not ready within {} ms",
                         options.restore_timeout.count());
      }
      ROAM_ASSIGN_OR_RETURN(const wire::PhaseReply status,
                            Ask(fabric_, target, kTagStatus, query, left));
      if (status.phase == wire::Phase::kReady) {
        report.target_pid = static_cast<pid_t>(status.pid);
        report.restore_ns = NsSince(commit_sent);
        return Ok();
      }
      if (status.phase != wire::Phase::kCommitted) {
        return MakeError(Errc::kProtocol, "target answered status with {}",
                         wire::PhaseName(status.phase));
      }
      // Queued but not started: the next answer comes after the restore.
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  };
  image::Image meta;
  ckpt::CaptureOptions capture_options;
  capture_options.leave_running = false;
  if (pre_copy) {
    for (int round = 0; round < std::max(options.max_rounds, 1); ++round) {
      // Rounds append what changed to the staging: another round only
      // while it and the final pass (at worst all of the process again)
      // still fit; a process that rewrites its memory faster than it
      // moves ends its rounds early rather than fail.
      if (round > 0) {
        auto now = AnonymousBytes(pid);
        if (!now || sink.bytes_sent() + 2 * *now + options.headroom_bytes > prepared.capacity) {
          break;
        }
      }
      sink.StartPass(PutPageSink::Pass::kRound);
      ROAM_ASSIGN_OR_RETURN(const ckpt::PreCopy::Round copied, tracking->CopyRound());
      // PageStore::ForEach only reads (PageSource's interface is not const).
      auto& store = const_cast<ckpt::PageStore&>(tracking->store());
      ROAM_TRY(store.ForEach([&](std::uint64_t vaddr, std::span<const std::byte> pages) {
        return sink.Add(vaddr, pages);
      }));
      ++report.rounds;
      if (options.on_round) options.on_round(round);
      if (round > 0 && copied.pages_read < options.enough_pages) break;
    }
    sink.StartPass(PutPageSink::Pass::kFinal);
    capture_options.pre_copy = &*tracking;
  }
  const std::uint64_t before_freeze = sink.bytes_sent();
  ROAM_ASSIGN_OR_RETURN(const ckpt::CaptureStats captured,
                        ckpt::Capture(pid, capture_options, &meta, sink, commit));
  const Clock::time_point killed = Clock::now();

  // 4. The original is gone: the target's copy may run.
  ledger_->Set(id, wire::Phase::kMoved);
  if (!FaultInjected("migrate-source-no-go")) {
    auto go = Ask(fabric_, target, kTagGo, wire::Encode(wire::Query{id}), options.io_timeout);
    report.go_acknowledged = go.has_value() && go->phase == wire::Phase::kRunning;
  }
  report.frozen_ns = captured.frozen_ns;
  report.downtime_ns = captured.frozen_ns + NsSince(killed);
  report.total_ns = NsSince(started);
  report.bytes_sent = sink.bytes_sent();
  report.bytes_sent_frozen = sink.bytes_sent() - before_freeze;
  report.pages = captured.pages_written;
  report.runs = sink.runs().size();
  return report;
}

}  // namespace

Result<std::unique_ptr<MigrationSource>> MigrationSource::Create(transport::Fabric& fabric,
                                                                 const SourceOptions& options) {
  if (options.ring_bytes < ckpt::kPageSize || options.ring_bytes % ckpt::kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument, "send ring of {} bytes is not whole pages",
                     options.ring_bytes);
  }
  auto source = std::make_unique<SourceImpl>(fabric, options);
  if (options.allocate_now) ROAM_TRY(source->EnsureRing());
  return std::unique_ptr<MigrationSource>(std::move(source));
}

Result<MigrationReport> MigrateOut(transport::Fabric& fabric, transport::Endpoint& target,
                                   pid_t pid, const MigrateOptions& options) {
  ROAM_ASSIGN_OR_RETURN(auto source, MigrationSource::Create(fabric));
  return source->MigrateOut(target, pid, options);
}

}  // namespace roam::migrate
