// Lau et al.'s anti-tasks over the fake transport: light nodes' requests for
// work travel to heavy nodes, which keep them and tell the origin.
#include "roam/gossip/anti_tasks.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "roam/transport/fake.h"
#include "tests/gossip/board_mesh.h"

namespace roam::gossip {
namespace {

constexpr std::uint64_t kTickNs = 1'000'000'000;

load::LoadVector Vector(std::uint32_t node, std::uint64_t tick, std::uint32_t load_milli) {
  return load::LoadVector(node, 1, tick, tick * kTickNs, load_milli, 1000, 1024, 0, 0,
                          load::kAccepting);
}

TEST(AntiTaskStateTest, ThresholdsSplitLightNormalAndHeavy) {
  const AntiTaskThresholds t{.light_below = 0.5, .heavy_above = 1.0};
  EXPECT_EQ(StateOf(Vector(1, 1, 0), t), LoadState::kLight);
  EXPECT_EQ(StateOf(Vector(1, 1, 499), t), LoadState::kLight);
  EXPECT_EQ(StateOf(Vector(1, 1, 500), t), LoadState::kNormal);
  EXPECT_EQ(StateOf(Vector(1, 1, 1000), t), LoadState::kNormal);
  EXPECT_EQ(StateOf(Vector(1, 1, 1001), t), LoadState::kHeavy);
  // Idle but taking no guests (draining): wants no work.
  EXPECT_EQ(StateOf(load::LoadVector(1, 1, 1, kTickNs, 0, 1000, 1024, 0, 0, load::kDraining), t),
            LoadState::kNormal);
}

class AntiTasksTest : public ::testing::Test {
 protected:
  // `loads[i]`: node i's runnable tasks x 1000 on one CPU; every node may
  // write to every other.
  void Start(std::vector<std::uint32_t> loads, AntiTasks::Options options) {
    load_ = std::move(loads);
    const auto nodes = static_cast<std::uint32_t>(load_.size());
    for (std::uint32_t i = 0; i < nodes; ++i) {
      auto fabric = net_.AddNode({.name = fmt::format("n{}", i)});
      ASSERT_TRUE(fabric.has_value()) << fabric.error().ToString();
      options.seed = i + 1;
      auto node = AntiTasks::Create(**fabric, i, options);
      ASSERT_TRUE(node.has_value()) << node.error().ToString();
      fabrics_.push_back(std::move(*fabric));
      nodes_.push_back(std::move(*node));
    }
    mesh_.Connect(fabrics_, nodes_);
  }

  // Every node ticks; then the network delivers everything. Returns the
  // pulls of this tick, by node.
  std::vector<std::vector<Pull>> Tick() {
    ++tick_;
    std::vector<std::vector<Pull>> pulls(nodes_.size());
    for (std::uint32_t i = 0; i < nodes_.size(); ++i) {
      EXPECT_TRUE(nodes_[i]->Tick(Vector(i, tick_, load_[i]), mesh_.peers[i]).has_value());
      const auto p = nodes_[i]->pulls();
      pulls[i].assign(p.begin(), p.end());
    }
    for (int round = 0; round < 4; ++round) {
      for (auto& f : fabrics_) f->Progress();
    }
    return pulls;
  }

  std::uint64_t Puts() const {
    std::uint64_t n = 0;
    for (const auto& node : nodes_) n += node->counts().launched + node->counts().forwarded;
    return n;
  }

