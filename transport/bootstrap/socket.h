// The TCP plumbing of the bootstrap rendezvous: an owned descriptor,
// "host:port" parsing, listen/accept/connect, deadline-bounded waits and
// writes, and length-prefixed frames (a 4-byte big-endian length, then that
// many bytes). Every errno of the TCP bootstrap becomes an Error here, with
// the peer or address named. Sockets are non-blocking; nothing here waits
// past the deadline it is given.
//
// Thread-safety: UniqueFd and FrameReader are owned by one thread at a time;
// the free functions are safe from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "roam/base/error.h"
#include "roam/base/unique_fd.h"

namespace roam::transport {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// Milliseconds until `deadline`, rounded up (poll's timeout); 0 once past.
int MillisLeft(Deadline deadline);

using ::roam::UniqueFd;

struct HostPort {
  std::string host;  // a name or a numeric address, IPv6 without brackets
  std::uint16_t port = 0;

  std::string ToString() const;  // "host:port" or "[v6]:port"
};

// "host:port" or "[v6addr]:port"; kInvalidArgument saying what is wrong.
Result<HostPort> ParseHostPort(std::string_view text);

struct Listener {
  UniqueFd fd;
  std::uint16_t port = 0;  // the bound port (the kernel's choice for port 0)
};
Result<Listener> ListenTcp(const HostPort& at);

// A queued connection (non-blocking, TCP_NODELAY), or an invalid UniqueFd
// when none is queued.
Result<UniqueFd> AcceptTcp(int listen_fd);

// Connects (non-blocking, TCP_NODELAY), retrying refused and unreachable
// attempts with a short back-off: the listener may not exist yet. kUnavailable
// once the deadline passes, carrying the last attempt's errno.
Result<UniqueFd> ConnectTcp(const HostPort& to, Deadline deadline);

// Waits for `events` on fd; the revents, or 0 once the deadline passes.
Result<int> WaitFor(int fd, int events, Deadline deadline);

inline constexpr std::size_t kFrameHeaderBytes = 4;

// Sends the header and `payload`. kTimeout if the deadline passes first;
// kUnavailable if the peer has gone (EPIPE, ECONNRESET).
Status SendFrame(int fd, std::string_view payload, Deadline deadline, std::string_view peer);

// One write attempt without waiting, for a last word to a peer that is
// being dropped (which may not be reading); then half-closes and drains
// what the peer still sends for up to 50 ms, so that closing does not reset
// the connection under that last word.
void TrySendFrame(int fd, std::string_view payload);

// Reassembles frames from a non-blocking socket.
class FrameReader final {
 public:
  explicit FrameReader(std::size_t max_frame) : max_frame_(max_frame) {}

  void set_max_frame(std::size_t max_frame) { max_frame_ = max_frame; }

  // Reads what the socket holds now, without blocking. False once the peer
  // has closed its side (frames read before that are still buffered).
  Result<bool> ReadAvailable(int fd, std::string_view peer);

  // The next complete frame, if one is buffered. kProtocol if a header
  // announces more than max_frame bytes.
  Result<std::optional<std::string>> Next(std::string_view peer);

 private:
  std::string buffer_;
  std::size_t max_frame_;
};

// Waits for one whole frame. kTimeout once the deadline passes, kUnavailable
// when the peer closes its side first.
Result<std::string> ReceiveFrame(int fd, FrameReader& reader, Deadline deadline,
                                 std::string_view peer);

}  // namespace roam::transport
