// A workload that forks right after it is restored (post-copy with pages
// still missing): it fills MIB MiB with a pattern, prints "ready", blocks
// reading a line from stdin (the harness checkpoints it there and restores
// it with that line waiting), then forks at once. The child checks every
// byte and exits 0 (1 on a mismatch); the parent checks its own bytes, waits
// for the child and exits 0 only if both were right.
//
// Usage: ckpt_forker MIB
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

std::uint64_t Pattern(std::size_t i) { return (i + 1) * 0xD6E8FEB86659FD93ULL ^ (i >> 7); }

std::size_t Mismatches(const std::vector<std::uint64_t>& heap) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < heap.size(); ++i) bad += heap[i] != Pattern(i) ? 1 : 0;
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  const std::size_t words = static_cast<std::size_t>(std::atoi(argv[1])) * (1u << 20) / 8;
  std::vector<std::uint64_t> heap(words);
  for (std::size_t i = 0; i < words; ++i) heap[i] = Pattern(i);
  std::printf("ready %d\n", getpid());
  char line[64];
  if (std::fgets(line, sizeof line, stdin) == nullptr) return 3;
  const pid_t pid = fork();
  if (pid < 0) return 4;
  if (pid == 0) {
    const std::size_t bad = Mismatches(heap);
    std::printf("child %s (%zu bad words)\n", bad == 0 ? "ok" : "broken", bad);
    _exit(bad == 0 ? 0 : 1);
  }
  const std::size_t bad = Mismatches(heap);
  std::printf("parent %s (%zu bad words)\n", bad == 0 ? "ok" : "broken", bad);
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return 5;
  return bad == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
