// A workload that checks itself across a checkpoint/restore (the zdtm idea):
// it sets up state, prints "ready" (the sync point at which the harness may
// checkpoint it), keeps checking that state for a while, and exits 0 only if
// everything survived. Any mismatch prints what broke and exits 1.
//
// Usage: ckpt_workload SECONDS DATAFILE
//   stdin: a pipe or file; after the checks it reads one line and echoes it.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

thread_local std::uint64_t tls_value = 0;
volatile sig_atomic_t usr1_count = 0;

void OnUsr1(int) { usr1_count = usr1_count + 1; }

[[noreturn]] void Broke(const char* what) {
  std::printf("broken: %s\n", what);
  std::fflush(stdout);
  std::exit(1);
}

std::uint64_t Pattern(std::size_t i) { return i * 0x9E3779B97F4A7C15ULL + 17; }

double Now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  const double seconds = std::atof(argv[1]);
  std::setvbuf(stdout, nullptr, _IONBF, 0);

  // 64 MiB of patterned anonymous memory, plus a zero region and a
  // read-only page.
  const std::size_t words = (64u << 20) / sizeof(std::uint64_t);
  auto* heap = static_cast<std::uint64_t*>(std::malloc(words * sizeof(std::uint64_t)));
  for (std::size_t i = 0; i < words; ++i) heap[i] = Pattern(i);
  auto* ro = static_cast<char*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  std::strcpy(ro, "read-only page");
  mprotect(ro, 4096, PROT_READ);
  tls_value = 0xC0FFEE;
  struct sigaction sa {};
  sa.sa_handler = OnUsr1;
  sigaction(SIGUSR1, &sa, nullptr);
  sigset_t blocked;
  sigemptyset(&blocked);
  sigaddset(&blocked, SIGUSR2);
  sigprocmask(SIG_BLOCK, &blocked, nullptr);

  // A pipe inside the process with unread bytes, and a data file at an offset.
  int p[2];
  if (pipe(p) != 0) Broke("pipe");
  if (write(p[1], "buffered", 8) != 8) Broke("pipe write");
  const int data = open(argv[2], O_RDONLY);
  char head[5] = {};
  if (data < 0 || read(data, head, 4) != 4) Broke("data file");

  std::printf("ready %d\n", getpid());
  const double end = Now() + seconds;
  unsigned rounds = 0;
  while (Now() < end) {
    timespec nap{0, 20 * 1000 * 1000};
    nanosleep(&nap, nullptr);
    for (std::size_t i = rounds % 64; i < words; i += 4096) {
      if (heap[i] != Pattern(i)) Broke("heap pattern");
    }
    if (tls_value != 0xC0FFEE) Broke("thread-local value");
    if (std::strcmp(ro, "read-only page") != 0) Broke("read-only page");
    ++rounds;
  }
  for (std::size_t i = 0; i < words; ++i) {
    if (heap[i] != Pattern(i)) Broke("heap pattern (full scan)");
  }
  // The handler is still installed and the mask still blocks SIGUSR2.
  kill(getpid(), SIGUSR1);
  if (usr1_count != 1) Broke("SIGUSR1 handler");
  sigset_t now;
  sigprocmask(SIG_BLOCK, nullptr, &now);
  if (!sigismember(&now, SIGUSR2)) Broke("signal mask");
  char buf[9] = {};
  if (read(p[0], buf, 8) != 8 || std::strcmp(buf, "buffered") != 0) Broke("pipe contents");
  char next[5] = {};
  if (read(data, next, 4) != 4) Broke("data file offset");
  std::printf("data %s%s\n", head, next);
  // A blocking read of stdin last: the harness may checkpoint us here too.
  std::string line;
  char c;
  while (read(0, &c, 1) == 1 && c != '\n') line += c;
  std::printf("stdin %s\nok after %u rounds\n", line.c_str(), rounds);
  return 0;
}
