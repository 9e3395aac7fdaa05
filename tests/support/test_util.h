// Shared test helpers. Names handed out here are unique per process and per
// call so that tests running in parallel (ctest -j) never collide, and every
// resource they name is removed by an RAII owner, also when a test fails.
//
// Thread-safety: UniqueName is safe from any thread; a TempDir belongs to
// one test.
#pragma once

#include <array>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace roam::testing {

// prefix + pid + a counter + random bits, cut to max_length characters
// (network interface names allow 15).
std::string UniqueName(std::string_view prefix, std::size_t max_length = 64);

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on
// destruction.
class TempDir final {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A pipe (O_CLOEXEC) whose ends close with it: fd[0] reads, fd[1] writes.
struct Pipe {
  Pipe();
  ~Pipe();
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  void CloseRead();
  void CloseWrite();
  std::array<int, 2> fd = {-1, -1};
};

bool IsRoot();

// The whole contents of a file; empty if it cannot be read.
std::string ReadFile(const std::filesystem::path& path);

// The build tree the test was built in (ROAM_BUILD_DIR overrides it), and
// the source tree.
std::filesystem::path BuildDir();
std::filesystem::path SourceDir();

struct CommandResult {
  int exit_code = -1;  // 128 + signal if the program was killed
  std::string out;
  std::string err;
};

// Runs argv[0] (a path) with argv, stdin from /dev/null, and captures its
// stdout and stderr.
CommandResult RunCommand(const std::vector<std::string>& argv);

}  // namespace roam::testing

// Skips the current test unless it runs as root, saying why.
#define ROAM_SKIP_UNLESS_ROOT(why)                                           \
  do {                                                                       \
    if (!::roam::testing::IsRoot()) GTEST_SKIP() << "needs root: " << (why); \
  } while (0)
