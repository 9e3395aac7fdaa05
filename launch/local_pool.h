// The local pool: N simulated nodes on this machine (`roam pool up --local
// N`), each a network namespace from LocalNodes with its own roamd and its
// own CPU share (node_cgroup.h).
//
// A pool is kept by a keeper process, started by StartLocalPool and detached
// from it (double fork, setsid). The keeper holds the namespaces (LocalNodes
// lives in it), spawns the roamds, and on SIGTERM or SIGINT takes everything
// down again. Its state lives in one directory per pool:
//
//   /run/roam/local/<name>/
//     pool.key     the pool key (0600, root)
//     boot/        roamd's bootstrap directory (--bootstrap dir:...)
//     nI.sock      node I's roamd socket (I = 1..N)
//     nI.log       node I's roamd stdout and stderr
//     keeper.pid   the keeper's pid; the keeper holds an flock on it for as
//                  long as it lives, which is how others tell a live pool
//                  from a stale one (no pid reuse can fool a lock)
//     keeper.log   the keeper's own log
//     pool.json    what is up: name, subnet, keeper pid, and per node its
//                  name, address, socket, cgroup, cpus, pid and log
//
// and its CPU shares in <cpu cgroup mount>/roam.<name>/nI[/guests].
//
// The roamds die with the keeper even when it is SIGKILLed (LocalNodes'
// PR_SET_PDEATHSIG), and so do the namespaces; StopLocalPool removes the
// cgroups (and the guests still in them) and the directory that a killed
// keeper leaves behind.
//
// Thread-safety: the functions share no state; two callers working on one
// pool race only in the short window between creating its directory and
// locking keeper.pid. StartLocalPool forks, so call it while this process
// has a single thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::launch {

struct LocalPoolOptions {
  std::string name = "local";  // [A-Za-z0-9_-]{1,16}
  int nodes = 2;               // 1..LocalNodes::kMaxNodes
  double cpus_per_node = 1.0;  // the quota of each node's guests, > 0
  // Each roamd's staging in MiB (roamd --staging); unset: roamd's default.
  std::optional<std::int64_t> staging_mib;
  // Each roamd's load sharing (roamd --balance: off, exec, mosix); empty:
  // roamd's default.
  std::string balance;
  // How load information travels (roamd --gossip: mosix, antitask); empty:
  // roamd's default.
  std::string gossip;
  // The roamd program; empty: $ROAM_ROAMD, else roamd next to this program
  // (/proc/self/exe's directory).
  std::string roamd;
};

struct LocalPoolNode {
  std::string name;  // "n1"
  std::string address;
  std::string socket;
  std::string cgroup;  // the node's cgroup; its guests are in <cgroup>/guests
  double cpus = 0;
  pid_t pid = 0;  // roamd's
  std::string log;
};

struct LocalPool {
  std::string name;
  std::string dir;  // the state directory
  std::string subnet;
  pid_t keeper = 0;
  std::vector<LocalPoolNode> nodes;
};

// /run/roam/local/<name>.
std::filesystem::path LocalPoolDir(std::string_view name);

// Starts the keeper and returns once every roamd accepts on its socket (or
// 30 s have passed: kTimeout, with nothing left behind). kInvalidArgument
// unless the name is 1 to 16 characters of [A-Za-z0-9_-].
// kAlreadyExists when a live keeper holds the pool; a stale directory of a
// dead keeper is cleaned up and replaced.
Result<LocalPool> StartLocalPool(const LocalPoolOptions& options);

// Stops the pool: SIGTERM to the keeper, at most 15 s for it to finish (then
// SIGKILL), then removes whatever it left (cgroups, processes in them, the
// state directory). kNotFound ("no local pool 'x' is up") when there is no
// state directory.
Status StopLocalPool(std::string_view name);

// What pool.json says.
Result<LocalPool> ReadLocalPool(std::string_view name);

// The socket of node `node` ("n2") of pool `name`.
Result<std::string> LocalPoolSocket(std::string_view name, std::string_view node);

}  // namespace roam::launch
