// The wire forms of the migration protocol (migrate.proto) as plain structs,
// with the only parsers of peer bytes in core/migrate. Decoding checks the
// version and every field a handler relies on (run order, page alignment,
// overflow), so that handlers never see a malformed message; refusals are
// kCorrupt (not a message of this protocol) or kIncompatible (a version this
// build does not read), one line each. Fuzzed by tests/fuzz/migrate_wire_fuzz.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "roam/base/error.h"
#include "roam/transport/transport.h"

namespace roam::migrate::wire {

using transport::Bytes;
using transport::ByteView;

// The newest version this build reads and writes; it reads every version
// from 1. Messages go out at the lowest version that carries them
// (migrate.proto): stop-copy and pre-copy at 1, post-copy at 2.
inline constexpr std::uint32_t kVersion = 2;
inline constexpr std::uint32_t kPostCopyVersion = 2;
// A Commit's run table travels inline in one request (transport
// kMaxMessageBytes): at two varints a run this bounds a capture to roughly
// 50,000 disjoint runs of non-zero pages.
inline constexpr std::size_t kMaxRuns = std::size_t{1} << 16;
// A PageReply of this many pages, with its bitmap and framing, stays within
// one transport message.
inline constexpr std::uint32_t kMaxPagesPerRequest = 255;

struct Prepare {
  std::uint64_t migration_id = 0;
  std::uint64_t page_bytes = 0;
  std::string guest;
  std::string source_address;
  bool post_copy = false;
};

// A post-copy reply carries no staging (empty key, capacity 0).
struct Prepared {
  std::string staging_key;
  std::uint64_t capacity = 0;
};

struct Run {
  std::uint64_t vaddr = 0;
  std::uint64_t bytes = 0;   // whole pages
  std::uint64_t offset = 0;  // where in the staging
};

struct Commit {
  std::uint64_t migration_id = 0;
  std::string image;
  std::vector<Run> runs;  // strictly increasing, disjoint addresses
  // Post-copy: no runs; where the source may have pages (offsets 0).
  bool post_copy = false;
  std::vector<Run> extent;
  // Sum of the runs' bytes, and the end of the last byte of staging any run
  // uses (computed by the decoder, not sent).
  std::uint64_t page_bytes = 0;
  std::uint64_t staging_end = 0;
};

struct Query {
  std::uint64_t migration_id = 0;
};

struct PageRequest {
  std::uint64_t migration_id = 0;
  std::uint64_t vaddr = 0;  // page-aligned
  std::uint32_t pages = 0;  // 1..kMaxPagesPerRequest
};

struct PageReply {
  std::uint64_t vaddr = 0;
  std::uint32_t pages = 0;
  std::string present;  // one bit per page (bit i % 8 of byte i / 8)
  std::string data;     // the present pages, in order
  bool Has(std::uint32_t i) const {
    return ((static_cast<unsigned char>(present[i / 8]) >> (i % 8)) & 1) != 0;
  }
};

struct PagesDone {
  std::uint64_t migration_id = 0;
  bool complete = false;
  std::string error;
  std::uint64_t pages_on_fault = 0;
  std::uint64_t pages_streamed = 0;
  std::uint64_t faults = 0;
  std::uint64_t zero_pages = 0;
};

// Mirrors migrate.proto Phase.Kind (same numbers).
enum class Phase : std::uint32_t {
  kPrepared = 1,
  kCommitted = 2,
  kReady = 3,
  kRunning = 4,
  kAborted = 5,
  kInProgress = 6,
  kMoved = 7,
  kSourceKept = 8,
  kUnknown = 9,
};
const char* PhaseName(Phase phase);

struct PhaseReply {
  Phase phase = Phase::kUnknown;
  std::int64_t pid = 0;
};

Bytes Encode(const Prepare& m);
Bytes Encode(const Prepared& m);
Bytes Encode(const Commit& m);
Bytes Encode(const Query& m);
Bytes Encode(const PageRequest& m);
Bytes Encode(PageReply m);  // by value: the page bytes move, not copy
Bytes Encode(const PagesDone& m);
Bytes EncodePhase(Phase phase, std::int64_t pid = 0);

Result<Prepare> DecodePrepare(ByteView bytes);
Result<Prepared> DecodePrepared(ByteView bytes);
Result<Commit> DecodeCommit(ByteView bytes);
Result<Query> DecodeQuery(ByteView bytes);
Result<PhaseReply> DecodePhase(ByteView bytes);
// Checks the bitmap's size and that `data` holds exactly the present pages.
Result<PageRequest> DecodePageRequest(ByteView bytes);
Result<PageReply> DecodePageReply(ByteView bytes);
Result<PagesDone> DecodePagesDone(ByteView bytes);

}  // namespace roam::migrate::wire
