// The source side of a migration (migration.h). Stop-copy and pre-copy:
// Prepare, the capture into the target's staging through PutPageSink,
// Commit and the wait for READY inside the capture's commit callback (the
// process still frozen), then Go once the capture killed the original.
// Post-copy: Prepare, a capture of the metadata alone (the process stays
// frozen, its pages where they are), Commit, READY, Go, then page requests
// served from the frozen process until the target's PagesDone.
#include <sys/uio.h>

#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>

#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/image_dir.h"
#include "core/ckpt/procfs/procfs.h"
#include "core/migrate/put_page_sink.h"
#include "core/migrate/wire.h"
#include "roam/base/deadline.h"
#include "roam/base/fault_injection.h"
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

// The size of the process's private writable mappings that no file backs
// (heap, stacks, anonymous mmaps): what its anonymous memory may grow to
// without mapping more. 0 if the maps cannot be read.
std::uint64_t AnonymousMapped(pid_t pid) {
  auto maps = ckpt::procfs::ReadMaps(pid);
  if (!maps) return 0;
  std::uint64_t total = 0;
  for (const ckpt::procfs::Vma& vma : *maps) {
    const bool anonymous =
        vma.inode == 0 && (vma.path.empty() || vma.path == "[heap]" || vma.path == "[stack]");
    if (anonymous && vma.write && !vma.shared) total += vma.size();
  }
  return total;
}

// The process's anonymous resident memory (RssAnon), what a capture puts at
// most, zero pages apart (copied-on-write file pages count as anonymous).
Result<std::uint64_t> AnonymousBytes(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const ckpt::procfs::Status status, ckpt::procfs::ReadStatus(pid));
  // A zombie or a kernel thread has no memory, so no RssAnon line (read as
  // 0); a live process always holds some (its stack at least).
  if (status.rss_anon_kb == 0) {
    return MakeError(Errc::kNotFound, "process {} has no RssAnon (a zombie or kernel thread?)",
                     pid);
  }
  return status.rss_anon_kb * 1024;
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

using Ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

