#include "core/migrate/put_page_sink.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace roam::migrate {
namespace {

// The most one put carries: a capture reads in 4 MiB granules, and bounded
// puts keep the ring turning over.
constexpr std::size_t kMaxPutBytes = std::size_t{4} << 20;

}  // namespace

PutPageSink::PutPageSink(transport::Fabric& fabric, transport::Endpoint& target,
                         const transport::RemoteKey& staging, std::uint64_t staging_capacity,
                         std::span<std::byte> ring, Options options)
    : fabric_(fabric),
      target_(target),
      staging_(staging),
      capacity_(std::min(staging_capacity, staging.length())),
      ring_(ring),
      options_(std::move(options)) {}

PutPageSink::~PutPageSink() {
  // The ring is reused by the next migration: no put may still read it. A
  // failed endpoint completes everything it had at once.
  (void)transport::ProgressUntil(
      fabric_,
      [this] {
        Retire();
        return shared_->in_flight.empty() || !target_.status().has_value();
      },
      options_.timeout);
}

void PutPageSink::Retire() {
  auto& q = shared_->in_flight;
  while (!q.empty() && q.front().done) q.pop_front();
}

std::uint64_t PutPageSink::InUseFrom() const {
  return shared_->in_flight.empty() ? head_ : shared_->in_flight.front().start;
}

Result<std::uint64_t> PutPageSink::Reserve(std::size_t bytes) {
  const std::size_t size = ring_.size();
  if (bytes == 0 || bytes > size) {
    return MakeError(Errc::kInternal, "send ring of {} bytes asked for {}", size, bytes);
  }
  // Contiguous: skip the ring's end when the run would wrap.
  const std::size_t pos = head_ % size;
  const std::uint64_t start = pos + bytes > size ? head_ + (size - pos) : head_;
  const auto fits = [&] {
    Retire();
    return start + bytes - InUseFrom() <= size || !shared_->error.has_value();
  };
  if (!fits()) {
    Status waited = transport::ProgressUntil(fabric_, fits, options_.timeout);
    if (!waited) return waited.error().WithContext("waiting for the send ring");
  }
  ROAM_TRY(shared_->error);
  head_ = start + bytes;
  return start;
}

Status PutPageSink::PutFromRing(std::uint64_t at, std::size_t bytes) {
  if (bytes > capacity_ - staged_) {
    return MakeError(Errc::kResourceExhausted,
                     "the target's staging of {} bytes is full ({} put, a run of {} more): the "
                     "process grew since the migration was prepared",
                     capacity_, staged_, bytes);
  }
  shared_->in_flight.push_back(InFlight{at, at + bytes});
  InFlight* entry = &shared_->in_flight.back();  // deque ends keep references
  most_in_flight_ = std::max(most_in_flight_, entry->end - shared_->in_flight.front().start);
  const transport::ByteView src(RingAt(at), bytes);
  const std::uint64_t remote = staging_.base() + staged_;
  auto done = [shared = shared_, entry](Status status) {
    entry->done = true;
    if (!status && shared->error.has_value()) shared->error = std::move(status);
  };
  Status put = target_.Put(src, remote, staging_, done);
  if (!put && put.error().code() == Errc::kResourceExhausted) {
    // Too many operations in flight on the endpoint: let some finish.
    Status retried = transport::ProgressUntil(
        fabric_,
        [&] {
          put = target_.Put(src, remote, staging_, done);
          return put.has_value() || put.error().code() != Errc::kResourceExhausted;
        },
        options_.timeout);
    if (!retried && put.has_value()) put = std::move(retried);
  }
  if (!put) {
    shared_->in_flight.pop_back();
    return put.error().WithContext("put pages to the target");
  }
  staged_ += bytes;
  // Over tcp nothing moves unless the initiator progresses too.
  fabric_.Progress();
  if (options_.progress) options_.progress(staged_, options_.expected_bytes);
  return Ok();
}

std::span<std::byte> PutPageSink::WritableTail(std::size_t bytes) {
  tail_ = {};
  if (finished_ || bytes == 0 || bytes > ring_.size()) return {};
  auto at = Reserve(bytes);
  if (!at) {
    // Add reports it.
    if (shared_->error.has_value()) shared_->error = at.error();
    return {};
  }
  tail_at_ = *at;
  tail_ = {RingAt(*at), bytes};
  return tail_;
}

void PutPageSink::StartPass(Pass pass) {
  pass_ = pass;
  next_vaddr_ = 0;
  runs_.clear();
  tail_ = {};
}

