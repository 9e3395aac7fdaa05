// The request/reply bookkeeping every backend shares: the requests an
// endpoint waits on (with deadlines), and the handlers a fabric serves.
//
// Thread-safety: owned by one fabric, used from its progress thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <unordered_map>

#include "roam/transport/transport.h"
#include "transport/wire/wire.h"

namespace roam::transport {

using Clock = std::chrono::steady_clock;

// Requests sent and not yet answered, by id.
class PendingRequests final {
 public:
  // A fresh id for a request that ends at `deadline`.
  std::uint64_t Add(Clock::time_point deadline, ReplyHandler on_reply);
  // Runs the handler of request `id` with `reply`; false if `id` is not
  // pending (answered, expired, or never sent).
  bool Complete(std::uint64_t id, Result<Bytes> reply);
  // Fails every request whose deadline passed with kTimeout; returns how many.
  unsigned Expire(Clock::time_point now, std::string_view peer);
  // Fails every pending request with `error` (the endpoint broke).
  unsigned FailAll(const Error& error);
  // Forgets request `id` without running its handler (it was never sent).
  void Forget(std::uint64_t id);

  std::size_t size() const { return by_id_.size(); }
  std::optional<Clock::time_point> next_deadline() const;

 private:
  struct Entry {
    Clock::time_point deadline;
    ReplyHandler on_reply;
  };
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, Entry> by_id_;
  std::multimap<Clock::time_point, std::uint64_t> by_deadline_;
};

// The handlers of one fabric, by tag.
class RequestRouter final {
 public:
  void Handle(std::uint16_t tag, RequestHandler handler);
  // Runs the handler for `tag`: the reply header and payload to send back.
  // A missing handler, an oversized reply or a handler's error become an
  // error reply.
  std::pair<wire::MessageHeader, Bytes> Dispatch(const wire::MessageHeader& request,
                                                 ByteView payload) const;

 private:
  std::unordered_map<std::uint16_t, RequestHandler> handlers_;
};

// The requester's view of a reply message.
Result<Bytes> ReplyResult(const wire::MessageHeader& header, ByteView payload);

// kInvalidArgument if a message payload is larger than kMaxMessageBytes.
Status CheckMessageSize(std::size_t bytes);

}  // namespace roam::transport
