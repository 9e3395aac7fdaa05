// A stand-in for roamd in local pool tests: takes roamd's command line
// (launch/local_pool.cc spawns it), checks what the pool promises it, and
// listens on --socket like a ready roamd.
//
//   $FAKE_ROAMD_REPORT_DIR  where to write <name>.report on every accepted
//                           connection: "pid P\nnetns INODE\ncgroup PATH\n"
//                           (PATH: the cpu line of /proc/self/cgroup)
//   $FAKE_ROAMD_MODE        "no-listen": never listen, and ignore SIGTERM
//                           (a roamd that hangs while starting)
//
// Exits 0 on SIGTERM, 3 when an argument or the pool key file is wrong.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

namespace {

volatile sig_atomic_t g_stop = 0;
void OnTerm(int /*sig*/) { g_stop = 1; }

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "fake_roamd: %s\n", why.c_str());
  std::exit(3);
}

std::string CpuCgroup() {
  std::ifstream in("/proc/self/cgroup");
  for (std::string line; std::getline(in, line);) {
    // "1:cpu:/roam.x/n1" (or "cpu,cpuacct")
    const auto first = line.find(':');
    const auto second = line.find(':', first + 1);
    const std::string controllers = line.substr(first + 1, second - first - 1);
    std::stringstream list(controllers);
    for (std::string c; std::getline(list, c, ',');) {
      if (c == "cpu") return line.substr(second + 1);
    }
  }
  return "?";
}

void WriteReport(const std::string& name) {
  const char* dir = std::getenv("FAKE_ROAMD_REPORT_DIR");
  if (dir == nullptr) return;
  struct stat ns {};
  stat("/proc/self/ns/net", &ns);
  const std::string path = std::string(dir) + "/" + name + ".report";
  {
    std::ofstream out(path + ".tmp");
    out << "pid " << getpid() << "\nnetns " << ns.st_ino << "\ncgroup " << CpuCgroup() << "\n";
  }
  std::rename((path + ".tmp").c_str(), path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) Die("bad argument " + key);
    args[key] = argv[++i];
  }
  for (const char* needed : {"--name", "--rank", "--size", "--bootstrap", "--socket", "--pool-key",
                             "--guest-cgroup", "--cpus"}) {
    if (!args.contains(needed)) Die(std::string("missing ") + needed);
  }
  struct stat st {};
  if (stat(args["--pool-key"].c_str(), &st) != 0) Die("no pool key at " + args["--pool-key"]);
  if ((st.st_mode & 0777) != 0600 || st.st_uid != 0) Die("pool key is not 0600 root");
  const std::string boot = args["--bootstrap"];
  if (boot.rfind("dir:", 0) != 0) Die("bootstrap " + boot + " is not dir:");
  if (stat(boot.substr(4).c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) Die("no bootstrap dir");
  if (stat(args["--guest-cgroup"].c_str(), &st) != 0) Die("no guest cgroup");
  const char* tls = std::getenv("UCX_TLS");
  if (tls == nullptr || std::string(tls) != "tcp") Die("UCX_TLS is not tcp");
  // Descriptors 0-2 only: the pool closes the rest for us.
  for (int fd = 3; fd < 64; ++fd) {
    if (fcntl(fd, F_GETFD) >= 0) Die("inherited descriptor " + std::to_string(fd));
  }
  // --staging is optional (the pool passes it when told).
  const std::string staging = args.contains("--staging") ? " staging " + args["--staging"] : "";
  std::printf("fake_roamd %s rank %s of %s%s\n", args["--name"].c_str(), args["--rank"].c_str(),
              args["--size"].c_str(), staging.c_str());
  std::fflush(stdout);

  const char* mode = std::getenv("FAKE_ROAMD_MODE");
  if (mode != nullptr && std::string(mode) == "no-listen") {
    std::signal(SIGTERM, SIG_IGN);
    std::fprintf(stderr, "fake_roamd: told not to listen\n");
    for (;;) pause();
  }

  struct sigaction term {};
  term.sa_handler = OnTerm;
  sigaction(SIGTERM, &term, nullptr);
  const int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, args["--socket"].c_str(), sizeof(address.sun_path) - 1);
  unlink(address.sun_path);
  if (bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      listen(listener, 16) != 0) {
    Die(std::string("listen on ") + address.sun_path + ": " + std::strerror(errno));
  }
  while (g_stop == 0) {
    pollfd p{listener, POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      const int conn = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn >= 0) {
        WriteReport(args["--name"]);
        close(conn);
      }
    }
  }
  unlink(address.sun_path);
  return 0;
}