// The frozen source's extent as a Commit carries it: merged, and coarsened
// (the smallest gaps closed) to at most `max` ranges. A coarser extent is
// still true (a page inside may be absent), only less precise.
std::vector<wire::Run> ExtentRuns(Ranges ranges, std::size_t max) {
  std::sort(ranges.begin(), ranges.end());
  Ranges merged;
  for (const auto& r : ranges) {
    if (r.second <= r.first) continue;
    if (!merged.empty() && r.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  if (merged.size() > max && max > 0) {
    std::vector<std::uint64_t> gaps;
    for (std::size_t i = 1; i < merged.size(); ++i) {
      gaps.push_back(merged[i].first - merged[i - 1].second);
    }
    const std::size_t k = merged.size() - max - 1;
    std::nth_element(gaps.begin(), gaps.begin() + static_cast<std::ptrdiff_t>(k), gaps.end());
    const std::uint64_t close = gaps[k];
    Ranges coarse{merged.front()};
    for (std::size_t i = 1; i < merged.size(); ++i) {
      if (merged[i].first - coarse.back().second <= close) {
        coarse.back().second = merged[i].second;
      } else {
        coarse.push_back(merged[i]);
      }
    }
    merged = std::move(coarse);
  }
  std::vector<wire::Run> runs;
  runs.reserve(merged.size());
  for (const auto& [lo, hi] : merged) runs.push_back(wire::Run{lo, hi - lo, 0});
  return runs;
}

// Post-copy: what the page handlers serve while a MigrateOut has a frozen
// process.
struct PostCopyServing {
  std::uint64_t id = 0;
  ckpt::FrozenSource* frozen = nullptr;
  Ranges extent;
  std::optional<wire::PagesDone> done;
  std::uint64_t requests = 0;
  std::uint64_t bytes = 0;
  std::vector<std::byte> buffer =
      std::vector<std::byte>(std::size_t{wire::kMaxPagesPerRequest} * ckpt::kPageSize);

  // The asked pages: each part that lies in the extent read with one
  // process_vm_readv (a page the frozen process cannot read itself,
  // PROT_NONE, through FrozenSource::ReadPage), zero pages left out.
  Result<Bytes> Serve(const wire::PageRequest& request) {
    constexpr std::uint64_t kPage = ckpt::kPageSize;
    const std::uint64_t end = request.vaddr + std::uint64_t{request.pages} * kPage;
    std::vector<char> read(request.pages, 0);
    auto it = std::upper_bound(extent.begin(), extent.end(), request.vaddr,
                               [](std::uint64_t a, const auto& r) { return a < r.second; });
    for (; it != extent.end() && it->first < end; ++it) {
      const std::uint64_t lo = std::max(it->first, request.vaddr);
      const std::uint64_t hi = std::min(it->second, end);
      std::byte* at = buffer.data() + (lo - request.vaddr);
      iovec local{at, hi - lo};
      iovec remote{reinterpret_cast<void*>(lo), hi - lo};  // NOLINT(performance-no-int-to-ptr)
      const ssize_t got = process_vm_readv(frozen->pid(), &local, 1, &remote, 1, 0);
      const std::uint64_t whole = got > 0 ? static_cast<std::uint64_t>(got) / kPage * kPage : 0;
      for (std::uint64_t a = lo; a < lo + whole; a += kPage) read[(a - request.vaddr) / kPage] = 1;
      for (std::uint64_t a = lo + whole; a < hi; a += kPage) {
        const std::size_t i = (a - request.vaddr) / kPage;
        ROAM_ASSIGN_OR_RETURN(const bool present,
                              frozen->ReadPage(a, std::span(buffer.data() + i * kPage, kPage)));
        read[i] = present ? 1 : 0;
      }
    }
    wire::PageReply reply;
    reply.vaddr = request.vaddr;
    reply.pages = request.pages;
    reply.present.assign((request.pages + 7) / 8, '\0');
    for (std::uint32_t i = 0; i < request.pages; ++i) {
      const std::byte* page = buffer.data() + std::size_t{i} * kPage;
      if (read[i] == 0 || ckpt::IsZeroPage(page)) continue;
      reply.present[i / 8] = static_cast<char>(reply.present[i / 8] | (1 << (i % 8)));
      reply.data.append(reinterpret_cast<const char*>(page), kPage);
    }
    ++requests;
    bytes += reply.data.size();
    return wire::Encode(std::move(reply));
  }
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
    // Handlers run inside Progress on this thread, which is the one that
    // froze the process (and alone may kill or resume it).
    fabric_.Handle(kTagPages, [this](const transport::Message& m) -> Result<Bytes> {
      ROAM_ASSIGN_OR_RETURN(const wire::PageRequest r, wire::DecodePageRequest(m.payload));
      if (!serving_ || serving_->id != r.migration_id || serving_->done) {
        return MakeError(Errc::kNotFound, "no post-copy {} serves pages here", r.migration_id);
      }
      return serving_->Serve(r);
    });
    fabric_.Handle(kTagPagesDone, [this](const transport::Message& m) -> Result<Bytes> {
      ROAM_ASSIGN_OR_RETURN(wire::PagesDone d, wire::DecodePagesDone(m.payload));
      if (!serving_ || serving_->id != d.migration_id) {
        return MakeError(Errc::kNotFound, "no post-copy {} under way here", d.migration_id);
      }
      serving_->done = std::move(d);
      return wire::EncodePhase(wire::Phase::kMoved);
    });
  }
  ~SourceImpl() override {
    // Nothing remembers outcomes any more: a target that asks drops its copy.
    fabric_.Handle(kTagOutcome, [](const transport::Message&) -> Result<Bytes> {
      return wire::EncodePhase(wire::Phase::kUnknown);
    });
    for (std::uint16_t tag : {kTagPages, kTagPagesDone}) {
      fabric_.Handle(tag, [](const transport::Message&) -> Result<Bytes> {
        return MakeError(Errc::kUnavailable, "this node no longer serves migrations");
      });
    }
  }
  SourceImpl(const SourceImpl&) = delete;
  SourceImpl& operator=(const SourceImpl&) = delete;

  Result<MigrationReport> MigrateOut(transport::Endpoint& target, pid_t pid,
                                     const MigrateOptions& options) override;
  std::size_t ring_allocations() const override { return ring_allocations_; }

  Status EnsureRing() {
    if (ring_) return Ok();
    ROAM_ASSIGN_OR_RETURN(ring_, fabric_.Allocate(options_.ring_bytes));
    ++ring_allocations_;  // faulted in by Allocate, not while a process is frozen
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
  Result<MigrationReport> RunPostCopy(transport::Endpoint& target, pid_t pid,
                                      const MigrateOptions& options);
  // Sends `c`, then waits for READY (the target's pid into `report`).
  Status CommitAndWaitReady(transport::Endpoint& target, const MigrateOptions& options,
                            const wire::Commit& c, MigrationReport& report);
  // The source's copy is gone (or never resumes): records MOVED and tells
  // the target to go.
  void Go(transport::Endpoint& target, const MigrateOptions& options, MigrationReport& report);
  // Commit sent: asks Status until READY (the target's pid into `report`).
  Status WaitReady(transport::Endpoint& target, const MigrateOptions& options,
                   MigrationReport& report, Clock::time_point commit_sent);
  // Post-copy after Go: serves pages until PagesDone; the reason it gave
  // up otherwise.
  Status ServeUntilDone(transport::Endpoint& target, const MigrateOptions& options);

  transport::Fabric& fabric_;
  SourceOptions options_;
  std::shared_ptr<OutcomeLedger> ledger_;
  std::unique_ptr<transport::MemoryRegion> ring_;
  std::size_t ring_allocations_ = 0;
  std::unique_ptr<PostCopyServing> serving_;
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

Status SourceImpl::WaitReady(transport::Endpoint& target, const MigrateOptions& options,
                             MigrationReport& report, Clock::time_point commit_sent) {
  // The restore runs outside the target's Progress: a Status request
  // waits there until the process is stopped before its first
  // instruction (READY) or the restore failed (its error comes back).
  // Waiting progresses this fabric: post-copy page requests are served.
  const Clock::time_point deadline = DeadlineAfter(options.restore_timeout);
  const Bytes query = wire::Encode(wire::Query{options.migration_id});
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
    // Meanwhile page requests are served.
    const Clock::time_point until = Clock::now() + std::chrono::microseconds(200);
    while (Clock::now() < until) fabric_.Progress();
  }
}

Status SourceImpl::CommitAndWaitReady(transport::Endpoint& target, const MigrateOptions& options,
                                      const wire::Commit& c, MigrationReport& report) {
  const Bytes message = wire::Encode(c);
  if (message.size() > transport::kMaxMessageBytes) {
    // A post-copy commit carries no run table.
    if (c.post_copy) {
      return MakeError(Errc::kResourceExhausted, "metadata of {} bytes exceeds a message",
                       message.size());
    }
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
  return WaitReady(target, options, report, commit_sent);
}

void SourceImpl::Go(transport::Endpoint& target, const MigrateOptions& options,
                    MigrationReport& report) {
  const std::uint64_t id = options.migration_id;
  ledger_->Set(id, wire::Phase::kMoved);
  // The named fault: the Go after a kill is lost, as in a partition right
  // after READY.
  if (FaultInjected("migrate-source-no-go")) return;
  auto go = Ask(fabric_, target, kTagGo, wire::Encode(wire::Query{id}), options.io_timeout);
  report.go_acknowledged = go.has_value() && go->phase == wire::Phase::kRunning;
}

Result<MigrationReport> SourceImpl::RunPostCopy(transport::Endpoint& target, pid_t pid,
                                                const MigrateOptions& options) {
  const Clock::time_point started = Clock::now();
  const std::uint64_t id = options.migration_id;
  ROAM_TRY(target.status());
  ROAM_ASSIGN_OR_RETURN(const Bytes address, fabric_.Address());

  // 1. Prepare: the target accepts (or refuses); no staging.
  wire::Prepare prepare{id, 0, options.guest,
                        std::string(reinterpret_cast<const char*>(address.data()), address.size()),
                        /*post_copy=*/true};
  ROAM_ASSIGN_OR_RETURN(const Bytes prepared_bytes,
                        transport::RequestBlocking(fabric_, target, kTagPrepare,
                                                   wire::Encode(prepare), options.prepare_timeout));
  ROAM_TRY(wire::DecodePrepared(prepared_bytes));

  // 2. Freeze and record all but the pages; the process stays frozen, and
  // is resumed by `frozen`'s destructor on any return before MOVED.
  image::Image meta;
  ckpt::CaptureStats captured;
  ROAM_ASSIGN_OR_RETURN(std::unique_ptr<ckpt::FrozenSource> frozen,
                        ckpt::CaptureAsSource(pid, &meta, &captured));
  const Clock::time_point captured_at = Clock::now();
  serving_ = std::make_unique<PostCopyServing>();
  serving_->id = id;
  serving_->frozen = frozen.get();
  // Leaves nothing for the handlers once this returns, whichever way.
  struct EndServing {
    std::unique_ptr<PostCopyServing>& serving;
    ~EndServing() { serving.reset(); }
  } end_serving{serving_};
  // A quarter of the run table's bound: the metadata shares the message.
  const std::vector<wire::Run> extent =
      ExtentRuns(frozen->Extent().value_or(Ranges{}), wire::kMaxRuns / 4);
  for (const wire::Run& r : extent) serving_->extent.emplace_back(r.vaddr, r.vaddr + r.bytes);

  // 3. Commit; the restore asks for the pages it needs before the process
  // runs (served while waiting for READY).
  MigrationReport report;
  wire::Commit c;
  c.migration_id = id;
  c.image = ckpt::EncodeImageMeta(meta);
  c.post_copy = true;
  c.extent = extent;
  ROAM_TRY(CommitAndWaitReady(target, options, c, report));

  // 4. From here the source's copy is never resumed: the target's may run.
  Go(target, options, report);
  const Clock::time_point go_at = Clock::now();
  report.frozen_ns = captured.frozen_ns;
  report.downtime_ns = captured.frozen_ns + NsSince(captured_at);

  // 5. Pages on request until the target has them all; then the frozen
  // copy goes.
  const Status served = ServeUntilDone(target, options);
  frozen->Kill();
  report.source_dropped_ns = NsSince(go_at);
  if (!served) {
    report.post_copy_error = served.error().ToString();
  } else if (serving_->done) {
    const wire::PagesDone& done = *serving_->done;
    report.post_copy_complete = done.complete;
    report.post_copy_error = done.error;
    report.pages_on_fault = done.pages_on_fault;
    report.pages_streamed = done.pages_streamed;
    report.faults = done.faults;
  }
  report.page_requests = serving_->requests;
  report.bytes_served = serving_->bytes;
  report.pages = serving_->bytes / ckpt::kPageSize;
  report.runs = extent.size();
  report.total_ns = NsSince(started);
  return report;
}

Status SourceImpl::ServeUntilDone(transport::Endpoint& target, const MigrateOptions& options) {
  const Clock::time_point deadline = DeadlineAfter(options.post_copy_timeout);
  const Bytes query = wire::Encode(wire::Query{options.migration_id});
  while (!serving_->done) {
    // The named fault: the source drops its copy before the target has
    // every page (the target's server must then kill its process).
    if (FaultInjected("migrate-source-drop-before-done")) return Ok();
    (void)transport::ProgressUntil(
        fabric_, [this] { return serving_->done.has_value(); }, std::chrono::milliseconds(500));
    if (serving_->done) break;
    if (Clock::now() > deadline) {
      return MakeError(Errc::kTimeout, "post-copy: not every page in within {} ms",
                       options.post_copy_timeout.count());
    }
    // A heartbeat: the target's process still runs there (RUNNING). A busy
    // target thread (a restore of another migration) may not answer in
    // time; only a dead endpoint or a wrong answer means it is gone.
    auto alive = Ask(fabric_, target, kTagStatus, query, options.io_timeout);
    if (serving_->done) break;
    if (!alive && (alive.error().code() != Errc::kTimeout || !target.status())) {
      return alive.error().WithContext("post-copy: the target went away after go");
    }
    if (alive && alive->phase != wire::Phase::kRunning) {
      return MakeError(Errc::kCancelled, "post-copy: the target says {} after go",
                       wire::PhaseName(alive->phase));
    }
  }
  return Ok();
}

Result<MigrationReport> SourceImpl::Run(transport::Endpoint& target, pid_t pid,
                                        const MigrateOptions& options) {
  if (options.mode == MigrationMode::kPostCopy) return RunPostCopy(target, pid, options);
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
  // Pre-copy lets the process run (and grow) for its rounds: its staging
  // is sized for twice what it may grow to within its mappings (at most
  // four times what it holds now), a stop-copy's for what it holds.
  const std::uint64_t room =
      pre_copy ? 2 * std::max(anonymous, std::min(AnonymousMapped(pid), 4 * anonymous)) : anonymous;
  wire::Prepare prepare{id, room + options.headroom_bytes, options.guest,
                        std::string(reinterpret_cast<const char*>(address.data()), address.size())};
  ROAM_ASSIGN_OR_RETURN(const Bytes prepared_bytes,
                        transport::RequestBlocking(fabric_, target, kTagPrepare,
                                                   wire::Encode(prepare), options.prepare_timeout));
  ROAM_ASSIGN_OR_RETURN(const wire::Prepared prepared, wire::DecodePrepared(prepared_bytes));
  ROAM_ASSIGN_OR_RETURN(auto staging,
                        target.UnpackKey(std::as_bytes(std::span(prepared.staging_key))));
  if (prepared.capacity > staging->length()) {
    return MakeError(Errc::kProtocol, "target offered {} bytes of staging in a region of {}",
                     prepared.capacity, staging->length());
  }

  // 2. Capture into the target's staging; 3. commit while frozen.
  PutPageSink sink(fabric_, target, *staging, prepared.capacity, ring_->bytes(),
                   PutPageSink::Options{.timeout = options.io_timeout,
                                        .expected_bytes = anonymous,
                                        .progress = options.progress});
  MigrationReport report;
  const auto commit = [&](const image::Image& meta) -> Status {
    wire::Commit c;
    c.migration_id = id;
    c.image = ckpt::EncodeImageMeta(meta);
    c.runs = sink.runs();
    return CommitAndWaitReady(target, options, c, report);
  };
  image::Image meta;
  ckpt::CaptureOptions capture_options;
  capture_options.leave_running = false;
  if (pre_copy) {
    // Rounds put what changed straight from the process into the staging
    // (sized at Prepare for twice the process). A round is read only while
    // it and a final pass of about twice its size still fit: a process that
    // rewrites its memory faster than it moves (xz) ends its rounds early
    // instead of running the staging dry. A final pass that still does not
    // fit fails the move, and the process runs on where it was.
    const auto fits = [&](std::uint64_t round_bytes) {
      return sink.bytes_sent() + 3 * round_bytes + options.headroom_bytes <= prepared.capacity;
    };
    for (int round = 0; round < std::max(options.max_rounds, 1); ++round) {
      sink.StartPass(PutPageSink::Pass::kRound);
      ROAM_ASSIGN_OR_RETURN(const ckpt::PreCopy::Round copied, tracking->CopyRound(sink, fits));
      if (copied.declined) break;
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
  Go(target, options, report);
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
