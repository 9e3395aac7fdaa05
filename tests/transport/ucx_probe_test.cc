#include "roam/transport/probe.h"

#include <gtest/gtest.h>

namespace roam::transport {
namespace {

TEST(UcxProbeTest, ReportsTheLibraryWeBuiltAgainst) {
  auto report = ProbeUcx();
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  EXPECT_EQ(report->backend, "ucx");
  EXPECT_EQ(report->version.rfind(ROAM_TEST_UCX_VERSION, 0), 0u)
      << report->version << " vs " << ROAM_TEST_UCX_VERSION;
}

TEST(UcxProbeTest, ListsLoopbackAndTcp) {
  auto report = ProbeUcx();
  ASSERT_TRUE(report.has_value()) << report.error().ToString();
  ASSERT_FALSE(report->resources.empty());
  // UCX always has "self"; tcp lists at least the loopback interface.
  EXPECT_TRUE(report->HasTransport("self"));
  EXPECT_TRUE(report->HasTransport("tcp"));
  EXPECT_FALSE(report->HasTransport("no-such-transport"));
  for (const auto& r : report->resources) {
    EXPECT_FALSE(r.transport.empty());
    EXPECT_FALSE(r.device.empty());
    if (r.transport == "self") {
      EXPECT_EQ(r.kind, DeviceKind::kLoopback);
    }
    if (r.transport == "tcp") {
      EXPECT_EQ(r.kind, DeviceKind::kNetwork);
    }
  }
}

TEST(UcxProbeTest, RdmaMeansAVerbsDevice) {
  BackendReport report;
  EXPECT_FALSE(report.HasRdma());
  report.resources.push_back({"tcp", "tcp", "eth0", DeviceKind::kNetwork});
  EXPECT_FALSE(report.HasRdma());
  report.resources.push_back({"ib", "rc_verbs", "mlx5_0:1", DeviceKind::kNetwork});
  EXPECT_TRUE(report.HasRdma());
}

TEST(UcxProbeTest, DeviceKindNames) {
  EXPECT_EQ(DeviceKindName(DeviceKind::kNetwork), "network");
  EXPECT_EQ(DeviceKindName(DeviceKind::kSharedMemory), "shared-memory");
  EXPECT_EQ(DeviceKindName(DeviceKind::kAccelerator), "accelerator");
  EXPECT_EQ(DeviceKindName(DeviceKind::kLoopback), "loopback");
}

}  // namespace
}  // namespace roam::transport
