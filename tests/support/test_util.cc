#include "tests/support/test_util.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>

#include <fmt/format.h>

extern char** environ;

namespace roam::testing {

std::string UniqueName(std::string_view prefix, std::size_t max_length) {
  static std::atomic<unsigned> counter{0};
  static const unsigned salt = std::random_device{}();
  std::string name = fmt::format("{}{:x}{:x}{:04x}", prefix, static_cast<unsigned>(getpid()),
                                 counter.fetch_add(1), salt & 0xffff);
  if (name.size() > max_length) name.erase(0, name.size() - max_length);
  return name;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = fmt::format("{}/roam-test-XXXXXX", base != nullptr ? base : "/tmp");
  if (mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern << " failed";
    return;
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Pipe::Pipe() { EXPECT_EQ(pipe2(fd.data(), O_CLOEXEC), 0); }

Pipe::~Pipe() {
  for (int f : fd) {
    if (f >= 0) close(f);
  }
}

void Pipe::CloseRead() { close(std::exchange(fd[0], -1)); }
void Pipe::CloseWrite() { close(std::exchange(fd[1], -1)); }

bool IsRoot() { return geteuid() == 0; }

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::filesystem::path BuildDir() {
  const char* dir = std::getenv("ROAM_BUILD_DIR");
  return dir != nullptr ? std::filesystem::path(dir) : std::filesystem::path(ROAM_TEST_BUILD_DIR);
}

std::filesystem::path SourceDir() { return ROAM_TEST_SOURCE_DIR; }

CommandResult RunCommand(const std::vector<std::string>& argv) {
  CommandResult result;
  TempDir scratch;
  const std::string out_path = (scratch.path() / "out").string();
  const std::string err_path = (scratch.path() / "err").string();

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);

  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    ADD_FAILURE() << "posix_spawn " << argv[0] << ": " << strerror(rc);
    return result;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

}  // namespace roam::testing
