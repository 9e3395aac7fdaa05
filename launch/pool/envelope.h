// The authenticated, versioned envelope around every message between the
// roamd daemons of a pool (schema: launch/pool/pool.proto).
//
// What is authenticated: the version, sender name, sequence number, kind and
// body, all MACed together with HMAC-SHA256 under the pool key
// (pool_key.h). A valid MAC proves only that the sender holds the pool key:
// the sender name is a claim by a key holder, not an identity. What is not:
// nothing is encrypted (anyone on the network reads every message), and
// Open alone does not stop replays: the receiver must pass the sequence
// through a ReplayWindow for that sender, after Open succeeds (Receiver does
// both, and counts what it drops).
//
// Open treats its input as hostile: it refuses more than kMaxEnvelopeBytes
// before parsing, verifies the MAC over the exact received bytes (never a
// re-serialization) in constant time before parsing them, and only then
// checks the version. Its codes, which Receiver counts by:
//   kCorrupt          malformed or oversized input
//   kPermissionDenied the MAC does not verify (wrong key or altered bytes)
//   kIncompatible     a key holder sent a version this build does not read
//
// Thread-safety: Seal and Open are free functions over values and a const
// PoolKey; safe from any thread. A ReplayWindow or Receiver is used by one
// thread at a time (the daemon's receive loop owns it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "launch/pool/pool_key.h"
#include "roam/base/error.h"

namespace roam::pool {

// The pool protocol version this build writes and reads.
inline constexpr std::uint32_t kPoolWireVersion = 1;
// A larger envelope is refused without parsing (and Seal refuses to make one).
inline constexpr std::size_t kMaxEnvelopeBytes = std::size_t{16} << 20;
// Sender names are at most this long.
inline constexpr std::size_t kMaxSenderBytes = 255;

struct Header {
  std::string sender;          // the sending daemon's name, 1..kMaxSenderBytes
  std::uint64_t sequence = 0;  // increases with every message from `sender`
  std::uint32_t kind = 0;      // what the body is (the pool protocol's numbers)

  friend bool operator==(const Header&, const Header&) = default;
};

struct Opened {
  std::uint32_t version = 0;
  Header header;
  std::string body;
};

// The wire bytes of `body` under `header`, at kPoolWireVersion.
// kInvalidArgument for an empty or too-long sender or a body that would make
// the envelope larger than kMaxEnvelopeBytes.
Result<std::string> Seal(const PoolKey& key, const Header& header, std::string_view body);

// The authenticated contents of `bytes`, or kCorrupt / kPermissionDenied /
// kIncompatible as above. Does not check the sequence (see ReplayWindow).
Result<Opened> Open(const PoolKey& key, std::string_view bytes);

namespace internal {
// Seal at another version: for tests of version refusal, and for a future
// build that speaks more than one version.
Result<std::string> SealAtVersion(const PoolKey& key, std::uint32_t version, const Header& header,
                                  std::string_view body);
}  // namespace internal

// The sequences seen from one sender: each is accepted once; a sequence may
// arrive up to kWidth - 1 behind the highest seen (reordering), an older one
// is refused (the RFC 4303 anti-replay window). Feed it only sequences from
// authenticated messages, or a forger could move the window.
//
// A sender must keep its sequence increasing across its own restarts (e.g.
// start from the clock), or its messages are refused until it passes the
// highest one seen.
class ReplayWindow final {
 public:
  static constexpr std::uint64_t kWidth = 64;

  // Ok and remembered, or kPermissionDenied ("replayed") for a repeat or a
  // sequence kWidth or more behind the highest seen. `sender` names the
  // sender in the error.
  Status Accept(std::string_view sender, std::uint64_t sequence);

 private:
  bool seen_any_ = false;
  std::uint64_t highest_ = 0;
  // Bit i: highest_ - i has been seen.
  std::uint64_t seen_ = 0;
};

// Messages dropped, by reason.
struct DropCounters {
  std::uint64_t malformed = 0;    // kCorrupt from Open (oversized included)
  std::uint64_t bad_version = 0;  // kIncompatible from Open
  std::uint64_t bad_mac = 0;      // kPermissionDenied from Open
  std::uint64_t replayed = 0;     // refused by the sender's ReplayWindow

  friend bool operator==(const DropCounters&, const DropCounters&) = default;
};

// Open + a ReplayWindow per authenticated sender + DropCounters: what a
// daemon's receive loop calls on every datagram or frame. Every refusal is
// counted exactly once, under the reason above. Windows are created only for
// senders whose message authenticated, so the table grows only with what key
// holders send.
class Receiver final {
 public:
  // `key` must outlive the Receiver.
  explicit Receiver(const PoolKey& key) : key_(&key) {}

  Result<Opened> Accept(std::string_view bytes);

  const DropCounters& counters() const { return counters_; }

 private:
  const PoolKey* key_;
  std::unordered_map<std::string, ReplayWindow> windows_;
  DropCounters counters_;
};

}  // namespace roam::pool
