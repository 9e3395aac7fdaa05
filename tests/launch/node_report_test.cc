#include "launch/node_report.h"

#include <gtest/gtest.h>

#include "roam/base/version.h"

namespace roam::launch {
namespace {

TEST(NodeReportTest, DescribesThisNode) {
  auto report = BuildNodeReport();
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_EQ(report->roam_version.rfind(ROAM_VERSION_STRING, 0), 0u);
  EXPECT_FALSE(report->hostname.empty());
  EXPECT_FALSE(report->kernel.empty());
  EXPECT_GE(report->pus, 1);
  EXPECT_NE(report->pmix_version.find("PMIx"), std::string::npos) << report->pmix_version;
  EXPECT_TRUE(report->ucx.HasTransport("self"));
}

TEST(NodeReportTest, JsonCarriesEveryField) {
  auto report = BuildNodeReport();
  ASSERT_TRUE(report.has_value());
  const nlohmann::json j = ToJson(*report);
  EXPECT_EQ(j.at("hostname"), report->hostname);
  EXPECT_EQ(j.at("topology").at("pus"), report->pus);
  EXPECT_EQ(j.at("topology").at("summary"), report->topology);
  EXPECT_EQ(j.at("ucx").at("resources").size(), report->ucx.resources.size());
  EXPECT_EQ(j.at("ucx").at("rdma"), report->ucx.HasRdma());
  EXPECT_EQ(j.at("pmix_version"), report->pmix_version);
}

TEST(NodeReportTest, TextHasOneAlignedLinePerItem) {
  NodeReport report;
  report.roam_version = "0.1.0 (git abc)";
  report.hostname = "n1";
  report.kernel = "6.18.0";
  report.machine = "x86_64";
  report.topology = "1 package, 1 NUMA node, 2 cores, 2 PUs";
  report.ucx.version = "1.13.1";
  report.ucx.resources = {{"self", "self", "memory0", transport::DeviceKind::kLoopback},
                          {"tcp", "tcp", "eth0", transport::DeviceKind::kNetwork}};
  report.pmix_version = "OpenPMIx 4.2.2";
  EXPECT_EQ(ToText(report),
            "roam       0.1.0 (git abc)\n"
            "node       n1 (Linux 6.18.0 x86_64)\n"
            "topology   1 package, 1 NUMA node, 2 cores, 2 PUs\n"
            "ucx        1.13.1: self/memory0, tcp/eth0\n"
            "rdma       no: UCX found no verbs device (tcp and shared memory only)\n"
            "pmix       OpenPMIx 4.2.2\n");
}

}  // namespace
}  // namespace roam::launch
