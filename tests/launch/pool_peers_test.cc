// The daemons' authenticated messages (launch/daemon/pool_peers.h) over the
// fake transport: a member answers what is sealed with the pool key, and
// drops and counts garbage, a wrong key, another protocol version and
// replays, answering none of them with anything but a refusal.
#include "launch/daemon/pool_peers.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "launch/daemon/event_loop.h"
#include "launch/pool/envelope.h"
#include "roam/transport/fake.h"
#include "tests/support/test_util.h"

namespace roam::daemon {
namespace {

using transport::Bytes;
using transport::ByteView;

Bytes ToBytes(const std::string& s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

// The pool's key (32 bytes).
constexpr std::string_view kKey = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk";
static_assert(kKey.size() == 32);

class PoolPeersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    transport::FabricOptions options;
    options.name = "n1";
    victim_fabric_ = network_.AddNode(options).value();
    options.name = "intruder";
    intruder_ = network_.AddNode(options).value();
    loop_ = EventLoop::Create().value();
    auto key = pool::PoolKey::FromBytes(kKey);
    ASSERT_TRUE(key);
    PoolOptions pool;
    pool.name = "n1";
    auto boot = transport::OpenDirectoryBootstrap(dir_.path() / "boot", 0, 1);
    ASSERT_TRUE(boot) << boot.error().ToString();
    auto peers = PoolPeers::Join(
        *loop_, **boot, *victim_fabric_, Bytes{std::byte{1}}, std::move(*key), pool,
        [this](const std::string& sender, const peer::Message& m) -> Result<peer::Reply> {
          ++handled_;
          last_sender_ = sender;
          peer::Reply reply;
          if (m.has_node_status()) reply.mutable_node_status()->set_cpus(2);
          return reply;
        });
    ASSERT_TRUE(peers) << peers.error().ToString();
    peers_ = std::move(*peers);
    auto ep = intruder_->Connect(victim_fabric_->Address().value());
    ASSERT_TRUE(ep);
    ep_ = std::move(*ep);
  }

  // Sends raw bytes on the pool's tag; the reply or the refusal.
  Result<Bytes> Send(const Bytes& payload) {
    Result<Bytes> out = MakeError(Errc::kInternal, "no reply");
    bool done = false;
    if (auto s = ep_->Request(PoolPeers::kTag, payload, std::chrono::seconds(5),
                              [&](Result<Bytes> r) {
                                out = std::move(r);
                                done = true;
                              });
        !s) {
      return s.error();
    }
    transport::Fabric* fabrics[] = {victim_fabric_.get(), intruder_.get()};
    EXPECT_TRUE(transport::ProgressUntil(
        fabrics, [&] { return done; }, std::chrono::seconds(5)));
    return out;
  }

  static std::string Status(std::uint64_t sequence, const pool::PoolKey& key,
                            std::uint32_t version = pool::kPoolWireVersion) {
    peer::Message m;
    m.mutable_node_status();
    pool::Header h{"n2", sequence, static_cast<std::uint32_t>(peer::Message::kNodeStatus)};
    return pool::internal::SealAtVersion(key, version, h, m.SerializeAsString()).value();
  }

