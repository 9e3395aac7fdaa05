#include "core/migrate/remote_page_source.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "roam/migrate/migration.h"

namespace roam::migrate {
namespace {

using ckpt::kPageSize;

constexpr std::uint32_t kAbsent = std::numeric_limits<std::uint32_t>::max();

}  // namespace

Result<std::unique_ptr<RemotePageSource>> RemotePageSource::Create(
    std::unique_ptr<transport::Fabric> fabric, transport::ByteView source_address,
    std::uint64_t migration_id, const std::vector<wire::Run>& extent, const Options& options) {
  if (options.stream_pages == 0 || options.stream_pages > wire::kMaxPagesPerRequest ||
      options.in_flight == 0 || options.fault_pages == 0 || options.fault_pages > 128 ||
      (options.fault_pages & (options.fault_pages - 1)) != 0) {
    return MakeError(Errc::kInvalidArgument,
                     "remote pages: {} pages a stream request, {} in flight, {} a fault request",
                     options.stream_pages, options.in_flight, options.fault_pages);
  }
  ROAM_ASSIGN_OR_RETURN(auto source, fabric->Connect(source_address));
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  ranges.reserve(extent.size());
  for (const wire::Run& r : extent) ranges.emplace_back(r.vaddr, r.vaddr + r.bytes);
  return std::unique_ptr<RemotePageSource>(new RemotePageSource(
      std::move(fabric), std::move(source), migration_id, std::move(ranges), options));
}

RemotePageSource::RemotePageSource(std::unique_ptr<transport::Fabric> fabric,
                                   std::unique_ptr<transport::Endpoint> source,
                                   std::uint64_t migration_id,
                                   std::vector<std::pair<std::uint64_t, std::uint64_t>> extent,
                                   const Options& options)
    : fabric_(std::move(fabric)),
      source_(std::move(source)),
      migration_id_(migration_id),
      extent_(std::move(extent)),
      options_(options) {}

RemotePageSource::~RemotePageSource() {
  // Replies still in flight must not run into chunks of a dead object: the
  // endpoint drops them with itself, before the fabric goes.
  source_.reset();
}

std::size_t RemotePageSource::RangeOf(std::uint64_t vaddr) const {
  auto it = std::upper_bound(extent_.begin(), extent_.end(), vaddr,
                             [](std::uint64_t a, const auto& r) { return a < r.first; });
  if (it == extent_.begin()) return extent_.size();
  --it;
  return vaddr < it->second ? static_cast<std::size_t>(it - extent_.begin()) : extent_.size();
}

std::shared_ptr<RemotePageSource::Chunk> RemotePageSource::Find(std::uint64_t vaddr) const {
  auto it = chunks_.upper_bound(vaddr);
  if (it == chunks_.begin()) return nullptr;
  --it;
  return vaddr < it->second->end() ? it->second : nullptr;
}

Result<std::shared_ptr<RemotePageSource::Chunk>> RemotePageSource::Ask(std::uint64_t start,
                                                                       std::uint32_t pages,
                                                                       bool stream,
                                                                       bool prefetched) {
  auto chunk = std::make_shared<Chunk>();
  chunk->start = start;
  chunk->pages = pages;
  chunk->stream = stream;
  chunk->prefetched = prefetched;
  // A prefetched chunk may arrive long before it is read: it becomes
  // evictable only once read.
  chunk->read = !prefetched;
  const transport::Bytes payload = wire::Encode(wire::PageRequest{migration_id_, start, pages});
  ROAM_TRY(source_->Request(
      kTagPages, payload, options_.timeout, [this, chunk](Result<transport::Bytes> reply) {
        if (chunk->stream) --stream_outstanding_;
        if (!reply) {
          chunk->failed = std::move(reply).error();
          return;
        }
        auto decoded = wire::DecodePageReply(*reply);
        if (decoded && (decoded->vaddr != chunk->start || decoded->pages != chunk->pages)) {
          decoded = MakeError(Errc::kProtocol, "asked {} pages at {:#x}, got {} at {:#x}",
                              chunk->pages, chunk->start, decoded->pages, decoded->vaddr);
        }
        if (!decoded) {
          chunk->failed = std::move(decoded).error();
          return;
        }
        chunk->offset.assign(chunk->pages, kAbsent);
        std::uint32_t next = 0;
        for (std::uint32_t i = 0; i < chunk->pages; ++i) {
          if (decoded->Has(i)) chunk->offset[i] = next++;
        }
        chunk->data = std::move(decoded->data);
        chunk->arrived = true;
        counters_.bytes += chunk->data.size();
        if (chunk->read) order_.push_back(chunk->start);
      }));
  ++counters_.requests;
  if (stream) {
    ++counters_.stream_requests;
    ++stream_outstanding_;
  }
  chunks_[start] = chunk;
  return chunk;
}

Result<std::shared_ptr<RemotePageSource::Chunk>> RemotePageSource::AskUntilNext(std::uint64_t start,
                                                                                std::uint64_t end,
                                                                                bool stream,
                                                                                bool prefetched) {
  if (auto next = chunks_.upper_bound(start); next != chunks_.end()) {
    end = std::min(end, next->first);
  }
  return Ask(start, static_cast<std::uint32_t>((end - start) / kPageSize), stream, prefetched);
}

Status RemotePageSource::ReadAhead() {
  std::uint64_t cursor = read_ahead_;
  // Never further ahead of the reader than half the cache holds: chunks
  // that arrive faster than the server places them would be evicted
  // unread and asked for again (a 256 MiB process served 400 MiB so).
  const std::uint64_t horizon =
      last_read_ + std::uint64_t{options_.cached / 2} * options_.stream_pages * kPageSize;
  while (stream_outstanding_ < options_.in_flight && cursor < horizon) {
    // The extent range at or after the cursor.
    auto it = std::upper_bound(extent_.begin(), extent_.end(), cursor,
                               [](std::uint64_t a, const auto& r) { return a < r.second; });
    if (it == extent_.end()) break;
    const std::uint64_t start = std::max(cursor, it->first);
    if (const auto c = Find(start)) {
      cursor = c->end();
      continue;
    }
    const std::uint64_t end =
        std::min(start + std::uint64_t{options_.stream_pages} * kPageSize, it->second);
    ROAM_ASSIGN_OR_RETURN(const auto asked, AskUntilNext(start, end, true));
    cursor = asked->end();
  }
  read_ahead_ = cursor;
  return Ok();
}

Status RemotePageSource::AwaitChunk(Chunk& chunk) {
  if (chunk.arrived) return Ok();
  if (!chunk.failed) return chunk.failed;
  ++counters_.waits;
  // The request's own timeout ends the wait; the slack only guards it.
  Status waited = transport::ProgressUntil(
      *fabric_, [&chunk] { return chunk.arrived || !chunk.failed; },
      options_.timeout + std::chrono::seconds(1));
  if (!chunk.failed) {
    return chunk.failed.error().WithContext(
        fmt::format("pages at {:#x} from the source", chunk.start));
  }
  if (!waited) return waited;
  return Ok();
}

void RemotePageSource::Evict() {
  while (order_.size() > options_.cached) {
    const std::uint64_t start = order_.front();
    order_.pop_front();
    if (auto it = chunks_.find(start); it != chunks_.end() && it->second->arrived) {
      chunks_.erase(it);
    }
  }
}

Result<bool> RemotePageSource::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  if (out4k.size() != kPageSize || vaddr % kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument, "ReadPage needs an aligned page and a page buffer");
  }
  const std::size_t range = RangeOf(vaddr);
  if (range == extent_.size()) return false;
  // Over UCX tcp a large reply moves (rendezvous) only while this end
  // progresses: the replies in flight move on while the server copies
  // pages in, not only when a read misses.
  if (stream_outstanding_ > 0) (void)fabric_->Progress();
  Evict();
  std::shared_ptr<Chunk> chunk = Find(vaddr);
  // In sequence: the server's stream (it skips pages a fault placed, hence
  // the window), or a page of a chunk the stream asked for; never a page
  // the restore said it would read (Prefetch).
  const bool sequential =
      (chunk == nullptr || !chunk->prefetched) &&
      ((chunk != nullptr && chunk->stream) ||
       (vaddr > last_read_ &&
        vaddr - last_read_ <= std::uint64_t{options_.stream_pages} * kPageSize));
  last_read_ = vaddr;
  if (chunk == nullptr) {
    const auto [lo, hi] = extent_[range];
    std::uint64_t start;
    std::uint64_t end;
    if (sequential) {
      start = vaddr;
      end = vaddr + std::uint64_t{options_.stream_pages} * kPageSize;
    } else {
      const std::uint64_t span = std::uint64_t{options_.fault_pages} * kPageSize;
      start = vaddr / span * span;
      end = start + span;
    }
    start = std::max(start, lo);
    end = std::min(end, hi);
    if (auto prev = chunks_.upper_bound(vaddr); prev != chunks_.begin()) {
      start = std::max(start, std::prev(prev)->second->end());
    }
    ROAM_ASSIGN_OR_RETURN(chunk, AskUntilNext(start, end, sequential));
    if (sequential) read_ahead_ = std::max(read_ahead_, chunk->end());
  }
  if (sequential) {
    read_ahead_ = std::max(read_ahead_, vaddr);
    ROAM_TRY(ReadAhead());
  }
  // `chunk` keeps it alive whatever eviction does meanwhile.
  ROAM_TRY(AwaitChunk(*chunk));
  if (!chunk->read) {
    chunk->read = true;
    order_.push_back(chunk->start);
  }
  const std::uint32_t at = chunk->offset[(vaddr - chunk->start) / kPageSize];
  if (at == kAbsent) return false;
  std::memcpy(out4k.data(), chunk->data.data() + std::size_t{at} * kPageSize, kPageSize);
  return true;
}

