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

inline constexpr std::uint32_t kVersion = 1;
// A Commit's run table travels inline in one request (transport
// kMaxMessageBytes): at two varints a run this bounds a capture to roughly
// 50,000 disjoint runs of non-zero pages.
inline constexpr std::size_t kMaxRuns = std::size_t{1} << 16;

struct Prepare {
  std::uint64_t migration_id = 0;
  std::uint64_t page_bytes = 0;
  std::string guest;
  std::string source_address;
};

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
  // Sum of the runs' bytes, and the end of the last byte of staging any run
  // uses (computed by the decoder, not sent).
  std::uint64_t page_bytes = 0;
  std::uint64_t staging_end = 0;
};

struct Query {
  std::uint64_t migration_id = 0;
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
Bytes EncodePhase(Phase phase, std::int64_t pid = 0);

Result<Prepare> DecodePrepare(ByteView bytes);
Result<Prepared> DecodePrepared(ByteView bytes);
Result<Commit> DecodeCommit(ByteView bytes);
Result<Query> DecodeQuery(ByteView bytes);
Result<PhaseReply> DecodePhase(ByteView bytes);

}  // namespace roam::migrate::wire
