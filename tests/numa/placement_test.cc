#include "roam/numa/placement.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "roam/numa/topology.h"

namespace roam::numa {
namespace {

class PlacementTest : public testing::Test {
 protected:
  static Topology Synthetic(std::string_view description) {
    auto t = Topology::FromSynthetic(description);
    EXPECT_TRUE(t.has_value()) << t.error().ToString();
    return std::move(t).value();
  }

  // Chooses a placement for `cores` cores and takes it.
  Placement Place(const Topology& topology, int cores = 1) {
    auto p = ChoosePlacement(topology, ledger_, cores);
    EXPECT_TRUE(p.has_value()) << p.error().ToString();
    if (!p.has_value()) return {};
    ledger_.Take(*p);
    return *p;
  }

  CoreLedger ledger_;
};

using FreeCores = std::array<std::uint8_t, 8>;

TEST_F(PlacementTest, TopologyListsCoresByNumaNode) {
  const Topology t = Synthetic("pack:2 numa:2 core:4 pu:2");
  const std::vector<NumaNodeCores> nodes = t.CoresByNumaNode();
  ASSERT_EQ(nodes.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(nodes[i].os_index, i);
    ASSERT_EQ(nodes[i].cores.size(), 4u);
    EXPECT_EQ(nodes[i].cores[0], (CpuSet{8 * i, 8 * i + 1}));
    EXPECT_EQ(nodes[i].cores[3], (CpuSet{8 * i + 6, 8 * i + 7}));
  }
}

TEST_F(PlacementTest, FirstPlacementsSpreadOverNumaNodes) {
  const Topology t = Synthetic("pack:2 numa:2 core:4 pu:2");
  EXPECT_EQ(Place(t), (Placement{.numa_node = 0, .cpus = {0, 1}}));
  EXPECT_EQ(Place(t), (Placement{.numa_node = 1, .cpus = {8, 9}}));
  EXPECT_EQ(Place(t), (Placement{.numa_node = 2, .cpus = {16, 17}}));
  EXPECT_EQ(Place(t), (Placement{.numa_node = 3, .cpus = {24, 25}}));
  // Every node has 3 free cores now: back to node 0, its next whole core.
  EXPECT_EQ(Place(t), (Placement{.numa_node = 0, .cpus = {2, 3}}));
  EXPECT_EQ(Place(t).ToString(), "node 1 cpus 10-11");
}

TEST_F(PlacementTest, FourCoresFillAFourCoreNode) {
  const Topology t = Synthetic("pack:2 numa:2 core:4 pu:2");
  EXPECT_EQ(Place(t, 4), (Placement{.numa_node = 0, .cpus = {0, 1, 2, 3, 4, 5, 6, 7}}));
  EXPECT_EQ(Place(t, 4).ToString(), "node 1 cpus 8-15");
  // A single core goes where cores are free, not beside the full nodes.
  EXPECT_EQ(Place(t).ToString(), "node 2 cpus 16-17");
  // Node 3 has 4 free cores, node 2 only 3.
  EXPECT_EQ(Place(t, 4).ToString(), "node 3 cpus 24-31");
}

TEST_F(PlacementTest, MoreCoresThanAnyNodeHasIsRefused) {
  const Topology t = Synthetic("pack:2 numa:2 core:4 pu:2");
  auto p = ChoosePlacement(t, ledger_, 5);
  ASSERT_FALSE(p.has_value());
  EXPECT_EQ(p.error().code(), Errc::kResourceExhausted);
  EXPECT_NE(p.error().message().find("needs 5 cores"), std::string::npos) << p.error().ToString();
  auto zero = ChoosePlacement(t, ledger_, 0);
  ASSERT_FALSE(zero.has_value());
  EXPECT_EQ(zero.error().code(), Errc::kInvalidArgument);
}

TEST_F(PlacementTest, FullNodesFallBackToLeastSharedCores) {
  const Topology t = Synthetic("numa:4 core:2 pu:1");
  std::vector<std::string> first;
  first.reserve(8);
  for (int i = 0; i < 8; ++i) first.push_back(Place(t).ToString());
  EXPECT_EQ(first, (std::vector<std::string>{"node 0 cpus 0", "node 1 cpus 2", "node 2 cpus 4",
                                             "node 3 cpus 6", "node 0 cpus 1", "node 1 cpus 3",
                                             "node 2 cpus 5", "node 3 cpus 7"}));
  EXPECT_EQ(FreeCoresPerNumaNode(t, ledger_), FreeCores{});
  // All full: each next process goes to a core with the fewest processes.
  EXPECT_EQ(Place(t).ToString(), "node 0 cpus 0");
  EXPECT_EQ(Place(t).ToString(), "node 0 cpus 1");
  EXPECT_EQ(Place(t).ToString(), "node 1 cpus 2");
  EXPECT_EQ(ledger_.users(0), 2);
  // Two cores at once on full nodes: the pair with the fewest sharers.
  EXPECT_EQ(Place(t, 2).ToString(), "node 2 cpus 4-5");
}

TEST_F(PlacementTest, ReleaseFreesTheCores) {
  const Topology t = Synthetic("core:2 pu:1");
  const Placement a = Place(t);
  const Placement b = Place(t);
  EXPECT_EQ(a.ToString(), "node 0 cpus 0");
  EXPECT_EQ(b.ToString(), "node 0 cpus 1");
  EXPECT_EQ(Place(t).ToString(), "node 0 cpus 0");  // shared now
  EXPECT_EQ(FreeCoresPerNumaNode(t, ledger_)[0], 0);
  ledger_.Release(b);
  EXPECT_EQ(FreeCoresPerNumaNode(t, ledger_)[0], 1);
  EXPECT_EQ(Place(t).ToString(), "node 0 cpus 1");
  EXPECT_EQ(ledger_.total(), 3);
}

TEST_F(PlacementTest, ReleasingEverythingGivesAnEmptyLedger) {
  const Topology t = Synthetic("pack:2 numa:2 core:4 pu:2");
  const Placement a = Place(t, 3);
  const Placement b = Place(t);
  ledger_.Release(a);
  ledger_.Release(b);
  EXPECT_EQ(ledger_, CoreLedger());
  EXPECT_EQ(ledger_.total(), 0);
}

TEST_F(PlacementTest, ReleasingWhatWasNotTakenIsABug) {
  EXPECT_DEATH(ledger_.Release(Placement{.numa_node = 0, .cpus = {3}}), "PU 3 holds no process");
}

TEST_F(PlacementTest, AHyperThreadInUseMakesItsCoreBusy) {
  const Topology t = Synthetic("core:2 pu:2");
  ledger_.Take(Placement{.numa_node = 0, .cpus = {1}});  // one hyper-thread of core 0
  EXPECT_EQ(Place(t).ToString(), "node 0 cpus 2-3");
  EXPECT_EQ(Place(t).ToString(), "node 0 cpus 0-1");  // both cores busy: the first
}

TEST_F(PlacementTest, FreeCoresPerNumaNode) {
  const Topology t = Synthetic("pack:2 numa:2 core:4 pu:2");
  EXPECT_EQ(FreeCoresPerNumaNode(t, ledger_), (FreeCores{4, 4, 4, 4, 0, 0, 0, 0}));
  Place(t, 4);
  Place(t);
  EXPECT_EQ(FreeCoresPerNumaNode(t, ledger_), (FreeCores{0, 3, 4, 4, 0, 0, 0, 0}));
}

TEST_F(PlacementTest, FreeCoresSaturateAndStopAtEightNodes) {
  EXPECT_EQ(FreeCoresPerNumaNode(Synthetic("numa:1 core:300 pu:1"), ledger_)[0], 255);
  EXPECT_EQ(FreeCoresPerNumaNode(Synthetic("numa:10 core:1 pu:1"), ledger_),
            (FreeCores{1, 1, 1, 1, 1, 1, 1, 1}));
}

TEST_F(PlacementTest, ThisMachineHasAPlacement) {
  auto t = Topology::FromSystem();
  ASSERT_TRUE(t.has_value()) << t.error().ToString();
  auto p = ChoosePlacement(*t, ledger_);
  ASSERT_TRUE(p.has_value()) << p.error().ToString();
  EXPECT_FALSE(p->cpus.empty());
}

}  // namespace
}  // namespace roam::numa
