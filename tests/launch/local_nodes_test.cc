// Simulated nodes on one machine: each node's namespace holds its own
// address, nodes reach each other over TCP through the bridge, the namespace
// the test runs in never sees any of it, and nothing outlives the owner, also
// when the owner is killed.
#include "roam/launch/local_nodes.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/support/test_util.h"

namespace roam::launch {
namespace {

using namespace std::chrono_literals;
using testing::RunCommand;

constexpr const char* kNeedsRoot = "network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN";

std::string IpProgram() {
  for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (access(path, X_OK) == 0) return path;
  }
  return "ip";
}

// What `ip -o ...` prints in the namespace the test itself runs in.
std::string RootIp(std::vector<std::string> args) {
  args.insert(args.begin(), {IpProgram(), "-o"});
  const auto r = RunCommand(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Every entry of /run/netns (where `ip netns add` bind-mounts) that starts
// with `prefix`; LocalNodes must never make one.
std::vector<std::string> RunNetnsEntries(const std::string& prefix) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) found.push_back(name);
  }
  return found;
}

std::string NsLink(ino_t inode) { return fmt::format("net:[{}]", inode); }

ino_t Inode(int fd) {
  struct stat st {};
  EXPECT_EQ(fstat(fd, &st), 0) << strerror(errno);
  return st.st_ino;
}

std::string ReadLink(const std::string& path) {
  std::error_code ec;
  return std::filesystem::read_symlink(path, ec).string();
}

// The network namespaces this process holds through descriptors or threads.
std::set<std::string> NamespacesWeHold() {
  std::set<std::string> held;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const std::string target = ReadLink(entry.path().string());
    if (target.rfind("net:[", 0) == 0) held.insert(target);
  }
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    held.insert(ReadLink((entry.path() / "ns" / "net").string()));
  }
  return held;
}

// Runs `fn` on a thread of its own, so that Enter never moves the test's
// thread.
template <typename F>
auto OnThread(F fn) {
  decltype(fn()) result{};
  std::thread([&] { result = fn(); }).join();
  return result;
}

sockaddr_in SocketAddress(const std::string& address, int port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  EXPECT_EQ(inet_pton(AF_INET, address.c_str(), &sa.sin_addr), 1) << address;
  return sa;
}

// Connects from the calling thread's namespace, retrying while nobody listens
// yet, sends `message` and reads until EOF. "error: ..." on failure.
std::string Exchange(const std::string& address, int port, const std::string& message) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  const sockaddr_in sa = SocketAddress(address, port);
  for (;;) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fmt::format("error: socket: {}", strerror(errno));
    // Bounds connect and read: an unreachable peer would otherwise take
    // minutes of SYN retries.
    const timeval limit{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
    if (connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) == 0) {
      std::string text;
      if (write(fd, message.data(), message.size()) != static_cast<ssize_t>(message.size())) {
        text = fmt::format("error: write: {}", strerror(errno));
      }
      shutdown(fd, SHUT_WR);
      std::array<char, 256> chunk;
      ssize_t n = 0;
      while (text.empty() && (n = read(fd, chunk.data(), chunk.size())) > 0) {
        text.append(chunk.data(), static_cast<std::size_t>(n));
      }
      if (n < 0) text = fmt::format("error: read: {}", strerror(errno));
      close(fd);
      return text;
    }
    const int err = errno;
    close(fd);
    if (err != ECONNREFUSED || std::chrono::steady_clock::now() > deadline) {
      return fmt::format("error: connect {}:{}: {}", address, port, strerror(err));
    }
    std::this_thread::sleep_for(20ms);
  }
}

// (Designated initializers would do, but GCC 12 warns about the fields they
// leave out.)
LocalNodesOptions Options(int nodes, std::string subnet = "", std::string prefix = "") {
  LocalNodesOptions options;
  options.nodes = nodes;
  options.subnet = std::move(subnet);
  options.prefix = std::move(prefix);
  return options;
}

class LocalNodesTest : public ::testing::Test {
 protected:
  void SetUp() override { ROAM_SKIP_UNLESS_ROOT(kNeedsRoot); }

  static std::unique_ptr<LocalNodes> MustCreate(const LocalNodesOptions& options) {
    auto nodes = LocalNodes::Create(options);
    EXPECT_TRUE(nodes.has_value()) << nodes.error().ToString();
    return nodes.has_value() ? std::move(*nodes) : nullptr;
  }
};

