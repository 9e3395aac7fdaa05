// A 5-thread workload that checks itself across a checkpoint/restore: each
// worker has thread-local state and takes a shared robust mutex; at the end
// the main thread joins the workers (clear-child-tid futex wakes), raise()s
// and pthread_kill()s itself (glibc's cached tids) and takes the mutex again.
// Whoever holds the mutex checks that the owner tid glibc wrote into it (its
// cached tid) is the one the kernel knows the thread by.
// Usage: ckpt_threads SECONDS
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace {

constexpr int kWorkers = 4;
pthread_mutex_t g_mutex;
std::atomic<long> g_total{0};
thread_local long tls_id = -1;
volatile sig_atomic_t g_signals = 0;
double g_end = 0;

double Now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

[[noreturn]] void Broke(const char* what) {
  std::printf("broken: %s\n", what);
  std::fflush(stdout);
  std::_Exit(1);
}

// A robust mutex records its owner by glibc's cached tid; the kernel clears
// it at thread death only if that equals the real one.
void CheckOwner(const char* what) {
  if (g_mutex.__data.__owner != static_cast<int>(syscall(SYS_gettid))) Broke(what);
}

void* Worker(void* arg) {
  tls_id = reinterpret_cast<long>(arg);
  long mine = 0;
  while (Now() < g_end) {
    if (pthread_mutex_lock(&g_mutex) != 0) Broke("worker lock");
    CheckOwner("worker's cached tid is not its tid");
    ++mine;
    g_total.fetch_add(1);
    pthread_mutex_unlock(&g_mutex);
    if (tls_id != reinterpret_cast<long>(arg)) Broke("thread-local id");
    timespec nap{0, 5 * 1000 * 1000};
    nanosleep(&nap, nullptr);
  }
  return reinterpret_cast<void*>(mine);
}

void OnUsr1(int) { g_signals = g_signals + 1; }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&g_mutex, &attr);
  signal(SIGUSR1, OnUsr1);
  g_end = Now() + std::atof(argv[1]);

  pthread_t workers[kWorkers];
  for (long i = 0; i < kWorkers; ++i) {
    if (pthread_create(&workers[i], nullptr, Worker, reinterpret_cast<void*>(i)) != 0)
      Broke("create");
  }
  std::printf("ready %d\n", getpid());
  long sum = 0;
  for (auto& w : workers) {
    void* result = nullptr;
    if (pthread_join(w, &result) != 0) Broke("join");
    sum += reinterpret_cast<long>(result);
  }
  if (sum != g_total.load()) Broke("per-thread counts do not add up");
  if (raise(SIGUSR1) != 0 || g_signals != 1) Broke("raise");
  if (pthread_kill(pthread_self(), SIGUSR1) != 0 || g_signals != 2) Broke("pthread_kill");
  if (pthread_mutex_lock(&g_mutex) != 0) Broke("main lock");
  CheckOwner("main thread's cached tid is not its tid");
  pthread_mutex_unlock(&g_mutex);
  std::printf("ok threads: %ld increments\n", sum);
  return 0;
}
