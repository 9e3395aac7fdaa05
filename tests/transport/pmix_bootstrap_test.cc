// The PMIx bootstrap: the bootstrap.h contract over a real launcher's PMIx
// (mpirun here; srun in the Slurm pool test), and its refusal outside one.
#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "roam/transport/bootstrap.h"
#include "tests/support/test_util.h"

namespace roam::transport {
namespace {

TEST(PmixBootstrapTest, WithoutALauncherItSaysHowToStartOne) {
  const char* saved = std::getenv("PMIX_NAMESPACE");
  const std::string keep = saved == nullptr ? "" : saved;
  unsetenv("PMIX_NAMESPACE");
  auto boot = OpenPmixBootstrap();
  if (saved != nullptr) setenv("PMIX_NAMESPACE", keep.c_str(), 1);
  ASSERT_FALSE(boot);
  EXPECT_EQ(boot.error().code(), Errc::kUnavailable);
  EXPECT_NE(boot.error().message().find("srun --mpi=pmix or mpirun"), std::string::npos)
      << boot.error().ToString();
}

TEST(PmixBootstrapTest, FourRanksUnderMpirunExchangeTwoRounds) {
  const std::filesystem::path mpirun = "/usr/bin/mpirun";
  if (!std::filesystem::exists(mpirun)) GTEST_SKIP() << "needs Open MPI's mpirun (scripts/setup)";
  // Open MPI refuses root unless told; it runs 4 ranks on 2 cores only when
  // oversubscribing.
  const auto run = testing::RunCommand(
      {mpirun.string(), "-np", "4", "--oversubscribe", "--allow-run-as-root", ROAM_PMIX_PEER});
  EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
  for (int rank = 0; rank < 4; ++rank) {
    EXPECT_NE(run.out.find("rank " + std::to_string(rank) + " of 4 ok"), std::string::npos)
        << run.out << run.err;
  }
  // All four on this host: each knows its place among them.
  EXPECT_NE(run.out.find("of 4 on '"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace roam::transport