  transport::FakeNetwork net_;
  std::vector<std::unique_ptr<transport::Fabric>> fabrics_;
  std::vector<std::unique_ptr<AntiTasks>> nodes_;
  BoardMesh mesh_;
  std::vector<std::uint32_t> load_;
  std::uint64_t tick_ = 0;
};

const AntiTasks::Options kOptions{.shape = {.window = 4, .slots = 16},
                                  .thresholds = {.light_below = 0.5, .heavy_above = 1.0},
                                  .view_capacity = 16};

// One light node, one heavy node, eight normal ones: the light node's
// anti-tasks wander until one reaches the heavy node, which keeps it and
// answers; from then on they go straight there.
TEST_F(AntiTasksTest, AnAntiTaskFindsTheHeavyNodeAndTheNextGoesStraightThere) {
  std::vector<std::uint32_t> loads(10, 800);
  loads[0] = 0;     // light
  loads[7] = 3000;  // heavy
  Start(loads, kOptions);
  int first = 0;
  std::vector<std::uint32_t> hops;
  for (int t = 1; t <= 40; ++t) {
    const auto pulls = Tick();
    for (std::uint32_t i = 0; i < pulls.size(); ++i) {
      if (i != 7) {
        EXPECT_TRUE(pulls[i].empty()) << "node " << i << " is not heavy";
      }
    }
    for (const Pull& p : pulls[7]) {
      EXPECT_EQ(p.origin.node(), 0u);
      EXPECT_LT(p.hops, 4u);
      if (first == 0) first = t;
      hops.push_back(p.hops);
    }
    // Where the heavy node may move processes: the light node, once.
    const auto origins = nodes_[7]->origins();
    ASSERT_EQ(origins.size(), pulls[7].empty() ? 0u : 1u);
    if (!origins.empty()) {
      EXPECT_EQ(origins[0].node(), 0u);
      EXPECT_EQ(origins[0].sampled_ns(), nodes_[7]->view().Find(0)->sampled_ns());
    }
  }
  ASSERT_GT(first, 0) << "no anti-task reached the heavy node";
  EXPECT_LE(first, 20);
  // Told where work is, the light node sends its anti-tasks straight to the
  // heavy node: one a tick, none passed on.
  ASSERT_GE(hops.size(), 30u);
  EXPECT_EQ(hops.back(), 0u);
  EXPECT_GE(std::count(hops.begin(), hops.end(), 0u), 30);
  // The heavy node learned of the light one from the trajectories.
  EXPECT_TRUE(nodes_[7]->view().Find(0).has_value());
  for (const auto& node : nodes_) {
    EXPECT_EQ(node->counts().put_failures, 0u);
    EXPECT_EQ(node->counts().board.torn, 0u);
  }
}

// Nobody light: nothing is sent at all.
TEST_F(AntiTasksTest, WithoutALightNodeNothingTravels) {
  std::vector<std::uint32_t> loads(6, 800);
  loads[2] = 4000;
  Start(loads, kOptions);
  for (int t = 0; t < 10; ++t) Tick();
  EXPECT_EQ(Puts(), 0u);
}

// Nobody heavy: each anti-task ends once its trajectory is full, so a
// light node's anti-tasks cost at most `window` puts each.
TEST_F(AntiTasksTest, WithoutAHeavyNodeEachAntiTaskEndsAfterAFewHops) {
  std::vector<std::uint32_t> loads(8, 800);
  loads[3] = 100;
  Start(loads, kOptions);
  for (int t = 0; t < 20; ++t) Tick();
  std::uint64_t launched = 0;
  std::uint64_t forwarded = 0;
  std::uint64_t ended = 0;
  for (const auto& node : nodes_) {
    launched += node->counts().launched;
    forwarded += node->counts().forwarded;
    ended += node->counts().ended;
    EXPECT_EQ(node->counts().pulled, 0u);
  }
  EXPECT_EQ(launched, 20u);
  // Passed on at most window - 1 times each (its trajectory then full).
  EXPECT_LE(forwarded, launched * (kOptions.shape.window - 1));
  // Most have ended; the last few still travel, and one passed on into a
  // slot another overwrote before the next scan is gone.
  EXPECT_GE(ended, launched * 3 / 4);
}

TEST(AntiTasksCreateTest, BadOptionsAreRefusedInOneLine) {
  transport::FakeNetwork net;
  auto fabric = net.AddNode({.name = "n0"});
  ASSERT_TRUE(fabric.has_value());
  AntiTasks::Options narrow_options = kOptions;
  narrow_options.shape.window = 1;
  auto narrow = AntiTasks::Create(**fabric, 0, narrow_options);
  ASSERT_FALSE(narrow.has_value());
  EXPECT_NE(narrow.error().message().find("no room for a trajectory"), std::string::npos);
  AntiTasks::Options inverted_options = kOptions;
  inverted_options.thresholds = {.light_below = 1.0, .heavy_above = 0.5};
  auto inverted = AntiTasks::Create(**fabric, 0, inverted_options);
  ASSERT_FALSE(inverted.has_value());
  EXPECT_NE(inverted.error().message().find("must be under"), std::string::npos);
}

}  // namespace
}  // namespace roam::gossip
