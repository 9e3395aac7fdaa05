// What roamd takes from a PMIx launcher: its node name, the %n of socket
// paths, and the job key rank 0 hands out (over the directory bootstrap
// here; under mpirun and srun in launcher_pool_test.cc).
#include "launch/daemon/launcher.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "launch/daemon/control_socket.h"
#include "tests/support/test_util.h"

namespace roam::daemon {
namespace {

LauncherPlace Place(std::string slurm_node, std::string launcher_host, std::string host,
                    int local_rank = 0, int local_size = 1) {
  LauncherPlace place;
  place.slurm_node = std::move(slurm_node);
  place.launcher_host = std::move(launcher_host);
  place.host = std::move(host);
  place.local_rank = local_rank;
  place.local_size = local_size;
  return place;
}

TEST(LauncherNodeNameTest, SlurmsNameFirstThenTheLaunchersThenTheHosts) {
  EXPECT_EQ(LauncherNodeName(Place("n3", "vm", "vm")), "n3");
  EXPECT_EQ(LauncherNodeName(Place("", "c042", "c042.cluster")), "c042");
  EXPECT_EQ(LauncherNodeName(Place("", "", "vm")), "vm");
  EXPECT_EQ(LauncherNodeName(Place("", "", "")), "node");
}

TEST(LauncherNodeNameTest, RanksSharingANodeGetTheirLocalRank) {
  EXPECT_EQ(LauncherNodeName(Place("", "vm", "vm", 2, 4)), "vm.2");
  EXPECT_EQ(LauncherNodeName(Place("n1", "", "", 0, 2)), "n1.0");
}

TEST(ExpandNodeNameTest, PercentNIsTheNodeAndPercentPercentAPercent) {
  EXPECT_EQ(ExpandNodeName("/run/roam/%n.sock", "n2"), "/run/roam/n2.sock");
  EXPECT_EQ(ExpandNodeName("/tmp/%n/%n", "a"), "/tmp/a/a");
  EXPECT_EQ(ExpandNodeName("/tmp/100%%/%n%", "b"), "/tmp/100%/b%");
  EXPECT_EQ(ExpandNodeName("/run/roam/roamd.sock", "n1"), "/run/roam/roamd.sock");
}

TEST(ShareJobKeyTest, EveryRankGetsRankZerosFreshKey) {
  testing::TempDir dir;
  constexpr int kRanks = 3;
  std::vector<std::string> secrets(kRanks);
  std::vector<std::string> errors(kRanks);
  std::vector<std::thread> ranks;
  for (int r = 0; r < kRanks; ++r) {
    ranks.emplace_back([&, r] {
      auto boot = transport::OpenDirectoryBootstrap(dir.path(), r, kRanks);
      if (!boot) {
        errors[r] = boot.error().ToString();
        return;
      }
      auto key = ShareJobKey(**boot, std::chrono::seconds(10));
      if (!key) {
        errors[r] = key.error().ToString();
        return;
      }
      secrets[r] = std::string(key->secret());
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(secrets[r].size(), pool::PoolKey::kMinBytes);
    EXPECT_EQ(secrets[r], secrets[0]) << "rank " << r;
  }
  // Made afresh, not a constant.
  auto other = pool::PoolKey::Random();
  ASSERT_TRUE(other);
  EXPECT_NE(std::string(other->secret()), secrets[0]);
}

}  // namespace
}  // namespace roam::daemon