Status RemotePageSource::Prefetch(std::span<const std::pair<std::uint64_t, std::uint64_t>> ranges) {
  for (const auto& [want_lo, want_hi] : ranges) {
    auto it = std::upper_bound(extent_.begin(), extent_.end(), want_lo,
                               [](std::uint64_t a, const auto& r) { return a < r.second; });
    for (; it != extent_.end() && it->first < want_hi; ++it) {
      std::uint64_t cursor = std::max(want_lo, it->first);
      const std::uint64_t end = std::min(want_hi, it->second);
      while (cursor < end) {
        if (const auto c = Find(cursor)) {
          cursor = c->end();
          continue;
        }
        const std::uint64_t stop =
            std::min(end, cursor + std::uint64_t{wire::kMaxPagesPerRequest} * kPageSize);
        ROAM_ASSIGN_OR_RETURN(const auto asked, AskUntilNext(cursor, stop, false, true));
        cursor = asked->end();
      }
    }
  }
  return Ok();
}

Status RemotePageSource::ForEach(const RunFn& fn) {
  std::deque<std::shared_ptr<Chunk>> pending;
  std::size_t range = 0;
  std::uint64_t cursor = extent_.empty() ? 0 : extent_[0].first;
  const auto ask_more = [&]() -> Status {
    while (pending.size() < options_.in_flight && range < extent_.size()) {
      const auto [lo, hi] = extent_[range];
      cursor = std::max(cursor, lo);
      const std::uint64_t end =
          std::min(cursor + std::uint64_t{wire::kMaxPagesPerRequest} * kPageSize, hi);
      ROAM_ASSIGN_OR_RETURN(
          auto c, Ask(cursor, static_cast<std::uint32_t>((end - cursor) / kPageSize), false));
      // Not cached (read once, in order); Ask's entry also replaced a stale
      // chunk of ReadPage's at this address.
      chunks_.erase(c->start);
      pending.push_back(std::move(c));
      cursor = end;
      if (cursor == hi) ++range;
    }
    return Ok();
  };
  ROAM_TRY(ask_more());
  while (!pending.empty()) {
    std::shared_ptr<Chunk> c = std::move(pending.front());
    pending.pop_front();
    ROAM_TRY(AwaitChunk(*c));
    ROAM_TRY(ask_more());
    for (std::uint32_t i = 0; i < c->pages;) {
      if (c->offset[i] == kAbsent) {
        ++i;
        continue;
      }
      std::uint32_t j = i;
      while (j < c->pages && c->offset[j] != kAbsent) ++j;
      // Present pages are consecutive in `data`.
      ROAM_TRY(fn(c->start + std::uint64_t{i} * kPageSize,
                  std::span(reinterpret_cast<const std::byte*>(c->data.data()) +
                                std::size_t{c->offset[i]} * kPageSize,
                            std::size_t{j - i} * kPageSize)));
      i = j;
    }
  }
  order_.clear();
  return Ok();
}

Status RemotePageSource::SendDone(const wire::PagesDone& done) {
  ROAM_ASSIGN_OR_RETURN(const transport::Bytes reply,
                        transport::RequestBlocking(*fabric_, *source_, kTagPagesDone,
                                                   wire::Encode(done), options_.timeout));
  ROAM_ASSIGN_OR_RETURN(const wire::PhaseReply phase, wire::DecodePhase(reply));
  if (phase.phase != wire::Phase::kMoved) {
    return MakeError(Errc::kProtocol, "source answered pages-done with {}",
                     wire::PhaseName(phase.phase));
  }
  return Ok();
}

}  // namespace roam::migrate
