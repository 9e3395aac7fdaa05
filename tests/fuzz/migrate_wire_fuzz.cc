// The migration protocol's decoders (core/migrate/wire.h) on hostile bytes:
// never crash, refuse only with kCorrupt or kIncompatible on one line, and
// whatever they accept re-encodes to bytes that decode to the same value. A
// Commit they accept has a run table a restore can trust (page-aligned,
// strictly increasing, its byte count the sum of its runs, its staging end
// the end of its furthest run); a post-copy Commit carries no runs and an
// extent of the same shape. A PageReply it accepts holds exactly the bytes
// of the pages its bitmap says are present.
#include <algorithm>
#include <cstdint>

#include "core/migrate/wire.h"
#include "roam/base/check.h"

namespace {

namespace wire = roam::migrate::wire;

void CheckRefusal(const roam::Error& e) {
  ROAM_CHECK(e.code() == roam::Errc::kCorrupt || e.code() == roam::Errc::kIncompatible,
             "unexpected refusal: {}", e.ToString());
  ROAM_CHECK(e.ToString().find('\n') == std::string::npos);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const wire::ByteView bytes(reinterpret_cast<const std::byte*>(data), size);
  if (auto m = wire::DecodePrepare(bytes); m.has_value()) {
    auto again = wire::DecodePrepare(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->migration_id == m->migration_id &&
               again->page_bytes == m->page_bytes && again->guest == m->guest &&
               again->source_address == m->source_address && again->post_copy == m->post_copy);
  } else {
    CheckRefusal(m.error());
  }
  if (auto m = wire::DecodePrepared(bytes); m.has_value()) {
    auto again = wire::DecodePrepared(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->staging_key == m->staging_key &&
               again->capacity == m->capacity);
  } else {
    CheckRefusal(m.error());
  }
  if (auto m = wire::DecodeCommit(bytes); m.has_value()) {
    std::uint64_t sum = 0;
    std::uint64_t next = 0;
    std::uint64_t end = 0;
    for (const wire::Run& r : m->runs) {
      ROAM_CHECK(r.vaddr % 4096 == 0 && r.bytes % 4096 == 0 && r.bytes > 0 && r.vaddr >= next);
      ROAM_CHECK(r.offset % 4096 == 0);
      next = r.vaddr + r.bytes;
      sum += r.bytes;
      end = std::max(end, r.offset + r.bytes);
    }
    ROAM_CHECK(sum == m->page_bytes && end == m->staging_end);
    ROAM_CHECK(m->extent.empty() || (m->post_copy && m->runs.empty()));
    next = 0;
    for (const wire::Run& r : m->extent) {
      ROAM_CHECK(r.vaddr % 4096 == 0 && r.bytes % 4096 == 0 && r.bytes > 0 && r.vaddr >= next);
      next = r.vaddr + r.bytes;
    }
    auto again = wire::DecodeCommit(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->migration_id == m->migration_id &&
               again->image == m->image && again->page_bytes == m->page_bytes &&
               again->runs.size() == m->runs.size() && again->staging_end == m->staging_end &&
               again->post_copy == m->post_copy && again->extent.size() == m->extent.size());
    for (std::size_t i = 0; i < m->extent.size(); ++i) {
      ROAM_CHECK(again->extent[i].vaddr == m->extent[i].vaddr &&
                 again->extent[i].bytes == m->extent[i].bytes);
    }
    for (std::size_t i = 0; i < m->runs.size(); ++i) {
      ROAM_CHECK(again->runs[i].vaddr == m->runs[i].vaddr &&
                 again->runs[i].bytes == m->runs[i].bytes &&
                 again->runs[i].offset == m->runs[i].offset);
    }
  } else {
    CheckRefusal(m.error());
  }
  if (auto m = wire::DecodeQuery(bytes); m.has_value()) {
    auto again = wire::DecodeQuery(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->migration_id == m->migration_id);
  } else {
    CheckRefusal(m.error());
  }
  if (auto m = wire::DecodePageRequest(bytes); m.has_value()) {
    ROAM_CHECK(m->vaddr % 4096 == 0 && m->pages > 0 && m->pages <= wire::kMaxPagesPerRequest);
    auto again = wire::DecodePageRequest(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->migration_id == m->migration_id &&
               again->vaddr == m->vaddr && again->pages == m->pages);
  } else {
    CheckRefusal(m.error());
  }
  if (auto m = wire::DecodePageReply(bytes); m.has_value()) {
    std::size_t present = 0;
    for (std::uint32_t i = 0; i < m->pages; ++i) present += m->Has(i) ? 1 : 0;
    ROAM_CHECK(m->pages > 0 && m->pages <= wire::kMaxPagesPerRequest &&
               m->present.size() == (m->pages + 7) / 8 && m->data.size() == present * 4096);
    auto again = wire::DecodePageReply(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->vaddr == m->vaddr && again->pages == m->pages &&
               again->present == m->present && again->data == m->data);
  } else {
    CheckRefusal(m.error());
  }
  if (auto m = wire::DecodePagesDone(bytes); m.has_value()) {
    auto again = wire::DecodePagesDone(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->migration_id == m->migration_id &&
               again->complete == m->complete && again->error == m->error &&
               again->pages_on_fault == m->pages_on_fault &&
               again->pages_streamed == m->pages_streamed && again->faults == m->faults &&
               again->zero_pages == m->zero_pages);
  } else {
    CheckRefusal(m.error());
  }
  if (auto m = wire::DecodePhase(bytes); m.has_value()) {
    auto again = wire::DecodePhase(wire::EncodePhase(m->phase, m->pid));
    ROAM_CHECK(again.has_value() && again->phase == m->phase && again->pid == m->pid);
  } else {
    CheckRefusal(m.error());
  }
  return 0;
}