TEST(LocalNodesOptionsTest, BadOptionsAreInvalidArguments) {
  struct Case {
    LocalNodesOptions options;
    const char* says;
  };
  const std::vector<Case> cases = {
      {Options(0), "0 local nodes asked for; 1 to 64"},
      {Options(65), "65 local nodes asked for; 1 to 64"},
      {Options(-3), "-3 local nodes"},
      {Options(2, "banana"), "subnet 'banana' is not an IPv4 /24"},
      {Options(2, "10.1.2.0/16"), "not an IPv4 /24"},
      {Options(2, "10.1.2.0"), "not an IPv4 /24"},
      {Options(2, "10.1.2/24"), "not an IPv4 /24"},
      {Options(2, "10.1.2.0.0/24"), "not an IPv4 /24"},
      {Options(2, "10.256.2.0/24"), "not an IPv4 /24"},
      {Options(2, "10.-1.2.0/24"), "not an IPv4 /24"},
      {Options(2, "10.1.2.7/24"), "names a host; give the network, 10.1.2.0/24"},
      {Options(2, "", "9lives"), "name prefix '9lives' is not 1 to 12 characters"},
      {Options(2, "", "muchtoolongname"), "name prefix"},
      {Options(2, "", "a b"), "name prefix"},
      {Options(2, "", "a/b"), "name prefix"},
  };
  for (const Case& c : cases) {
    const auto nodes = LocalNodes::Create(c.options);
    ASSERT_FALSE(nodes.has_value()) << c.says;
    EXPECT_EQ(nodes.error().code(), Errc::kInvalidArgument) << nodes.error().ToString();
    EXPECT_TRUE(Contains(nodes.error().message(), c.says)) << nodes.error().ToString();
  }
}

TEST_F(LocalNodesTest, EachNodeHasItsOwnAddressAndTheHostNone) {
  const auto nodes = MustCreate(Options(3));
  ASSERT_NE(nodes, nullptr);
  ASSERT_EQ(nodes->node_count(), 3);
  const std::string net = nodes->subnet().substr(0, nodes->subnet().size() - 4);  // "a.b.c."
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(nodes->address(i), fmt::format("{}{}", net, i + 1));
    EXPECT_EQ(nodes->interface_name(i), "eth0");
  }

  const std::string host_addrs = RootIp({"-4", "addr"});
  const std::string host_links = RootIp({"link"});
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(fmt::format("node {}", i));
    const auto addrs = nodes->Run(i, {"ip", "-o", "-4", "addr"});
    ASSERT_TRUE(addrs.has_value()) << addrs.error().ToString();
    ASSERT_EQ(addrs->exit_code, 0) << addrs->err;
    EXPECT_TRUE(Contains(addrs->out, fmt::format("eth0    inet {}/24", nodes->address(i))))
        << addrs->out;
    EXPECT_TRUE(Contains(addrs->out, "lo    inet 127.0.0.1/8")) << addrs->out;
    for (int j = 0; j < 3; ++j) {
      if (j != i) {
        EXPECT_FALSE(Contains(addrs->out, nodes->address(j) + "/")) << addrs->out;
      }
    }
    // lo and eth0, nothing else; both up.
    const auto links = nodes->Run(i, {"ip", "-o", "link"});
    ASSERT_TRUE(links.has_value()) << links.error().ToString();
    EXPECT_EQ(std::count(links->out.begin(), links->out.end(), '\n'), 2) << links->out;
    EXPECT_TRUE(Contains(links->out, ": lo: <LOOPBACK,UP,LOWER_UP>")) << links->out;
    EXPECT_TRUE(Contains(links->out, "eth0@")) << links->out;
    EXPECT_TRUE(Contains(links->out, "UP,LOWER_UP> mtu")) << links->out;

    EXPECT_FALSE(Contains(host_addrs, fmt::format("inet {}/", nodes->address(i)))) << host_addrs;
    EXPECT_TRUE(Contains(ReadLink(nodes->netns_path(i)), "net:[")) << nodes->netns_path(i);
  }
  EXPECT_FALSE(Contains(host_links, nodes->prefix())) << host_links;
  EXPECT_TRUE(RunNetnsEntries(nodes->prefix()).empty());
}

