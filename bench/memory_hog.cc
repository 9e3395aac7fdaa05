// The process the migration benchmark moves: it fills N MiB of fresh
// anonymous memory with a pattern no page of which is zero (so every page
// travels), prints how long that first touch took as one JSON line, then
// waits. On SIGUSR1 it checks every byte and prints whether the memory is
// intact; SIGTERM ends it.
//
//   memory_hog MiB
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

namespace {

volatile sig_atomic_t g_check = 0;

void OnUsr1(int) { g_check = 1; }

std::uint64_t Pattern(std::size_t i) { return (i * 0x9e3779b97f4a7c15ULL) | 1; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: memory_hog MiB\n");
    return 2;
  }
  const std::size_t mib = std::strtoull(argv[1], nullptr, 10);
  const std::size_t words = mib * (std::size_t{1} << 20) / sizeof(std::uint64_t);
  auto* memory = static_cast<std::uint64_t*>(std::malloc(words * sizeof(std::uint64_t)));
  if (memory == nullptr) {
    std::fprintf(stderr, "memory_hog: cannot allocate %zu MiB\n", mib);
    return 1;
  }
  struct sigaction sa {};
  sa.sa_handler = OnUsr1;
  sigaction(SIGUSR1, &sa, nullptr);
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < words; ++i) memory[i] = Pattern(i);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"first_touch_mib\": %zu, \"first_touch_s\": %.4f}\n", mib, seconds);
  std::fflush(stdout);
  for (;;) {
    pause();
    if (g_check == 0) continue;
    g_check = 0;
    std::size_t bad = 0;
    for (std::size_t i = 0; i < words; ++i) bad += memory[i] != Pattern(i) ? 1 : 0;
    std::printf("{\"intact\": %s, \"bad_words\": %zu}\n", bad == 0 ? "true" : "false", bad);
    std::fflush(stdout);
  }
}
