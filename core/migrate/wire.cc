#include "core/migrate/wire.h"

#include <algorithm>
#include <limits>

#include "core/ckpt/image/page_stream.h"
#include "core/migrate/migrate.pb.h"

namespace roam::migrate::wire {
namespace {

template <typename Message>
Bytes Serialize(const Message& m) {
  Bytes out(m.ByteSizeLong());
  m.SerializeToArray(out.data(), static_cast<int>(out.size()));
  return out;
}

template <typename Message>
Status Parse(ByteView bytes, const char* what, Message* m) {
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()) ||
      !m->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return MakeError(Errc::kCorrupt, "migration {}: not a valid message ({} bytes)", what,
                     bytes.size());
  }
  if (m->version() != kVersion) {
    return MakeError(Errc::kIncompatible, "migration {}: protocol version {} (this build reads {})",
                     what, m->version(), kVersion);
  }
  return Ok();
}

}  // namespace

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kPrepared:
      return "prepared";
    case Phase::kCommitted:
      return "committed";
    case Phase::kReady:
      return "ready";
    case Phase::kRunning:
      return "running";
    case Phase::kAborted:
      return "aborted";
    case Phase::kInProgress:
      return "in progress";
    case Phase::kMoved:
      return "moved";
    case Phase::kSourceKept:
      return "source kept";
    case Phase::kUnknown:
      return "unknown";
  }
  return "?";
}

Bytes Encode(const Prepare& m) {
  pb::Prepare p;
  p.set_version(kVersion);
  p.set_migration_id(m.migration_id);
  p.set_page_bytes(m.page_bytes);
  p.set_guest(m.guest);
  p.set_source_address(m.source_address);
  return Serialize(p);
}

Bytes Encode(const Prepared& m) {
  pb::Prepared p;
  p.set_version(kVersion);
  p.set_staging_key(m.staging_key);
  p.set_capacity(m.capacity);
  return Serialize(p);
}

Bytes Encode(const Commit& m) {
  pb::Commit p;
  p.set_version(kVersion);
  p.set_migration_id(m.migration_id);
  p.set_image(m.image);
  // Offsets travel only where the runs are not dense (pre-copy).
  bool dense = true;
  std::uint64_t at = 0;
  for (const Run& r : m.runs) {
    p.add_run_vaddr(r.vaddr);
    p.add_run_pages(r.bytes / ckpt::kPageSize);
    dense = dense && r.offset == at;
    at += r.bytes;
  }
  if (!dense) {
    for (const Run& r : m.runs) p.add_run_offset(r.offset);
  }
  return Serialize(p);
}

Bytes Encode(const Query& m) {
  pb::Query p;
  p.set_version(kVersion);
  p.set_migration_id(m.migration_id);
  return Serialize(p);
}

Bytes EncodePhase(Phase phase, std::int64_t pid) {
  pb::Phase p;
  p.set_version(kVersion);
  p.set_kind(static_cast<pb::Phase::Kind>(phase));
  p.set_pid(pid);
  return Serialize(p);
}

Result<Prepare> DecodePrepare(ByteView bytes) {
  pb::Prepare p;
  ROAM_TRY(Parse(bytes, "prepare", &p));
  return Prepare{p.migration_id(), p.page_bytes(), p.guest(), p.source_address()};
}

Result<Prepared> DecodePrepared(ByteView bytes) {
  pb::Prepared p;
  ROAM_TRY(Parse(bytes, "prepared", &p));
  if (p.staging_key().empty()) {
    return MakeError(Errc::kCorrupt, "migration prepared: no staging key");
  }
  return Prepared{p.staging_key(), p.capacity()};
}

Result<Commit> DecodeCommit(ByteView bytes) {
  pb::Commit p;
  ROAM_TRY(Parse(bytes, "commit", &p));
  if (p.run_vaddr_size() != p.run_pages_size()) {
    return MakeError(Errc::kCorrupt, "migration commit: {} run addresses but {} run lengths",
                     p.run_vaddr_size(), p.run_pages_size());
  }
  if (p.run_offset_size() != 0 && p.run_offset_size() != p.run_vaddr_size()) {
    return MakeError(Errc::kCorrupt, "migration commit: {} runs but {} offsets", p.run_vaddr_size(),
                     p.run_offset_size());
  }
  if (static_cast<std::size_t>(p.run_vaddr_size()) > kMaxRuns) {
    return MakeError(Errc::kCorrupt, "migration commit: {} runs (at most {})", p.run_vaddr_size(),
                     kMaxRuns);
  }
  Commit c;
  c.migration_id = p.migration_id();
  c.image = p.image();
  c.runs.reserve(static_cast<std::size_t>(p.run_vaddr_size()));
  // A run table that cannot come from a capture is refused here: user space
  // ends well below 2^63, so bounding each run keeps every sum exact.
  constexpr std::uint64_t kLimit = std::uint64_t{1} << 62;
  std::uint64_t next = 0;
  for (int i = 0; i < p.run_vaddr_size(); ++i) {
    const std::uint64_t vaddr = p.run_vaddr(i);
    const std::uint64_t pages = p.run_pages(i);
    if (vaddr % ckpt::kPageSize != 0 || pages == 0 || vaddr >= kLimit ||
        pages > kLimit / ckpt::kPageSize || vaddr + pages * ckpt::kPageSize > kLimit) {
      return MakeError(Errc::kCorrupt, "migration commit: run {} ({:#x}, {} pages) is not a run", i,
                       vaddr, pages);
    }
    if (vaddr < next) {
      return MakeError(Errc::kCorrupt, "migration commit: run {} at {:#x} is out of order", i,
                       vaddr);
    }
    const std::uint64_t run_bytes = pages * ckpt::kPageSize;
    next = vaddr + run_bytes;
    if (c.page_bytes > kLimit - run_bytes) {
      return MakeError(Errc::kCorrupt, "migration commit: runs add up past any memory");
    }
    const std::uint64_t offset = p.run_offset_size() != 0 ? p.run_offset(i) : c.page_bytes;
    if (offset % ckpt::kPageSize != 0 || offset >= kLimit || offset + run_bytes > kLimit) {
      return MakeError(Errc::kCorrupt,
                       "migration commit: run {} at staging offset {:#x} is not "
                       "in any staging",
                       i, offset);
    }
    c.page_bytes += run_bytes;
    c.staging_end = std::max(c.staging_end, offset + run_bytes);
    c.runs.push_back(Run{vaddr, run_bytes, offset});
  }
  return c;
}

Result<Query> DecodeQuery(ByteView bytes) {
  pb::Query p;
  ROAM_TRY(Parse(bytes, "query", &p));
  return Query{p.migration_id()};
}

Result<PhaseReply> DecodePhase(ByteView bytes) {
  pb::Phase p;
  ROAM_TRY(Parse(bytes, "phase", &p));
  const auto kind = static_cast<std::uint32_t>(p.kind());
  if (kind < static_cast<std::uint32_t>(Phase::kPrepared) ||
      kind > static_cast<std::uint32_t>(Phase::kUnknown)) {
    return MakeError(Errc::kCorrupt, "migration phase: unknown kind {}", kind);
  }
  return PhaseReply{static_cast<Phase>(kind), p.pid()};
}

}  // namespace roam::migrate::wire
