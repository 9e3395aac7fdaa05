// A roamd's view of its pool: who the members are (learned once, at start,
// through a bootstrap: a shared directory for the local pool, a TCP
// rendezvous for a host list, the launcher's PMIx under srun or mpirun), a
// control endpoint to each, and
// the authenticated request/reply between daemons: every message and every
// reply is a sealed envelope (launch/pool/envelope.h) under the pool key,
// carried as a transport request on one tag. What fails authentication,
// the version check or parsing is dropped and counted (counters()).
//
// Membership is fixed for the life of the pool: a member that stops
// answering stays a member (requests to it fail), never removed.
//
// Thread-safety: one thread (the daemon's event loop, which progresses the
// control fabric). Lifetime: the fabric must outlive this object; replies
// arriving after it is destroyed are dropped by the fabric with the
// endpoints.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "launch/daemon/event_loop.h"
#include "launch/daemon/peer.pb.h"
#include "launch/pool/envelope.h"
#include "launch/pool/pool_key.h"
#include "roam/base/error.h"
#include "roam/transport/bootstrap.h"
#include "roam/transport/transport.h"

namespace roam::daemon {

struct Member {
  std::string name;
  int rank = 0;
  std::string host;          // an address for people (roam nodes)
  transport::Bytes control;  // control fabric address
  transport::Bytes data;     // migration fabric address
  transport::Bytes board;    // its load board's key on the control fabric; empty: none
  std::string gossip;        // how its board is written (roamd --gossip); empty: none
};

struct PoolOptions {
  std::string name;  // this node's name (n1, ...)
  std::chrono::milliseconds join_timeout{30'000};
  std::chrono::milliseconds request_timeout{5'000};
  // This node's load board key (Balancer::PackBoardKey) and its gossip
  // (GossipKindName); empty: no board. Every member with a board must run
  // the same gossip, or Join refuses.
  transport::Bytes board_key;
  std::string gossip;
};

class PoolPeers final {
 public:
  // Transport tag of every pool message.
  static constexpr std::uint16_t kTag = 0x5000;

  using Handler =
      std::function<Result<peer::Reply>(const std::string& sender, const peer::Message& message)>;
  using ReplyCallback = std::function<void(Result<peer::Reply>)>;

  // Publishes this node (name, host, the two fabric addresses) through
  // `boot`, whose rank and size are this node's and the pool's, waits for
  // every member (join_timeout: one fence round) and starts serving
  // `handler` on the control fabric. Blocks: call before the event loop runs.
  static Result<std::unique_ptr<PoolPeers>> Join(EventLoop& loop, transport::Bootstrap& boot,
                                                 transport::Fabric& control,
                                                 const transport::Bytes& data_address,
                                                 pool::PoolKey key, const PoolOptions& options,
                                                 Handler handler);
  ~PoolPeers();
  PoolPeers(const PoolPeers&) = delete;
  PoolPeers& operator=(const PoolPeers&) = delete;

  const std::string& self() const { return self_; }
  const std::vector<Member>& members() const { return members_; }
  // nullptr for a name that is not a member.
  const Member* Find(std::string_view name) const;

  // Sends `message` to member `to` (itself included: handled at once,
  // without the network, on the loop's next iteration). `done` runs once,
  // never before Send returns, from the event loop, with the
  // reply, a refusal from the peer, or kUnavailable / kTimeout.
  void Send(const std::string& to, const peer::Message& message, ReplyCallback done);

  const pool::DropCounters& counters() const { return receiver_.counters(); }

  // Seals `body` under the pool key for member `to` (a message that goes
  // another way than Send: a migrating guest's record on the data fabric).
  Result<std::string> SealFor(const std::string& to, std::uint32_t kind, const std::string& body);
  const pool::PoolKey& key() const { return key_; }

  // The control endpoint to `member`, connected on first use.
  Result<transport::Endpoint*> EndpointTo(const Member& member);

 private:
  PoolPeers(EventLoop& loop, transport::Fabric& control, pool::PoolKey key, std::string self,
            std::chrono::milliseconds timeout);
  Result<transport::Bytes> Seal(const std::string& to, std::uint32_t kind, const std::string& body);
  Result<transport::Bytes> Serve(const transport::Message& request);

  EventLoop& loop_;
  transport::Fabric& control_;
  pool::PoolKey key_;
  std::string self_;
  std::chrono::milliseconds timeout_;
  // Per destination: a receiver's replay window sees one sender's
  // messages to it only, so one counter per receiver keeps them in order
  // however many go elsewhere meanwhile. Each starts from the clock, so
  // they increase across restarts of this daemon too.
  std::map<std::string, std::uint64_t> sequences_;
  pool::Receiver receiver_;
  Handler handler_;
  std::vector<Member> members_;
  std::vector<std::unique_ptr<transport::Endpoint>> endpoints_;  // by rank
};

// Converts an error to its wire form and back.
void ToWire(const Error& error, control::Error* out);
Error FromWire(const control::Error& error);

}  // namespace roam::daemon