TEST_F(LocalNodesTest, TheSwitchHoldsTheBridgeAndOnePortPerNode) {
  const auto nodes = MustCreate(Options(3));
  ASSERT_NE(nodes, nullptr);
  // The switch is no node: look through /proc/<pid>/fd as any other process
  // would.
  const auto r = RunCommand(
      {"/usr/bin/nsenter", fmt::format("--net=/proc/{}/fd/{}", getpid(), nodes->switch_netns_fd()),
       IpProgram(), "-o", "link", "show", "master", nodes->bridge_name()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string& links = r.out;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Contains(links, fmt::format("{}v{}@", nodes->prefix(), i))) << links;
  }
}

TEST_F(LocalNodesTest, EnterMovesOnlyTheCallingThread) {
  const auto nodes = MustCreate(Options(2));
  ASSERT_NE(nodes, nullptr);
  const std::string ours = ReadLink("/proc/thread-self/ns/net");
  const std::string node1 = NsLink(Inode(nodes->netns_fd(1)));
  ASSERT_NE(ours, node1);

  struct Seen {
    std::string inside;
    std::string address;
    std::string after;
    std::string error;
  };
  const Seen seen = OnThread([&] {
    Seen s;
    if (const Status entered = nodes->Enter(1); !entered.has_value()) {
      s.error = entered.error().ToString();
      return s;
    }
    s.inside = ReadLink("/proc/thread-self/ns/net");
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) == 0) {
      for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
        if (a->ifa_addr != nullptr && a->ifa_addr->sa_family == AF_INET &&
            std::string_view(a->ifa_name) == LocalNodes::kInterface) {
          std::array<char, INET_ADDRSTRLEN> text{};
          const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
          inet_ntop(AF_INET, &in->sin_addr, text.data(), text.size());
          s.address = text.data();
        }
      }
      freeifaddrs(list);
    }
    if (const Status left = nodes->Leave(); !left.has_value()) s.error = left.error().ToString();
    s.after = ReadLink("/proc/thread-self/ns/net");
    return s;
  });
  EXPECT_EQ(seen.error, "");
  EXPECT_EQ(seen.inside, node1);
  EXPECT_EQ(seen.address, nodes->address(1));
  EXPECT_EQ(seen.after, ours);
  EXPECT_EQ(ReadLink("/proc/thread-self/ns/net"), ours);

  const Status bad = nodes->Enter(2);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Errc::kInvalidArgument) << bad.error().ToString();
}

