// One machine as N simulated nodes. Each node is a network namespace with one
// interface, eth0, holding the node's address in a private IPv4 /24; the
// eth0s are veth ends whose peers sit on a bridge in one more, "switch",
// namespace. The transport tests, the benchmarks and `roam pool up --local`
// all build their nodes here.
//
//   LocalNodesOptions options;
//   options.nodes = 3;
//   ROAM_ASSIGN_OR_RETURN(auto nodes, LocalNodes::Create(options));
//   // nodes->address(1) is "10.x.y.2"; run a server there:
//   ROAM_ASSIGN_OR_RETURN(pid_t server, nodes->Spawn(1, {"roamd"}, {{"UCX_TLS", "tcp"}}));
//
// Only the network is separate: the nodes share the file system, /dev/shm,
// the pid namespace and the CPUs with this process. UCX therefore picks
// shared memory between "nodes" unless UCX_TLS names network transports only
// (UCX_TLS=tcp); anything that claims to cross a network must set it.
//
// Nothing is added to the namespace this process runs in. The bridge, the
// veth pairs and the addresses are created inside namespaces of our own,
// which are bind-mounted nowhere (nothing in /run/netns) and held only by
// descriptors of this object. The kernel destroys a network namespace, with
// every interface in it, once nothing refers to it, and a veth end that goes
// takes its peer along. So closing the descriptors undoes everything: in the
// destructor, when Create fails halfway, and when the process is killed.
// Besides the descriptors, a process or thread inside a namespace holds it:
// processes from Spawn are killed (SIGKILL) when the LocalNodes is destroyed
// and when the thread that spawned them exits (PR_SET_PDEATHSIG); what they
// start in turn, and threads left in a node by Enter, are the caller's to
// end. The descriptors are close-on-exec, so programs this process starts by
// other means never hold a node.
//
// Needs CAP_SYS_ADMIN (new namespaces, setns) and CAP_NET_ADMIN (links,
// addresses): without them Create fails with kPermissionDenied. The links and
// addresses are configured by iproute2's `ip`, run inside each namespace.
//
// Thread-safety: once Create has returned, every member function may be
// called from any thread, concurrently; the destructor must not run
// concurrently with any of them. A network namespace is a property of a
// thread, not of a process: Enter moves only the calling thread, and a socket
// stays in the namespace it was created in, wherever its thread goes later.
// /proc/self/net describes the main thread's namespace, /proc/thread-self/net
// the calling thread's.
//
// Lifetime: a LocalNodes owns its namespaces; the descriptors and paths it
// hands out are valid while it lives.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "roam/base/error.h"

namespace roam::launch {

struct LocalNodesOptions {
  // How many nodes, 1..LocalNodes::kMaxNodes.
  int nodes = 2;
  // Starts the name of every interface we create (the bridge "<prefix>br",
  // the switch's veth ends "<prefix>v<i>"): 1..12 characters of [A-Za-z0-9_-],
  // the first a letter. Empty: "rn", this process's pid and a per-instance
  // number, in hex.
  std::string prefix;
  // The nodes' network, "a.b.c.0/24"; node i gets a.b.c.(i+1). Empty:
  // 10.x.y.0/24 with x and y drawn at random. The addresses exist only inside
  // our namespaces, so they cannot clash with the host's; the random choice
  // keeps logs of two pools apart.
  std::string subnet;
};

// A finished command: its exit status and everything it wrote.
struct CommandOutput {
  int exit_code = -1;  // 128 + the signal if it was killed
  std::string out;
  std::string err;
};

class LocalNodes final {
 public:
  static constexpr int kMaxNodes = 64;
  // The name of every node's interface (each lives in its own namespace).
  static constexpr std::string_view kInterface = "eth0";
  static constexpr std::chrono::milliseconds kDefaultRunTimeout{30'000};

  // Variables for a program: each NAME=value replaces NAME in this process's
  // environment or is added to it.
  using Environment = std::vector<std::pair<std::string, std::string>>;

  // Builds the namespaces, the bridge and the links, and sets every node's
  // address; lo is up in every node. Errors: kInvalidArgument for bad
  // options, kPermissionDenied without CAP_SYS_ADMIN and CAP_NET_ADMIN,
  // kNotFound without `ip`, kIo when `ip` refuses (its message included).
  static Result<std::unique_ptr<LocalNodes>> Create(const LocalNodesOptions& options);

  LocalNodes(const LocalNodes&) = delete;
  LocalNodes& operator=(const LocalNodes&) = delete;
  // Kills what Spawn started and is still running (reaping stays with the
  // caller) and closes every namespace.
  ~LocalNodes();

  int node_count() const { return static_cast<int>(addresses_.size()); }
  const std::string& prefix() const { return prefix_; }
  const std::string& subnet() const { return subnet_; }  // "10.23.7.0/24"
  const std::string& bridge_name() const { return bridge_; }

  // Node `node` (0 <= node < node_count(); anything else is a bug and aborts):
  // its IPv4 address without the prefix length ("10.23.7.1" for node 0),
  const std::string& address(int node) const;
  // its interface (kInterface),
  std::string_view interface_name(int node) const;
  // a descriptor of its network namespace (O_CLOEXEC, owned by this object;
  // for setns(2)),
  int netns_fd(int node) const;
  // and a path to that namespace that another process may open:
  // "/proc/<our pid>/fd/<fd>", e.g. for `nsenter --net=PATH` or
  // `ip link set DEV netns PATH`.
  std::string netns_path(int node) const;
  // The namespace that holds the bridge and the other veth ends.
  int switch_netns_fd() const { return switch_fd_; }

  // Moves the calling thread (only it) into the node's network namespace:
  // sockets it creates from now on belong to the node. Leave takes it back
  // to the namespace the thread that called Create was in. A thread still in
  // a node keeps that namespace alive after the LocalNodes is gone.
  Status Enter(int node) const;
  Status Leave() const;

  // Starts argv (argv[0] is looked up in PATH unless it holds a '/') in the
  // node's network namespace, with this process's environment changed by
  // `env`, its stdin, stdout and stderr, no other descriptor, default signal
  // dispositions and an empty signal mask. `output_fd` >= 0 replaces its
  // stdout and stderr. Returns the child's pid; the caller reaps it. The
  // child gets SIGKILL when the calling thread exits or this LocalNodes is
  // destroyed, whichever comes first.
  Result<pid_t> Spawn(int node, const std::vector<std::string>& argv, const Environment& env = {},
                      int output_fd = -1);

  // Runs argv like Spawn, with stdin from /dev/null, and waits for it,
  // capturing stdout and stderr. A command still running after `timeout`
  // is killed and the result is kTimeout. A command that runs and fails is
  // not an error: see exit_code.
  Result<CommandOutput> Run(int node, const std::vector<std::string>& argv,
                            const Environment& env = {},
                            std::chrono::milliseconds timeout = kDefaultRunTimeout) const;

 private:
  LocalNodes() = default;
  Status CheckNode(int node) const;
  Status Configure(const std::string& ip) const;

  std::string prefix_;
  std::string subnet_;
  std::string bridge_;
  std::vector<std::string> addresses_;
  std::vector<int> node_fds_;
  int switch_fd_ = -1;
  int origin_fd_ = -1;  // where Leave goes

  std::mutex mu_;
  std::vector<int> spawned_;  // pidfds of Spawn's children; guarded by mu_
};

}  // namespace roam::launch
