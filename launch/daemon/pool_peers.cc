#include "launch/daemon/pool_peers.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <chrono>
#include <cstring>
#include <string_view>
#include <utility>

#include "roam/transport/bootstrap.h"

namespace roam::daemon {
namespace {

transport::ByteView View(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}
std::string_view View(transport::ByteView b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
transport::Bytes ToBytes(std::string_view s) {
  const auto v = View(s);
  return {v.begin(), v.end()};
}

// The first IPv4 address of an interface that is up and not loopback: what
// `roam nodes` shows. "-" when there is none.
std::string HostAddress() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "-";
  std::string out = "-";
  for (ifaddrs* it = list; it != nullptr; it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET) continue;
    if ((it->ifa_flags & IFF_LOOPBACK) != 0 || (it->ifa_flags & IFF_UP) == 0) continue;
    char text[INET_ADDRSTRLEN] = {};
    const auto* in = reinterpret_cast<const sockaddr_in*>(it->ifa_addr);
    if (inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)) != nullptr) {
      out = text;
      break;
    }
  }
  freeifaddrs(list);
  return out;
}

std::uint64_t StartSequence() {
  // Increasing across restarts of this daemon (the replay windows of its
  // peers remember the highest sequence they saw).
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace

void ToWire(const Error& error, control::Error* out) {
  out->set_code(static_cast<int>(error.code()));
  out->set_message(error.message());
}

Error FromWire(const control::Error& error) {
  const auto code = ErrcFromValue(static_cast<std::uint32_t>(error.code()));
  return Error(code.value_or(Errc::kInternal), error.message());
}

PoolPeers::PoolPeers(EventLoop& loop, transport::Fabric& control, pool::PoolKey key,
                     std::string self, std::chrono::milliseconds timeout)
    : loop_(loop),
      control_(control),
      key_(std::move(key)),
      self_(std::move(self)),
      timeout_(timeout),
      receiver_(key_) {}

PoolPeers::~PoolPeers() { control_.Handle(kTag, nullptr); }

Result<std::unique_ptr<PoolPeers>> PoolPeers::Join(EventLoop& loop, transport::Bootstrap& boot,
                                                   transport::Fabric& control,
                                                   const transport::Bytes& data_address,
                                                   pool::PoolKey key, const PoolOptions& options,
                                                   Handler handler) {
  if (options.name.empty()) return MakeError(Errc::kInvalidArgument, "a node needs a name");
  ROAM_ASSIGN_OR_RETURN(const transport::Bytes control_address, control.Address());
  ROAM_TRY(boot.Put("roamd.name", View(options.name)));
  ROAM_TRY(boot.Put("roamd.host", View(HostAddress())));
  ROAM_TRY(boot.Put("roamd.control", control_address));
  ROAM_TRY(boot.Put("roamd.data", data_address));
  ROAM_TRY(boot.Put("roamd.board", options.board_key));
  ROAM_TRY(boot.Put("roamd.gossip", View(options.gossip)));
  ROAM_TRY(boot.Fence(options.join_timeout));

  std::unique_ptr<PoolPeers> peers(
      new PoolPeers(loop, control, std::move(key), options.name, options.request_timeout));
  for (int rank = 0; rank < boot.size(); ++rank) {
    Member m;
    m.rank = rank;
    ROAM_ASSIGN_OR_RETURN(const auto name, boot.Get(rank, "roamd.name"));
    m.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
    ROAM_ASSIGN_OR_RETURN(const auto host, boot.Get(rank, "roamd.host"));
    m.host.assign(reinterpret_cast<const char*>(host.data()), host.size());
    ROAM_ASSIGN_OR_RETURN(m.control, boot.Get(rank, "roamd.control"));
    ROAM_ASSIGN_OR_RETURN(m.data, boot.Get(rank, "roamd.data"));
    ROAM_ASSIGN_OR_RETURN(m.board, boot.Get(rank, "roamd.board"));
    ROAM_ASSIGN_OR_RETURN(const auto gossip, boot.Get(rank, "roamd.gossip"));
    m.gossip.assign(reinterpret_cast<const char*>(gossip.data()), gossip.size());
    if (peers->Find(m.name) != nullptr) {
      return MakeError(Errc::kInvalidArgument, "two nodes of the pool are named '{}'", m.name);
    }
    // The boards of one pool are read one way: windows of another gossip
    // would be misread.
    if (!options.gossip.empty() && !m.gossip.empty() && m.gossip != options.gossip) {
      return MakeError(Errc::kInvalidArgument,
                       "{} shares load by {} gossip and {} by {}: every node of a pool runs the "
                       "same roamd --gossip",
                       m.name, m.gossip, options.name, options.gossip);
    }
    peers->members_.push_back(std::move(m));
  }
  peers->endpoints_.resize(peers->members_.size());
  peers->handler_ = std::move(handler);
  PoolPeers* self = peers.get();
  control.Handle(kTag, [self](const transport::Message& request) { return self->Serve(request); });
  return peers;
}

const Member* PoolPeers::Find(std::string_view name) const {
  for (const auto& m : members_) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

Result<std::string> PoolPeers::SealFor(const std::string& to, std::uint32_t kind,
                                       const std::string& body) {
  auto [it, fresh] = sequences_.try_emplace(to, 0);
  if (fresh) it->second = StartSequence();
  pool::Header header;
  header.sender = self_;
  header.sequence = ++it->second;
  header.kind = kind;
  return pool::Seal(key_, header, body);
}

Result<transport::Bytes> PoolPeers::Seal(const std::string& to, std::uint32_t kind,
                                         const std::string& body) {
  ROAM_ASSIGN_OR_RETURN(const std::string sealed, SealFor(to, kind, body));
  return ToBytes(sealed);
}

Result<transport::Bytes> PoolPeers::Serve(const transport::Message& request) {
  // A message that does not open is counted by the receiver and refused
  // without a word on what was wrong beyond the code.
  ROAM_ASSIGN_OR_RETURN(const pool::Opened opened, receiver_.Accept(View(request.payload)));
  peer::Message message;
  peer::Reply reply;
  if (!message.ParseFromString(opened.body)) {
    ToWire(MakeError(Errc::kCorrupt, "unreadable pool message from '{}'", opened.header.sender),
           reply.mutable_error());
  } else if (auto answer = handler_(opened.header.sender, message); answer) {
    reply = std::move(*answer);
  } else {
    ToWire(answer.error(), reply.mutable_error());
  }
  return Seal(opened.header.sender, peer::Message::kReply, reply.SerializeAsString());
}

Result<transport::Endpoint*> PoolPeers::EndpointTo(const Member& member) {
  auto& ep = endpoints_[static_cast<std::size_t>(member.rank)];
  if (ep && !ep->status()) ep.reset();  // broken: try a new connection
  if (!ep) {
    auto fresh = control_.Connect(member.control);
    if (!fresh) return fresh.error();
    ep = std::move(*fresh);
  }
  return ep.get();
}

void PoolPeers::Send(const std::string& to, const peer::Message& message, ReplyCallback done) {
  const Member* member = Find(to);
  if (member == nullptr) {
    loop_.Defer([to, done] { done(MakeError(Errc::kNotFound, "no node '{}' in this pool", to)); });
    return;
  }
  if (to == self_) {
    loop_.Defer([this, message, done] {
      auto answer = handler_(self_, message);
      if (answer && answer->has_error()) {
        done(FromWire(answer->error()));
      } else {
        done(std::move(answer));
      }
    });
    return;
  }
  auto sealed =
      Seal(to, static_cast<std::uint32_t>(message.what_case()), message.SerializeAsString());
  if (!sealed) {
    loop_.Defer([err = sealed.error(), done] { done(err); });
    return;
  }
  auto ep = EndpointTo(*member);
  if (!ep) {
    loop_.Defer([err = ep.error().WithContext(fmt::format("node {}", to)), done] { done(err); });
    return;
  }
  const int rank = member->rank;
  const Status sent =
      (*ep)->Request(kTag, *sealed, timeout_, [this, rank, done](Result<transport::Bytes> raw) {
        const Member& m = members_[static_cast<std::size_t>(rank)];
        if (!raw) {
          done(raw.error().WithContext(fmt::format("node {}", m.name)));
          return;
        }
        auto opened = receiver_.Accept(View(*raw));
        if (!opened) {
          done(opened.error().WithContext(fmt::format("reply from node {}", m.name)));
          return;
        }
        peer::Reply reply;
        if (opened->header.kind != peer::Message::kReply || !reply.ParseFromString(opened->body)) {
          done(MakeError(Errc::kProtocol, "node {} sent an unreadable reply", m.name));
          return;
        }
        if (reply.has_error()) {
          done(FromWire(reply.error()));
          return;
        }
        done(std::move(reply));
      });
  if (!sent) {
    loop_.Defer([err = sent.error().WithContext(fmt::format("node {}", to)), done] { done(err); });
  }
}

}  // namespace roam::daemon