  testing::TempDir dir_;
  transport::FakeNetwork network_;
  std::unique_ptr<transport::Fabric> victim_fabric_;
  std::unique_ptr<transport::Fabric> intruder_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<PoolPeers> peers_;
  std::unique_ptr<transport::Endpoint> ep_;
  int handled_ = 0;
  std::string last_sender_;
};

TEST_F(PoolPeersTest, AnswersSealedMessagesAndDropsTheRest) {
  const auto key = pool::PoolKey::FromBytes(kKey).value();
  const auto wrong = pool::PoolKey::FromBytes(std::string(32, 'w')).value();

  // Sealed with the pool key: handled, and the reply is sealed too.
  auto reply = Send(ToBytes(Status(10, key)));
  ASSERT_TRUE(reply) << reply.error().ToString();
  EXPECT_EQ(handled_, 1);
  EXPECT_EQ(last_sender_, "n2");
  auto opened = pool::Open(
      key, std::string_view(reinterpret_cast<const char*>(reply->data()), reply->size()));
  ASSERT_TRUE(opened) << opened.error().ToString();
  peer::Reply r;
  ASSERT_TRUE(r.ParseFromString(opened->body));
  EXPECT_EQ(r.node_status().cpus(), 2);

  // Refused, never handled, each counted once under its reason.
  EXPECT_FALSE(Send(ToBytes("not an envelope")));
  EXPECT_FALSE(Send(ToBytes(Status(11, wrong))));
  EXPECT_FALSE(Send(ToBytes(Status(12, key, pool::kPoolWireVersion + 1))));
  EXPECT_FALSE(Send(ToBytes(Status(10, key))));  // a replay of the first
  EXPECT_EQ(handled_, 1);
  pool::DropCounters expected;
  expected.malformed = 1;
  expected.bad_mac = 1;
  expected.bad_version = 1;
  expected.replayed = 1;
  EXPECT_EQ(peers_->counters(), expected);

  // And a fresh sequence is served again.
  EXPECT_TRUE(Send(ToBytes(Status(13, key))));
  EXPECT_EQ(handled_, 2);
}

// A pool's load boards are read one way: two nodes whose boards are
// written by different gossip refuse to form a pool, each saying why; a
// node without a board (balance off) joins either.
TEST(PoolPeersGossipTest, NodesWithDifferentGossipRefuseToFormAPool) {
  testing::TempDir dir;
  // Each node joins on a thread of its own, with a network of its own
  // (Join only publishes addresses; nothing connects).
  auto join = [&](const std::string& name, int rank, int size, const std::string& gossip,
                  const std::string& boot) -> Status {
    transport::FakeNetwork network;
    auto fabric = network.AddNode({.name = name});
    if (!fabric) return fabric.error();
    ROAM_ASSIGN_OR_RETURN(auto loop, EventLoop::Create());
    ROAM_ASSIGN_OR_RETURN(auto key, pool::PoolKey::FromBytes(kKey));
    ROAM_ASSIGN_OR_RETURN(auto bootstrap,
                          transport::OpenDirectoryBootstrap(dir.path() / boot, rank, size));
    PoolOptions pool;
    pool.name = name;
    pool.join_timeout = std::chrono::seconds(10);
    if (!gossip.empty()) {
      pool.board_key = Bytes{std::byte{7}};
      pool.gossip = gossip;
    }
    ROAM_ASSIGN_OR_RETURN(
        auto peers,
        PoolPeers::Join(
            *loop, *bootstrap, **fabric, Bytes{std::byte{1}}, std::move(key), pool,
            [](const std::string&, const peer::Message&) -> Result<peer::Reply> { return {}; }));
    return Ok();
  };
  auto pair = [&](const std::string& a, const std::string& b, const std::string& boot) {
    Status second = Ok();
    std::thread t([&] { second = join("n2", 1, 2, b, boot); });
    Status first = join("n1", 0, 2, a, boot);
    t.join();
    return std::pair{first, second};
  };
  auto [mosix, anti] = pair("mosix", "antitask", "mixed");
  ASSERT_FALSE(mosix.has_value());
  ASSERT_FALSE(anti.has_value());
  EXPECT_EQ(mosix.error().message(),
            "n2 shares load by antitask gossip and n1 by mosix: every node of a pool runs the "
            "same roamd --gossip");
  EXPECT_NE(anti.error().message().find("n1 shares load by mosix gossip"), std::string::npos);
  auto [same1, same2] = pair("antitask", "antitask", "same");
  EXPECT_TRUE(same1.has_value()) << same1.error().ToString();
  EXPECT_TRUE(same2.has_value()) << same2.error().ToString();
  auto [off, with] = pair("", "antitask", "off");
  EXPECT_TRUE(off.has_value()) << off.error().ToString();
  EXPECT_TRUE(with.has_value()) << with.error().ToString();
}

}  // namespace
}  // namespace roam::daemon
