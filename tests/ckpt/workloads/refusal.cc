// Holds one thing roam must refuse to capture, prints "ready", and waits to
// be killed. Usage: ckpt_refusal REASON  (names as RefusalReasonName).
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace {

bool Setup(const std::string& reason) {
  if (reason == "none" || reason == "traced") return true;  // the harness traces it
  if (reason == "socket") {
    int sv[2];
    return socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0;
  }
  if (reason == "eventfd") return eventfd(0, 0) >= 0;
  if (reason == "epoll") return epoll_create1(0) >= 0;
  if (reason == "inotify") return inotify_init1(0) >= 0;
  if (reason == "timerfd") return timerfd_create(CLOCK_MONOTONIC, 0) >= 0;
  if (reason == "signalfd") {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    return signalfd(-1, &set, 0) >= 0;
  }
  if (reason == "memfd") return memfd_create("roam-test", 0) >= 0;
  if (reason == "sysv-shm") {
    const int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    if (id < 0) return false;
    void* at = shmat(id, nullptr, 0);
    shmctl(id, IPC_RMID, nullptr);  // gone with the process
    return at != reinterpret_cast<void*>(-1);
  }
  if (reason == "posix-shm") {
    const std::string name = "/roam-test-" + std::to_string(getpid());
    const int fd = shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, 4096) != 0) return false;
    void* at = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    shm_unlink(name.c_str());
    return at != MAP_FAILED;
  }
  if (reason == "shared-anonymous") {
    return mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0) !=
           MAP_FAILED;
  }
  if (reason == "device-mapping") {
    // The legacy BIOS area of /dev/mem is mappable even with STRICT_DEVMEM;
    // where there is none, the first page of a block device is.
    if (const int fd = open("/dev/mem", O_RDONLY); fd >= 0) {
      return mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0xf0000) != MAP_FAILED;
    }
    for (const char* disk : {"/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/zram0", "/dev/loop0"}) {
      const int fd = open(disk, O_RDONLY);
      if (fd >= 0 && mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0) != MAP_FAILED) return true;
    }
    return false;
  }
  if (reason == "child-processes") {
    const pid_t child = fork();
    if (child == 0) {
      for (;;) pause();
    }
    return child > 0;
  }
  if (reason == "seccomp") {
    sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    sock_fprog prog{1, &allow};
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
  }
  if (reason == "namespaces") return unshare(CLONE_NEWUTS) == 0;
  if (reason == "external-pipe") {
    int p[2];
    if (pipe(p) != 0) return false;
    if (fork() == 0) {  // the other end lives in another process
      for (;;) pause();
    }
    close(p[1]);
    return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  if (!Setup(argv[1])) {
    std::printf("setup failed: %s: %s\n", argv[1], std::strerror(errno));
    return 3;
  }
  std::printf("ready %d\n", getpid());
  std::fflush(stdout);
  for (;;) pause();
}