TEST_F(LocalNodesTest, NodeZeroReachesTheOthersOverTcp) {
  const auto nodes = MustCreate(Options(3));
  ASSERT_NE(nodes, nullptr);
  constexpr int kPort = 7000;

  // Node 1: a program spawned into the node, told what to say through the
  // environment. It answers with the address the connection came from.
  const char* server =
      "import os, socket\n"
      "s = socket.socket()\n"
      "s.bind((os.environ['ROAM_ADDR'], int(os.environ['ROAM_PORT'])))\n"
      "s.listen(1)\n"
      "c, peer = s.accept()\n"
      "c.recv(100)\n"
      "c.sendall((os.environ['ROAM_GREETING'] + ' ' + peer[0]).encode())\n"
      "c.close()\n";
  auto spawned = nodes->Spawn(1, {"python3", "-c", server},
                              {{"ROAM_ADDR", nodes->address(1)},
                               {"ROAM_PORT", std::to_string(kPort)},
                               {"ROAM_GREETING", "hello from node 1"}});
  if (!spawned.has_value() && spawned.error().code() == Errc::kNotFound) {
    GTEST_SKIP() << "python3 is needed for the server: " << spawned.error().ToString();
  }
  ASSERT_TRUE(spawned.has_value()) << spawned.error().ToString();

  // Node 2: a socket made by a thread that entered the node. The socket
  // stays in node 2 after the thread has left.
  const int listener = OnThread([&] {
    if (!nodes->Enter(2).has_value()) return -1;
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const sockaddr_in sa = SocketAddress(nodes->address(2), kPort);
    if (fd < 0 || bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0 ||
        listen(fd, 1) != 0) {
      ADD_FAILURE() << "listen in node 2: " << strerror(errno);
    }
    if (!nodes->Leave().has_value()) ADD_FAILURE() << "leave node 2";
    return fd;
  });
  ASSERT_GE(listener, 0);
  // It answers with what it got and where from; any thread may serve it.
  std::thread node2_server([listener] {
    pollfd ready{listener, POLLIN, 0};
    if (poll(&ready, 1, 20'000) != 1) return;
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    const int conn = accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    if (conn < 0) return;
    std::array<char, INET_ADDRSTRLEN> from{};
    inet_ntop(AF_INET, &peer.sin_addr, from.data(), from.size());
    std::string got;
    std::array<char, 64> chunk;
    ssize_t n = 0;
    while ((n = read(conn, chunk.data(), chunk.size())) > 0) {
      got.append(chunk.data(), static_cast<std::size_t>(n));
    }
    const std::string reply = fmt::format("node 2 got '{}' from {}", got, from.data());
    if (write(conn, reply.data(), reply.size()) < 0) ADD_FAILURE() << strerror(errno);
    close(conn);
  });

  const auto [from_node1, from_node2] = OnThread([&] {
    EXPECT_TRUE(nodes->Enter(0).has_value());
    return std::pair{Exchange(nodes->address(1), kPort, "ping"),
                     Exchange(nodes->address(2), kPort, "ping from node 0")};
  });
  node2_server.join();
  close(listener);
  EXPECT_EQ(from_node1, "hello from node 1 " + nodes->address(0));
  EXPECT_EQ(from_node2, "node 2 got 'ping from node 0' from " + nodes->address(0));

  int status = 0;
  ASSERT_EQ(waitpid(*spawned, &status, 0), *spawned);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

TEST_F(LocalNodesTest, TwoAtOnceDoNotCollide) {
  std::array<Result<std::unique_ptr<LocalNodes>>, 2> made;
  {
    std::thread other([&] { made[1] = LocalNodes::Create(Options(2)); });
    made[0] = LocalNodes::Create(Options(2));
    other.join();
  }
  for (const auto& m : made) ASSERT_TRUE(m.has_value()) << m.error().ToString();
  const LocalNodes& a = **made[0];
  const LocalNodes& b = **made[1];
  EXPECT_NE(a.prefix(), b.prefix());
  EXPECT_NE(Inode(a.switch_netns_fd()), Inode(b.switch_netns_fd()));
  EXPECT_NE(Inode(a.netns_fd(0)), Inode(b.netns_fd(0)));

  // Even the same subnet twice: each pool is a network of its own.
  const auto c = MustCreate(Options(2, "10.213.7.0/24"));
  const auto d = MustCreate(Options(2, "10.213.7.0/24"));
  ASSERT_NE(c, nullptr);
  ASSERT_NE(d, nullptr);
  for (const LocalNodes* nodes : std::vector<const LocalNodes*>{&a, &b, c.get(), d.get()}) {
    for (int i = 0; i < 2; ++i) {
      const auto r = nodes->Run(i, {"ip", "-o", "-4", "addr", "show", "dev", "eth0"});
      ASSERT_TRUE(r.has_value()) << r.error().ToString();
      EXPECT_TRUE(Contains(r->out, fmt::format("inet {}/24", nodes->address(i)))) << r->out;
    }
  }
}

TEST_F(LocalNodesTest, MostNodesWithTheLongestPrefix) {
  const std::string prefix = fmt::format("{:z<12}", "r" + ::roam::testing::UniqueName("", 11));
  const auto nodes = MustCreate(Options(LocalNodes::kMaxNodes, "", prefix));
  ASSERT_NE(nodes, nullptr);
  EXPECT_EQ(nodes->prefix(), prefix);
  const int last = LocalNodes::kMaxNodes - 1;
  const auto r = nodes->Run(last, {"ip", "-o", "-4", "addr", "show", "dev", "eth0"});
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_TRUE(Contains(r->out, fmt::format("inet {}/24", nodes->address(last)))) << r->out;
  EXPECT_TRUE(Contains(nodes->address(last), ".64")) << nodes->address(last);
}

TEST_F(LocalNodesTest, RunCapturesOutputExitCodeAndEnvironment) {
  const auto nodes = MustCreate(Options(1));
  ASSERT_NE(nodes, nullptr);
  const auto r = nodes->Run(0, {"sh", "-c", "echo out $ROAM_COLOUR; echo err >&2; exit 3"},
                            {{"ROAM_COLOUR", "green"}});
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out green\n");
  EXPECT_EQ(r->err, "err\n");

  const auto killed = nodes->Run(0, {"sh", "-c", "kill -9 $$"});
  ASSERT_TRUE(killed.has_value()) << killed.error().ToString();
  EXPECT_EQ(killed->exit_code, 128 + SIGKILL);
}

TEST_F(LocalNodesTest, RunKillsACommandPastItsTimeout) {
  const auto nodes = MustCreate(Options(1));
  ASSERT_NE(nodes, nullptr);
  const auto start = std::chrono::steady_clock::now();
  const auto r = nodes->Run(0, {"sleep", "30"}, {}, 200ms);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Errc::kTimeout) << r.error().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

TEST_F(LocalNodesTest, ChildrenGetOnlyTheStandardDescriptors) {
  const auto nodes = MustCreate(Options(1));
  ASSERT_NE(nodes, nullptr);
  // A descriptor without close-on-exec, as a harness might leak one.
  const int leaked = fcntl(STDERR_FILENO, F_DUPFD, 100);
  ASSERT_GE(leaked, 100) << strerror(errno);
  const auto r = nodes->Run(0, {"sh", "-c", "ls /proc/$$/fd; true"});
  close(leaked);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->out, "0\n1\n2\n");
}

TEST_F(LocalNodesTest, SpawnRefusesWhatItCannotStart) {
  const auto nodes = MustCreate(Options(1));
  ASSERT_NE(nodes, nullptr);
  const auto missing = nodes->Spawn(0, {"roam-no-such-program"});
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Errc::kNotFound) << missing.error().ToString();
  const auto bad_path = nodes->Spawn(0, {"/nonexistent/roam"});
  ASSERT_FALSE(bad_path.has_value());
  EXPECT_EQ(bad_path.error().code(), Errc::kNotFound) << bad_path.error().ToString();
  EXPECT_TRUE(Contains(bad_path.error().message(), "execve /nonexistent/roam"))
      << bad_path.error().ToString();
  const auto bad_node = nodes->Spawn(1, {"true"});
  ASSERT_FALSE(bad_node.has_value());
  EXPECT_EQ(bad_node.error().code(), Errc::kInvalidArgument) << bad_node.error().ToString();
  const auto empty = nodes->Spawn(0, {});
  ASSERT_FALSE(empty.has_value());
  EXPECT_EQ(empty.error().code(), Errc::kInvalidArgument) << empty.error().ToString();
}

TEST_F(LocalNodesTest, DestructionLeavesNothing) {
  auto nodes = MustCreate(Options(2));
  ASSERT_NE(nodes, nullptr);
  const std::string prefix = nodes->prefix();
  std::vector<std::string> namespaces = {NsLink(Inode(nodes->switch_netns_fd()))};
  for (int i = 0; i < 2; ++i) namespaces.push_back(NsLink(Inode(nodes->netns_fd(i))));
  const auto sleeper = nodes->Spawn(1, {"sleep", "1000"});
  ASSERT_TRUE(sleeper.has_value()) << sleeper.error().ToString();
  // While they live, the namespaces are held by our descriptors only.
  for (const auto& ns : namespaces) EXPECT_EQ(NamespacesWeHold().count(ns), 1u) << ns;
  EXPECT_FALSE(Contains(RootIp({"link"}), prefix));

  nodes.reset();

  int status = 0;
  ASSERT_EQ(waitpid(*sleeper, &status, 0), *sleeper);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  const std::set<std::string> held = NamespacesWeHold();
  for (const auto& ns : namespaces) EXPECT_EQ(held.count(ns), 0u) << ns;
  EXPECT_FALSE(Contains(RootIp({"link"}), prefix));
  EXPECT_TRUE(RunNetnsEntries(prefix).empty());
}

TEST_F(LocalNodesTest, AFailedSetupLeavesNothing) {
  // In a child of our own: the fault is switched on through the environment.
  const pid_t child = fork();
  ASSERT_GE(child, 0) << strerror(errno);
  if (child == 0) {
    setenv("ROAM_FAULT", "local-nodes-last-node", 1);
    const std::set<std::string> before = NamespacesWeHold();
    const auto made = LocalNodes::Create(Options(3, "", "rnfault"));
    if (made.has_value()) _exit(10);
    if (!Contains(made.error().ToString(),
                  "set up local nodes rnfault: fault local-nodes-last-node")) {
      _exit(11);
    }
    if (NamespacesWeHold() != before) _exit(12);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10: no failure, 11: another error, 12: namespaces left";
}

TEST_F(LocalNodesTest, AKilledOwnerLeavesNothing) {
  // Orphans of the owner come to us rather than to an init that may not reap
  // them, so that we can see how they died.
  ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0) << strerror(errno);
  struct NoLongerSubreaper {
    ~NoLongerSubreaper() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
  } restore;
  std::array<int, 2> report{};
  ASSERT_EQ(pipe2(report.data(), O_CLOEXEC), 0);
  const pid_t owner = fork();
  ASSERT_GE(owner, 0) << strerror(errno);
  if (owner == 0) {
    // The owner: make nodes, start a long program in one, say so, wait to
    // be killed.
    close(report[0]);
    auto made = LocalNodes::Create(Options(2));
    std::string line;
    if (!made.has_value()) {
      line = "error " + made.error().ToString() + "\n";
    } else {
      const auto sleeper = (*made)->Spawn(1, {"sleep", "1000"});
      line = sleeper.has_value() ? fmt::format("{} {}\n", (*made)->prefix(), *sleeper)
                                 : "error " + sleeper.error().ToString() + "\n";
    }
    if (write(report[1], line.data(), line.size()) < 0) _exit(2);
    for (;;) pause();
  }
  close(report[1]);
  std::string line;
  std::array<char, 256> chunk;
  pollfd readable{report[0], POLLIN, 0};
  while (line.find('\n') == std::string::npos && poll(&readable, 1, 60'000) == 1) {
    const ssize_t n = read(report[0], chunk.data(), chunk.size());
    if (n <= 0) break;
    line.append(chunk.data(), static_cast<std::size_t>(n));
  }
  close(report[0]);
  std::istringstream fields(line);
  std::string prefix;
  pid_t sleeper = -1;
  fields >> prefix >> sleeper;
  // Watch the program in the node before its owner dies.
  const int sleeper_fd =
      prefix != "error" && sleeper > 0 ? static_cast<int>(syscall(SYS_pidfd_open, sleeper, 0)) : -1;

  kill(owner, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(owner, &status, 0), owner);
  ASSERT_NE(prefix, "error") << line;
  ASSERT_GT(sleeper, 0) << line;
  ASSERT_GE(sleeper_fd, 0) << strerror(errno);

  // PR_SET_PDEATHSIG: the program dies with the thread that spawned it.
  pollfd exited{sleeper_fd, POLLIN, 0};
  EXPECT_EQ(poll(&exited, 1, 10'000), 1) << "sleep " << sleeper << " outlived its owner";
  close(sleeper_fd);
  ASSERT_EQ(waitpid(sleeper, &status, 0), sleeper) << strerror(errno);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  EXPECT_FALSE(Contains(RootIp({"link"}), prefix));
  EXPECT_TRUE(RunNetnsEntries(prefix).empty());
}

TEST_F(LocalNodesTest, WithoutNetAdminItIsPermissionDenied) {
  const pid_t child = fork();
  ASSERT_GE(child, 0) << strerror(errno);
  if (child == 0) {
    // Drop CAP_NET_ADMIN from the effective set of this process only.
    __user_cap_header_struct header{};
    header.version = _LINUX_CAPABILITY_VERSION_3;
    std::array<__user_cap_data_struct, _LINUX_CAPABILITY_U32S_3> data{};
    if (syscall(SYS_capget, &header, data.data()) != 0) _exit(10);
    data[CAP_NET_ADMIN / 32].effective &= ~(1U << (CAP_NET_ADMIN % 32));
    if (syscall(SYS_capset, &header, data.data()) != 0) _exit(11);
    const auto nodes = LocalNodes::Create(Options(1));
    if (nodes.has_value()) _exit(12);
    if (nodes.error().code() != Errc::kPermissionDenied) _exit(13);
    if (!Contains(nodes.error().message(), "lacks CAP_NET_ADMIN")) _exit(14);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10/11: capget/capset, 12: created, 13: other code, "
                                       "14: other message";
}

}  // namespace
}  // namespace roam::launch
