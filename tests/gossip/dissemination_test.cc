// MOSIX dissemination over the fake transport: a pool of nodes, each
// writing its window into two random peers' boards every tick.
#include "roam/gossip/dissemination.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <vector>

#include "roam/transport/fake.h"
#include "tests/gossip/board_mesh.h"

namespace roam::gossip {
namespace {

class DisseminationTest : public ::testing::Test {
 protected:
  void Start(std::uint32_t nodes, Disseminator::Options options) {
    for (std::uint32_t i = 0; i < nodes; ++i) {
      auto fabric = net_.AddNode({.name = fmt::format("n{}", i)});
      ASSERT_TRUE(fabric.has_value()) << fabric.error().ToString();
      options.seed = i + 1;
      auto node = Disseminator::Create(**fabric, i, options);
      ASSERT_TRUE(node.has_value()) << node.error().ToString();
      fabrics_.push_back(std::move(*fabric));
      nodes_.push_back(std::move(*node));
      load_.push_back(500);
    }
    mesh_.Connect(fabrics_, nodes_);
  }

  // Every node samples (its sequence is the tick) and writes; then the
  // network delivers everything.
  void Tick() {
    ++tick_;
    for (std::uint32_t i = 0; i < nodes_.size(); ++i) {
      if (dead_.contains(i)) continue;
      const load::LoadVector own(i, 1, tick_, tick_ * kTickNs, load_[i], 1000, 1024, 0, 0,
                                 load::kAccepting);
      ASSERT_TRUE(nodes_[i]->Tick(own, mesh_.peers[i]).has_value());
    }
    for (int round = 0; round < 4; ++round) {
      for (auto& f : fabrics_) f->Progress();
    }
  }

  // How many live nodes know `node` with a load of `load_milli`.
  std::size_t Knowing(std::uint32_t node, std::uint32_t load_milli) const {
    std::size_t n = 0;
    for (std::uint32_t i = 0; i < nodes_.size(); ++i) {
      if (i == node || dead_.contains(i)) continue;
      auto v = nodes_[i]->view().Find(node);
      if (v && v->load_milli() == load_milli) ++n;
    }
    return n;
  }

