#include "launch/daemon/owner.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <vector>

#include "tests/support/test_util.h"

namespace roam::daemon {
namespace {

// A file whose access and modification times are `access` and `modify`
// seconds since the epoch.
std::filesystem::path FileAt(const testing::TempDir& dir, const char* name, std::int64_t access,
                             std::int64_t modify) {
  const std::filesystem::path p = dir.path() / name;
  std::ofstream(p).put('\n');
  const struct timespec times[2] = {{access, 0}, {modify, 0}};
  EXPECT_EQ(utimensat(AT_FDCWD, p.c_str(), times, 0), 0);
  return p;
}

std::chrono::system_clock::time_point At(std::int64_t seconds) {
  return std::chrono::system_clock::time_point(std::chrono::seconds(seconds));
}

TEST(OwnerTest, TheLastInputIsTheNewestTimeAmongTheGivenPaths) {
  testing::TempDir dir;
  const std::vector<std::filesystem::path> inputs = {
      FileAt(dir, "a", 1'000, 2'000), FileAt(dir, "b", 5'000, 3'000),
      FileAt(dir, "c", 1'500, 4'000), dir.path() / "missing"};
  const auto last = LastOwnerInput(inputs);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(*last, At(5'000));
}

TEST(OwnerTest, PathsThatCannotBeReadMeanNoOwner) {
  testing::TempDir dir;
  const std::vector<std::filesystem::path> inputs = {dir.path() / "none", dir.path() / "nor"};
  EXPECT_FALSE(LastOwnerInput(inputs).has_value());
}

}  // namespace
}  // namespace roam::daemon
