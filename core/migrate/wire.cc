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
Status Parse(ByteView bytes, const char* what, Message* m, std::uint32_t min_version = 1) {
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max()) ||
      !m->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return MakeError(Errc::kCorrupt, "migration {}: not a valid message ({} bytes)", what,
                     bytes.size());
  }
  if (m->version() < min_version || m->version() > kVersion) {
    return MakeError(Errc::kIncompatible,
                     "migration {}: protocol version {} (this build reads {} to {})", what,
                     m->version(), min_version, kVersion);
  }
  return Ok();
}

// A run table or extent that cannot come from a capture is refused here:
// user space ends well below 2^63, so bounding each run keeps every sum
// exact.
constexpr std::uint64_t kLimit = std::uint64_t{1} << 62;

// Page-aligned, non-empty, in strictly increasing address order, disjoint.
Status CheckRun(const char* what, int i, std::uint64_t vaddr, std::uint64_t pages,
                std::uint64_t next) {
  if (vaddr % ckpt::kPageSize != 0 || pages == 0 || vaddr >= kLimit ||
      pages > kLimit / ckpt::kPageSize || vaddr + pages * ckpt::kPageSize > kLimit) {
    return MakeError(Errc::kCorrupt, "migration commit: {} {} ({:#x}, {} pages) is not a run", what,
                     i, vaddr, pages);
  }
  if (vaddr < next) {
    return MakeError(Errc::kCorrupt, "migration commit: {} {} at {:#x} is out of order", what, i,
                     vaddr);
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
  p.set_migration_id(m.migration_id);
  p.set_page_bytes(m.page_bytes);
  p.set_guest(m.guest);
  p.set_source_address(m.source_address);
  p.set_post_copy(m.post_copy);
  p.set_version(m.post_copy ? kPostCopyVersion : 1);
  return Serialize(p);
}

Bytes Encode(const Prepared& m) {
  pb::Prepared p;
  p.set_version(m.staging_key.empty() ? kPostCopyVersion : 1);
  p.set_staging_key(m.staging_key);
  p.set_capacity(m.capacity);
  return Serialize(p);
}

Bytes Encode(const Commit& m) {
  pb::Commit p;
  p.set_version(m.post_copy ? kPostCopyVersion : 1);
  p.set_migration_id(m.migration_id);
  p.set_image(m.image);
  p.set_post_copy(m.post_copy);
  for (const Run& r : m.extent) {
    p.add_extent_vaddr(r.vaddr);
    p.add_extent_pages(r.bytes / ckpt::kPageSize);
  }
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
  p.set_version(1);
  p.set_migration_id(m.migration_id);
  return Serialize(p);
}

Bytes EncodePhase(Phase phase, std::int64_t pid) {
  pb::Phase p;
  p.set_version(1);
  p.set_kind(static_cast<pb::Phase::Kind>(phase));
  p.set_pid(pid);
  return Serialize(p);
}

Bytes Encode(const PageRequest& m) {
  pb::PageRequest p;
  p.set_version(kPostCopyVersion);
  p.set_migration_id(m.migration_id);
  p.set_vaddr(m.vaddr);
  p.set_pages(m.pages);
  return Serialize(p);
}

Bytes Encode(PageReply m) {
  pb::PageReply p;
  p.set_version(kPostCopyVersion);
  p.set_vaddr(m.vaddr);
  p.set_pages(m.pages);
  p.set_present(std::move(m.present));
  p.set_data(std::move(m.data));
  return Serialize(p);
}

Bytes Encode(const PagesDone& m) {
  pb::PagesDone p;
  p.set_version(kPostCopyVersion);
  p.set_migration_id(m.migration_id);
  p.set_complete(m.complete);
  p.set_error(m.error);
  p.set_pages_on_fault(m.pages_on_fault);
  p.set_pages_streamed(m.pages_streamed);
  p.set_faults(m.faults);
  p.set_zero_pages(m.zero_pages);
  return Serialize(p);
}

Result<Prepare> DecodePrepare(ByteView bytes) {
  pb::Prepare p;
  ROAM_TRY(Parse(bytes, "prepare", &p));
  if (p.post_copy() && p.version() < kPostCopyVersion) {
    return MakeError(Errc::kCorrupt, "migration prepare: post-copy in a version {} message",
                     p.version());
  }
  return Prepare{p.migration_id(), p.page_bytes(), p.guest(), p.source_address(), p.post_copy()};
}

Result<Prepared> DecodePrepared(ByteView bytes) {
  pb::Prepared p;
  ROAM_TRY(Parse(bytes, "prepared", &p));
  if (p.staging_key().empty() && p.version() < kPostCopyVersion) {
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
  if (p.extent_vaddr_size() != p.extent_pages_size()) {
    return MakeError(Errc::kCorrupt, "migration commit: {} extent addresses but {} lengths",
                     p.extent_vaddr_size(), p.extent_pages_size());
  }
  if (static_cast<std::size_t>(p.extent_vaddr_size()) > kMaxRuns) {
    return MakeError(Errc::kCorrupt, "migration commit: {} extent ranges (at most {})",
                     p.extent_vaddr_size(), kMaxRuns);
  }
  if ((p.post_copy() || p.extent_vaddr_size() != 0) && p.version() < kPostCopyVersion) {
    return MakeError(Errc::kCorrupt, "migration commit: post-copy in a version {} message",
                     p.version());
  }
  if (p.post_copy() && p.run_vaddr_size() != 0) {
    return MakeError(Errc::kCorrupt, "migration commit: post-copy with a run table");
  }
  if (!p.post_copy() && p.extent_vaddr_size() != 0) {
    return MakeError(Errc::kCorrupt, "migration commit: an extent without post-copy");
  }
  Commit c;
  c.migration_id = p.migration_id();
  c.image = p.image();
  c.post_copy = p.post_copy();
  c.runs.reserve(static_cast<std::size_t>(p.run_vaddr_size()));
  std::uint64_t next = 0;
  for (int i = 0; i < p.run_vaddr_size(); ++i) {
    const std::uint64_t vaddr = p.run_vaddr(i);
    const std::uint64_t pages = p.run_pages(i);
    ROAM_TRY(CheckRun("run", i, vaddr, pages, next));
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
  next = 0;
  c.extent.reserve(static_cast<std::size_t>(p.extent_vaddr_size()));
  for (int i = 0; i < p.extent_vaddr_size(); ++i) {
    const std::uint64_t vaddr = p.extent_vaddr(i);
    const std::uint64_t pages = p.extent_pages(i);
    ROAM_TRY(CheckRun("extent range", i, vaddr, pages, next));
    next = vaddr + pages * ckpt::kPageSize;
    c.extent.push_back(Run{vaddr, pages * ckpt::kPageSize, 0});
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

Result<PageRequest> DecodePageRequest(ByteView bytes) {
  pb::PageRequest p;
  ROAM_TRY(Parse(bytes, "page request", &p, kPostCopyVersion));
  if (p.vaddr() % ckpt::kPageSize != 0 || p.vaddr() >= kLimit || p.pages() == 0 ||
      p.pages() > kMaxPagesPerRequest) {
    return MakeError(Errc::kCorrupt, "migration page request: {} pages at {:#x}", p.pages(),
                     p.vaddr());
  }
  return PageRequest{p.migration_id(), p.vaddr(), p.pages()};
}

Result<PageReply> DecodePageReply(ByteView bytes) {
  pb::PageReply p;
  ROAM_TRY(Parse(bytes, "page reply", &p, kPostCopyVersion));
  if (p.vaddr() % ckpt::kPageSize != 0 || p.vaddr() >= kLimit || p.pages() == 0 ||
      p.pages() > kMaxPagesPerRequest || p.present().size() != (p.pages() + 7) / 8) {
    return MakeError(Errc::kCorrupt, "migration page reply: {} pages at {:#x}, {} bitmap bytes",
                     p.pages(), p.vaddr(), p.present().size());
  }
  PageReply r{p.vaddr(), p.pages(), std::move(*p.mutable_present()), std::move(*p.mutable_data())};
  std::uint64_t present = 0;
  for (std::uint32_t i = 0; i < r.pages; ++i) present += r.Has(i) ? 1 : 0;
  // Bits past the last page must be clear, so that a reply re-encodes to
  // itself.
  const unsigned tail = r.pages % 8;
  if (tail != 0 && (static_cast<unsigned char>(r.present.back()) >> tail) != 0) {
    return MakeError(Errc::kCorrupt, "migration page reply: bits past its {} pages", r.pages);
  }
  if (r.data.size() != present * ckpt::kPageSize) {
    return MakeError(Errc::kCorrupt, "migration page reply: {} bytes for {} present pages",
                     r.data.size(), present);
  }
  return r;
}

Result<PagesDone> DecodePagesDone(ByteView bytes) {
  pb::PagesDone p;
  ROAM_TRY(Parse(bytes, "pages done", &p, kPostCopyVersion));
  return PagesDone{p.migration_id(),   p.complete(), p.error(),     p.pages_on_fault(),
                   p.pages_streamed(), p.faults(),   p.zero_pages()};
}

}  // namespace roam::migrate::wire