  static constexpr std::uint64_t kTickNs = 1'000'000'000;
  // Destroyed in reverse: keys, endpoints, nodes, fabrics, then the network.
  transport::FakeNetwork net_;
  std::vector<std::unique_ptr<transport::Fabric>> fabrics_;
  std::vector<std::unique_ptr<Disseminator>> nodes_;
  BoardMesh mesh_;
  std::vector<std::uint32_t> load_;
  std::set<std::uint32_t> dead_;
  std::uint64_t tick_ = 0;
};

// Between ticks a reader merges what landed since its own tick: two nodes,
// each writing to the other.
TEST_F(DisseminationTest, RefreshMergesWhatLandedSinceTheLastTick) {
  Start(2, {.shape = {.window = 4, .slots = 8}, .fanout = 1, .view_capacity = 4, .seed = 1});
  // A tick scans first, then writes; its puts land after it. So at its
  // second tick node 1 reads node 0's first vector, and node 0's second
  // lands after.
  Tick();
  Tick();
  ASSERT_TRUE(nodes_[1]->view().Find(0).has_value());
  EXPECT_EQ(nodes_[1]->view().Find(0)->sequence(), 1u);
  nodes_[1]->Refresh();
  ASSERT_TRUE(nodes_[1]->view().Find(0).has_value());
  EXPECT_EQ(nodes_[1]->view().Find(0)->sequence(), 2u);
  EXPECT_EQ(nodes_[1]->counts().puts, 2u);  // Refresh writes nothing
  nodes_[1]->Refresh();                     // nothing new
  EXPECT_EQ(nodes_[1]->view().Find(0)->sequence(), 2u);
  EXPECT_EQ(nodes_[1]->counts().board.torn, 0u);
}

TEST_F(DisseminationTest, ALoadChangeReachesEveryNodeWithinAFewTicks) {
  Start(40, {.shape = {.window = 8, .slots = 32}, .fanout = 2, .view_capacity = 64, .seed = 1});
  for (int t = 0; t < 10; ++t) Tick();
  load_[7] = 3000;
  int ticks = 0;
  while (Knowing(7, 3000) < 39 && ticks < 100) {
    Tick();
    ++ticks;
  }
  EXPECT_EQ(Knowing(7, 3000), 39u);
  // log2(40) is about 5: an epidemic with two writes per tick and relays
  // reaches everyone in a few times that.
  EXPECT_LE(ticks, 25) << "ticks until every node knew";
  RecordProperty("ticks_to_all", ticks);

  // Each live node wrote its window to two peers every tick; nothing tore
  // (the fake network lands a put whole) and every node heard from others.
  for (const auto& node : nodes_) {
    const DisseminationCounts c = node->counts();
    EXPECT_EQ(c.ticks, tick_);
    EXPECT_EQ(c.puts + 2 * c.busy_ticks, 2 * tick_);
    EXPECT_EQ(c.put_failures, 0u);
    EXPECT_EQ(c.board.torn, 0u);
    EXPECT_GT(c.board.windows, 0u);
    EXPECT_GE(node->view().peers().size(), 30u);
  }
}

TEST_F(DisseminationTest, AViewSmallerThanThePoolStaysSmallAndFresh) {
  Start(60, {.shape = {.window = 4, .slots = 8}, .fanout = 2, .view_capacity = 12, .seed = 1});
  for (int t = 0; t < 30; ++t) Tick();
  for (const auto& node : nodes_) {
    const auto peers = node->view().peers();
    EXPECT_LE(peers.size(), 12u);
    // What it knows was sampled recently: a few ticks ago at most.
    for (const load::LoadVector& v : peers) {
      EXPECT_LE(tick_ - v.sequence(), 8u) << "node " << v.node();
    }
  }
}

TEST_F(DisseminationTest, ALostPeerCostsOnlyFailedPuts) {
  Start(10, {.shape = {.window = 4, .slots = 8}, .fanout = 3, .view_capacity = 16, .seed = 1});
  for (int t = 0; t < 3; ++t) Tick();
  ASSERT_TRUE(net_.Kill("n4").has_value());
  dead_.insert(4);
  for (int t = 0; t < 20; ++t) Tick();
  std::uint64_t failures = 0;
  for (std::uint32_t i = 0; i < nodes_.size(); ++i) {
    if (i != 4) failures += nodes_[i]->counts().put_failures;
  }
  EXPECT_GT(failures, 0u);
  load_[2] = 2500;
  for (int t = 0; t < 20; ++t) Tick();
  EXPECT_EQ(Knowing(2, 2500), 8u);
}

// A put's completion that runs after its writer is gone does nothing; not
// even to a writer made since, which may hold the same registry slot.
TEST(DisseminationLifetimeTest, ACompletionAfterItsWriterIsGoneTouchesNoOtherWriter) {
  transport::FakeNetwork net;
  auto a = net.AddNode({.name = "a"});
  auto b = net.AddNode({.name = "b"});
  ASSERT_TRUE(a.has_value() && b.has_value());
  const Disseminator::Options options{
      .shape = {.window = 4, .slots = 8}, .fanout = 1, .view_capacity = 4, .seed = 1};
  auto target = Disseminator::Create(**b, 1, options);
  ASSERT_TRUE(target.has_value());
  auto key = (*target)->PackBoardKey();
  ASSERT_TRUE(key.has_value());
  auto address = (*b)->Address();
  ASSERT_TRUE(address.has_value());
  auto ep = (*a)->Connect(*address);
  ASSERT_TRUE(ep.has_value());
  auto board = (*ep)->UnpackKey(*key);
  ASSERT_TRUE(board.has_value());
  const std::vector<BoardPeer> peers{{1, ep->get(), board->get()}};
  const load::LoadVector own(0, 1, 1, 1, 500, 1000, 1024, 0, 0, load::kAccepting);

  // Four puts in flight (one a tick, from each of the four buffers), their
  // writer destroyed before any completes.
  auto first = Disseminator::Create(**a, 0, options);
  ASSERT_TRUE(first.has_value());
  for (int tick = 0; tick < 4; ++tick) ASSERT_TRUE((*first)->Tick(own, peers).has_value());
  first->reset();
  auto second = Disseminator::Create(**a, 0, options);
  ASSERT_TRUE(second.has_value());
  // The four puts land and their acks come back: the completions run.
  for (int round = 0; round < 4; ++round) {
    (*b)->Progress();
    (*a)->Progress();
  }
  EXPECT_EQ(net.in_flight(), 0u);
  // Had they counted on the second writer, its buffers would read as busy
  // (or its failures as more than none).
  for (int tick = 0; tick < 8; ++tick) {
    ASSERT_TRUE((*second)->Tick(own, peers).has_value());
    for (int round = 0; round < 2; ++round) {
      (*b)->Progress();
      (*a)->Progress();
    }
  }
  const DisseminationCounts c = (*second)->counts();
  EXPECT_EQ(c.puts, 8u);
  EXPECT_EQ(c.busy_ticks, 0u);
  EXPECT_EQ(c.put_failures, 0u);
  board->reset();
  ep->reset();
}

TEST(DisseminationOptionsTest, AZeroFanoutOrBadShapeIsRefused) {
  transport::FakeNetwork net;
  auto fabric = net.AddNode({.name = "n0"});
  ASSERT_TRUE(fabric.has_value());
  auto none =
      Disseminator::Create(**fabric, 0, {.shape = {}, .fanout = 0, .view_capacity = 64, .seed = 1});
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code(), Errc::kInvalidArgument);
  EXPECT_FALSE(
      Disseminator::Create(
          **fabric, 0,
          {.shape = {.window = 0, .slots = 8}, .fanout = 2, .view_capacity = 64, .seed = 1})
          .has_value());
}

}  // namespace
}  // namespace roam::gossip
