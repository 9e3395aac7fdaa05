#include "roam/numa/topology.h"

#include <gtest/gtest.h>

namespace roam::numa {
namespace {

TEST(TopologyTest, SyntheticTwoPackageFourNumaMachine) {
  auto t = Topology::FromSynthetic("pack:2 numa:2 core:4 pu:2");
  ASSERT_TRUE(t.has_value()) << t.error().ToString();
  EXPECT_EQ(t->packages(), 2);
  EXPECT_EQ(t->numa_nodes(), 4);
  EXPECT_EQ(t->cores(), 16);
  EXPECT_EQ(t->pus(), 32);
  EXPECT_EQ(t->Summary(), "2 packages, 4 NUMA nodes, 16 cores, 32 PUs");
}

TEST(TopologyTest, SummaryUsesSingularForOne) {
  auto t = Topology::FromSynthetic("pack:1 core:1 pu:1");
  ASSERT_TRUE(t.has_value()) << t.error().ToString();
  EXPECT_EQ(t->Summary(), "1 package, 1 NUMA node, 1 core, 1 PU");
}

TEST(TopologyTest, InvalidSyntheticDescriptionIsAClearError) {
  auto t = Topology::FromSynthetic("pack:two banana");
  ASSERT_FALSE(t.has_value());
  EXPECT_EQ(t.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(t.error().message().find("'pack:two banana'"), std::string::npos)
      << t.error().ToString();
}

TEST(TopologyTest, XmlRoundTripKeepsTheShape) {
  auto original = Topology::FromSynthetic("pack:2 numa:1 core:3 pu:1");
  ASSERT_TRUE(original.has_value());
  auto xml = original->ToXml();
  ASSERT_TRUE(xml.has_value()) << xml.error().ToString();
  EXPECT_NE(xml->find("<topology"), std::string::npos);
  auto copy = Topology::FromXml(*xml);
  ASSERT_TRUE(copy.has_value()) << copy.error().ToString();
  EXPECT_EQ(copy->Summary(), original->Summary());
}

TEST(TopologyTest, InvalidXmlIsAnError) {
  EXPECT_FALSE(Topology::FromXml("").has_value());
  auto t = Topology::FromXml("<not a topology");
  ASSERT_FALSE(t.has_value());
  EXPECT_EQ(t.error().code(), Errc::kInvalidArgument);
}

TEST(TopologyTest, ThisMachineHasAtLeastOneCoreAndPu) {
  auto t = Topology::FromSystem();
  ASSERT_TRUE(t.has_value()) << t.error().ToString();
  EXPECT_GE(t->packages(), 1);
  EXPECT_GE(t->numa_nodes(), 1);
  EXPECT_GE(t->cores(), 1);
  EXPECT_GE(t->pus(), t->cores());
}

TEST(TopologyTest, MovedFromTopologyIsSafeToDestroy) {
  auto t = Topology::FromSynthetic("pack:1 core:2 pu:1");
  ASSERT_TRUE(t.has_value());
  Topology moved = std::move(*t);
  EXPECT_EQ(moved.cores(), 2);
  Topology other = std::move(moved);
  other = std::move(other);  // NOLINT(bugprone-use-after-move): self-move keeps the topology
  EXPECT_EQ(other.cores(), 2);
}

}  // namespace
}  // namespace roam::numa
