// The remote side of the transport conformance suite: a node that owns one
// registered region and answers control messages about it, so that a test
// can check what really landed in the peer's memory (the peer reads its own
// memory) rather than trusting the initiator's completions.
//
// The same service runs in-process (on a second fabric the test progresses)
// and in tests/transport/transport_peer (a separate process, in another
// network namespace for the cross-node runs).
//
// Thread-safety: belongs to the thread that progresses its fabric.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>

#include "roam/transport/transport.h"

namespace roam::transport::testing {

// Request tags of the service.
enum PeerTag : std::uint16_t {
  kEcho = 1,         // reply = payload
  kChecksum = 2,     // payload: Range; reply: uint64 checksum of the region bytes
  kFill = 3,         // payload: Range + seed; fills the bytes with Pattern(seed)
  kKey = 4,          // reply: the region's packed key
  kWatch = 5,        // payload: Watch; records the data checksum when the flag appears
  kWatchResult = 6,  // reply: uint64 checksum seen with the flag (kNotFound before)
  kFail = 7,         // reply: an error (kNotMigratable, "refused by request")
  kExit = 8,         // the peer process exits at once without replying (_exit)
  kPause = 9,        // payload: uint64 ms; replies, then stops progressing that long
};

struct Range {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint64_t seed = 0;  // kFill only
};

struct Watch {
  std::uint64_t flag_offset = 0;
  std::uint64_t flag_value = 0;
  Range data;
};

// The byte at `index` of the pattern `seed` (position-dependent, so shifted
// or reordered data does not pass).
inline std::byte PatternByte(std::uint64_t seed, std::uint64_t index) {
  const std::uint64_t x = (index + 1) * 0x9E3779B97F4A7C15ull ^ (seed * 0xBF58476D1CE4E5B9ull);
  return static_cast<std::byte>((x >> 29) ^ (x >> 7));
}
void FillPattern(std::span<std::byte> out, std::uint64_t seed, std::uint64_t first_index);
std::uint64_t Checksum(ByteView bytes);

template <typename T>
Bytes ToBytes(const T& value) {
  const auto* p = reinterpret_cast<const std::byte*>(&value);
  return Bytes(p, p + sizeof(T));
}
template <typename T>
Result<T> FromBytes(ByteView bytes) {
  if (bytes.size() != sizeof(T)) {
    return MakeError(Errc::kProtocol, "expected {} bytes, got {}", sizeof(T), bytes.size());
  }
  T value;
  std::memcpy(&value, bytes.data(), sizeof(T));
  return value;
}

class PeerService final {
 public:
  // Allocates `region_bytes` on `fabric` and serves the tags above.
  static Result<std::unique_ptr<PeerService>> Start(Fabric& fabric, std::size_t region_bytes);

  // Looks at the watched flag; call after every Progress of the fabric.
  void Poll();
  MemoryRegion& region() { return *region_; }
  // A watch waits for its flag: poll without sleeping (one-sided puts land
  // without waking the fabric).
  bool watching() const { return watch_.has_value() && !watch_result_.has_value(); }
  // Whoever progresses the service's fabric stops doing so until then.
  std::chrono::steady_clock::time_point paused_until() const { return paused_until_; }

 private:
  explicit PeerService(std::unique_ptr<MemoryRegion> region) : region_(std::move(region)) {}
  void Serve(Fabric& fabric);

  std::unique_ptr<MemoryRegion> region_;
  std::optional<Watch> watch_;
  std::optional<std::uint64_t> watch_result_;
  std::chrono::steady_clock::time_point paused_until_{};
};

}  // namespace roam::transport::testing
