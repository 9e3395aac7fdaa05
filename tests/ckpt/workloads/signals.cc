// A workload that reports the signals it gets and leaves an orphan on
// request, for restores into a pid namespace of its own: SIGUSR1 is counted
// ("usr1 N"), SIGUSR2 makes it fork a child that forks a grandchild and
// exits, so the grandchild is reparented to the namespace's init ("orphan
// PID ppid PPID", then it exits and must be reaped there), SIGTERM ends it
// with status 0 ("term after N usr1"). It has no children while it waits,
// so it can be checkpointed at any time.
// Usage: ckpt_signals
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <initializer_list>

namespace {

volatile sig_atomic_t g_usr1 = 0;
volatile sig_atomic_t g_usr2 = 0;
volatile sig_atomic_t g_term = 0;

void OnSignal(int sig) {
  if (sig == SIGUSR1) g_usr1 = g_usr1 + 1;
  if (sig == SIGUSR2) g_usr2 = 1;
  if (sig == SIGTERM) g_term = 1;
}

void Nap(long ns) {
  timespec t{0, ns};
  nanosleep(&t, nullptr);
}

void LeaveOrphan() {
  const pid_t child = fork();
  if (child < 0) {
    std::printf("broken: fork\n");
    return;
  }
  if (child == 0) {
    const pid_t parent = getpid();
    if (fork() == 0) {
      // Wait until the parent is gone and the kernel has reparented us.
      while (getppid() == parent) Nap(1000 * 1000);
      std::printf("orphan %d ppid %d\n", getpid(), getppid());
      _exit(0);
    }
    _exit(0);
  }
  waitpid(child, nullptr, 0);
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  for (int sig : {SIGUSR1, SIGUSR2, SIGTERM}) sigaction(sig, &sa, nullptr);
  std::printf("ready %d\n", getpid());
  int reported = 0;
  while (g_term == 0) {
    Nap(10 * 1000 * 1000);
    if (g_usr1 != reported) {
      reported = g_usr1;
      std::printf("usr1 %d\n", reported);
    }
    if (g_usr2 != 0) {
      g_usr2 = 0;
      LeaveOrphan();
    }
  }
  std::printf("term after %d usr1\n", static_cast<int>(g_usr1));
  return 0;
}