void PutPageSink::AddRun(std::uint64_t vaddr, std::uint64_t offset, std::uint64_t bytes) {
  if (!runs_.empty() && runs_.back().vaddr + runs_.back().bytes == vaddr &&
      runs_.back().offset + runs_.back().bytes == offset) {
    runs_.back().bytes += bytes;
  } else {
    runs_.push_back(wire::Run{vaddr, bytes, offset});
  }
}

Result<std::uint64_t> PutPageSink::Send(std::span<const std::byte> pages) {
  const std::uint64_t offset = staged_;
  const bool in_tail = !tail_.empty() && pages.data() >= tail_.data() &&
                       pages.data() + pages.size() <= tail_.data() + tail_.size();
  if (in_tail) {
    const auto at = static_cast<std::uint64_t>(pages.data() - tail_.data());
    for (std::size_t done = 0; done < pages.size(); done += kMaxPutBytes) {
      const std::size_t n = std::min(kMaxPutBytes, pages.size() - done);
      ROAM_TRY(PutFromRing(tail_at_ + at + done, n));
    }
    return offset;
  }
  // Pages from elsewhere (the capture's own buffer, a pre-copy store):
  // through the ring.
  tail_ = {};
  const std::size_t chunk = std::min(kMaxPutBytes, ring_.size());
  for (std::size_t done = 0; done < pages.size(); done += chunk) {
    const std::size_t n = std::min(chunk, pages.size() - done);
    ROAM_ASSIGN_OR_RETURN(const std::uint64_t at, Reserve(n));
    std::memcpy(RingAt(at), pages.data() + done, n);
    ROAM_TRY(PutFromRing(at, n));
  }
  return offset;
}

// Runs of a pass come in address order (a PageSink's contract).
Status PutPageSink::CheckOrder(std::uint64_t vaddr, std::uint64_t bytes) {
  ROAM_TRY(shared_->error);
  if (finished_) return MakeError(Errc::kInvalidArgument, "put sink: already finished");
  if (vaddr % ckpt::kPageSize != 0 || bytes == 0 || bytes % ckpt::kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument,
                     "put sink: run at {:#x} of {} bytes is not whole pages", vaddr, bytes);
  }
  if (vaddr < next_vaddr_) {
    return MakeError(Errc::kInvalidArgument, "put sink: run at {:#x} is out of order", vaddr);
  }
  next_vaddr_ = vaddr + bytes;
  return Ok();
}

Status PutPageSink::Add(std::uint64_t vaddr, std::span<const std::byte> pages) {
  ROAM_TRY(CheckOrder(vaddr, pages.size()));
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t offset, Send(pages));
  if (pass_ == Pass::kRound) {
    put_.Assign(vaddr, vaddr + pages.size(), offset);
  } else {
    AddRun(vaddr, offset, pages.size());
  }
  return Ok();
}

Status PutPageSink::AddKept(std::uint64_t vaddr, std::uint64_t bytes) {
  ROAM_TRY(CheckOrder(vaddr, bytes));
  if (pass_ != Pass::kFinal) {
    return MakeError(Errc::kInvalidArgument, "put sink: kept pages at {:#x} outside a final pass",
                     vaddr);
  }
  return put_.Visit(vaddr, vaddr + bytes,
                    [&](std::uint64_t lo, std::uint64_t hi, const std::uint64_t* offset) -> Status {
                      if (offset == nullptr) {
                        return MakeError(Errc::kInternal,
                                         "put sink: pages at {:#x} ({} bytes) said kept, but no "
                                         "round put them",
                                         lo, hi - lo);
                      }
                      AddRun(lo, *offset, hi - lo);
                      return Ok();
                    });
}

Status PutPageSink::Finish() {
  finished_ = true;
  tail_ = {};
  const auto drained = [this] {
    Retire();
    return shared_->in_flight.empty() || !shared_->error.has_value();
  };
  if (!drained()) {
    Status waited = transport::ProgressUntil(fabric_, drained, options_.timeout);
    if (!waited) return waited.error().WithContext("waiting for puts to complete");
  }
  ROAM_TRY(shared_->error);
  // Remote completion: the pages are in the target's memory before the
  // metadata that names them is sent.
  Status flushed = transport::FlushBlocking(fabric_, target_, options_.timeout);
  if (!flushed) return flushed.error().WithContext("flush pages to the target");
  return Ok();
}

}  // namespace roam::migrate
