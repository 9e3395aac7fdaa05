// The migration protocol's decoders (core/migrate/wire.h) on hostile bytes:
// never crash, refuse only with kCorrupt or kIncompatible on one line, and
// whatever they accept re-encodes to bytes that decode to the same value. A
// Commit they accept has a run table a restore can trust (page-aligned,
// strictly increasing, its byte count the sum of its runs, its staging end
// the end of its furthest run).
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
               again->source_address == m->source_address);
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
    auto again = wire::DecodeCommit(wire::Encode(*m));
    ROAM_CHECK(again.has_value() && again->migration_id == m->migration_id &&
               again->image == m->image && again->page_bytes == m->page_bytes &&
               again->runs.size() == m->runs.size() && again->staging_end == m->staging_end);
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
  if (auto m = wire::DecodePhase(bytes); m.has_value()) {
    auto again = wire::DecodePhase(wire::EncodePhase(m->phase, m->pid));
    ROAM_CHECK(again.has_value() && again->phase == m->phase && again->pid == m->pid);
  } else {
    CheckRefusal(m.error());
  }
  return 0;
}
