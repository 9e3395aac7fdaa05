#include "transport/requests.h"

#include <utility>
#include <vector>

#include "roam/base/error_wire.h"

namespace roam::transport {

std::uint64_t PendingRequests::Add(Clock::time_point deadline, ReplyHandler on_reply) {
  const std::uint64_t id = next_id_++;
  by_id_.emplace(id, Entry{deadline, std::move(on_reply)});
  by_deadline_.emplace(deadline, id);
  return id;
}

bool PendingRequests::Complete(std::uint64_t id, Result<Bytes> reply) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return false;
  Entry entry = std::move(it->second);
  by_id_.erase(it);
  auto [first, last] = by_deadline_.equal_range(entry.deadline);
  for (auto d = first; d != last; ++d) {
    if (d->second == id) {
      by_deadline_.erase(d);
      break;
    }
  }
  if (entry.on_reply) entry.on_reply(std::move(reply));
  return true;
}

void PendingRequests::Forget(std::uint64_t id) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  it->second.on_reply = nullptr;
  Complete(id, Bytes{});
}

unsigned PendingRequests::Expire(Clock::time_point now, std::string_view peer) {
  std::vector<std::uint64_t> expired;
  for (auto it = by_deadline_.begin(); it != by_deadline_.end() && it->first <= now; ++it) {
    expired.push_back(it->second);
  }
  for (std::uint64_t id : expired) {
    Complete(id, MakeError(Errc::kTimeout, "no reply from {} in time", peer));
  }
  return static_cast<unsigned>(expired.size());
}

unsigned PendingRequests::FailAll(const Error& error) {
  std::vector<std::uint64_t> ids;
  ids.reserve(by_id_.size());
  for (const auto& [id, entry] : by_id_) ids.push_back(id);
  for (std::uint64_t id : ids) Complete(id, error);
  return static_cast<unsigned>(ids.size());
}

std::optional<Clock::time_point> PendingRequests::next_deadline() const {
  if (by_deadline_.empty()) return std::nullopt;
  return by_deadline_.begin()->first;
}

void RequestRouter::Handle(std::uint16_t tag, RequestHandler handler) {
  handlers_[tag] = std::move(handler);
}

std::pair<wire::MessageHeader, Bytes> RequestRouter::Dispatch(const wire::MessageHeader& request,
                                                              ByteView payload) const {
  wire::MessageHeader reply{wire::MessageKind::kReply, request.tag, request.request_id};
  Result<Bytes> result = [&]() -> Result<Bytes> {
    auto it = handlers_.find(request.tag);
    if (it == handlers_.end()) {
      return MakeError(Errc::kNotFound, "no handler for message tag {}", request.tag);
    }
    // A copy runs: the handler may replace itself (Fabric::Handle) while it
    // runs.
    const RequestHandler handler = it->second;
    return handler(Message{request.tag, payload});
  }();
  if (result.has_value()) {
    if (Status size = CheckMessageSize(result->size()); !size.has_value()) {
      result = size.error().WithContext("reply");
    }
  }
  if (result.has_value()) return {reply, std::move(*result)};
  reply.kind = wire::MessageKind::kErrorReply;
  const std::string encoded = EncodeError(result.error());
  const auto* p = reinterpret_cast<const std::byte*>(encoded.data());
  return {reply, Bytes(p, p + encoded.size())};
}

Result<Bytes> ReplyResult(const wire::MessageHeader& header, ByteView payload) {
  if (header.kind == wire::MessageKind::kReply) return Bytes(payload.begin(), payload.end());
  Result<Error> error =
      DecodeError({reinterpret_cast<const char*>(payload.data()), payload.size()});
  if (!error.has_value()) return error.error().WithContext("error reply");
  return *error;
}

Status CheckMessageSize(std::size_t bytes) {
  if (bytes > kMaxMessageBytes) {
    return MakeError(Errc::kInvalidArgument, "message of {} bytes exceeds the limit of {}", bytes,
                     kMaxMessageBytes);
  }
  return Ok();
}

}  // namespace roam::transport
