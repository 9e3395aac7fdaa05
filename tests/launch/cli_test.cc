// The roam and roamd programs as a user meets them: exit codes, output, and
// one-line errors for bad input.
#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "tests/support/test_util.h"

namespace roam {
namespace {

using testing::BuildDir;
using testing::RunCommand;
using testing::TempDir;

std::string Bin(std::string_view name) { return (BuildDir() / "bin" / name).string(); }

auto Lines(const std::string& text) { return std::count(text.begin(), text.end(), '\n'); }

TEST(CliTest, VersionFlag) {
  const auto r = RunCommand({Bin("roam"), "--version"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("roam 0.", 0), 0u) << r.out;
}

TEST(CliTest, InfoPrintsTheNode) {
  const auto r = RunCommand({Bin("roam"), "info"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* key : {"roam ", "node ", "topology ", "ucx ", "rdma ", "pmix "}) {
    EXPECT_NE(("\n" + r.out).find(std::string("\n") + key), std::string::npos)
        << key << " missing in\n"
        << r.out;
  }
}

TEST(CliTest, InfoJsonIsOneParsableObject) {
  const auto r = RunCommand({Bin("roam"), "info", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_GE(j["topology"]["pus"].get<int>(), 1);
  EXPECT_FALSE(j["ucx"]["resources"].empty());
}

TEST(CliTest, UnknownSubcommandIsAOneLineError) {
  const auto r = RunCommand({Bin("roam"), "teleport"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("unknown command 'teleport'"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(CliTest, UnknownOptionIsAOneLineError) {
  const auto r = RunCommand({Bin("roam"), "info", "--colour"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("--colour"), std::string::npos) << r.err;
}

TEST(CliTest, NoSubcommandSaysWhatIsMissing) {
  const auto r = RunCommand({Bin("roam")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("subcommand is required"), std::string::npos) << r.err;
}

TEST(CliTest, RoamdRefusesBadStartsInOneLine) {
  const auto version = RunCommand({Bin("roamd"), "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out.rfind("roamd 0.", 0), 0u) << version.out;

  const auto nameless = RunCommand({Bin("roamd")});
  EXPECT_EQ(nameless.exit_code, 2);
  EXPECT_EQ(Lines(nameless.err), 1) << nameless.err;
  EXPECT_NE(nameless.err.find("--name"), std::string::npos) << nameless.err;

  const auto keyless =
      RunCommand({Bin("roamd"), "--name", "n1", "--pool-key", "/nonexistent/roam-test/pool.key"});
  EXPECT_EQ(keyless.exit_code, 1);
  EXPECT_EQ(Lines(keyless.err), 1) << keyless.err;
  EXPECT_NE(keyless.err.find("/nonexistent/roam-test/pool.key"), std::string::npos) << keyless.err;
}

TEST(CliTest, RoamdRefusesABadStagingSizeInOneLine) {
  for (const char* bad : {"lots", "-5", "1.5"}) {
    SCOPED_TRACE(bad);
    const auto r = RunCommand({Bin("roamd"), "--name", "n1", "--staging", bad});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find(std::string("--staging: '") + bad + "' is not a whole number of MiB"),
              std::string::npos)
        << r.err;
  }
  // More than any node has: refused before anything starts.
  const auto huge = RunCommand({Bin("roamd"), "--name", "n1", "--staging", "1000000000"});
  EXPECT_EQ(huge.exit_code, 2);
  EXPECT_EQ(Lines(huge.err), 1) << huge.err;
  EXPECT_NE(huge.err.find("--staging 1000000000 MiB is more than this node's memory"),
            std::string::npos)
      << huge.err;
}

TEST(CliTest, PoolCommandsWithoutADaemonSayWhereTheyLooked) {
  TempDir dir;
  const std::string socket = (dir.path() / "none.sock").string();
  const auto r = RunCommand({"/usr/bin/env", "ROAM_SOCKET=" + socket, Bin("roam"), "ps"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(socket), std::string::npos) << r.err;
}

TEST(CliTest, KillTakesTheSignalLikeKill) {
  const auto r = RunCommand({Bin("roam"), "kill", "-NOSUCH", "3"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no signal 'NOSUCH'"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace roam
