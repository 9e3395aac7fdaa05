#include "launch/pool_cmd.h"

#include <cstdio>
#include <string>

#include "launch/cli.h"
#include "launch/local_pool.h"
#include "roam/launch/local_nodes.h"

namespace roam::launch {
namespace {

LocalPoolOptions g_pool;

int Fail(const char* what, const Error& error) {
  std::fprintf(stderr, "roam: pool %s: %s\n", what, error.message().c_str());
  return 1;
}

int RunUp() {
  const Result<LocalPool> pool = StartLocalPool(g_pool);
  if (!pool.has_value()) return Fail("up", pool.error());
  std::printf("local pool '%s' is up: %zu nodes on %s, keeper pid %d\n", pool->name.c_str(),
              pool->nodes.size(), pool->subnet.c_str(), pool->keeper);
  for (const LocalPoolNode& node : pool->nodes) {
    std::printf("%-4s %-15s %s\n", node.name.c_str(), node.address.c_str(), node.socket.c_str());
  }
  std::printf("export ROAM_SOCKET=%s\n", pool->nodes.front().socket.c_str());
  return 0;
}

int RunDown() {
  if (const Status stopped = StopLocalPool(g_pool.name); !stopped.has_value()) {
    return Fail("down", stopped.error());
  }
  std::printf("local pool '%s' is down\n", g_pool.name.c_str());
  return 0;
}

}  // namespace

void AddPoolCommands(CLI::App& app) {
  CLI::App* pool = app.add_subcommand("pool", "Start and stop a pool of nodes");
  pool->require_subcommand(1);
  CLI::App* up = pool->add_subcommand(
      "up", "Start a pool; --local N: N simulated nodes on this machine (needs root)");
  up->add_option("--local", g_pool.nodes,
                 "How many nodes: network namespaces, each with its own roamd")
      ->required()
      ->check(CLI::Range(1, LocalNodes::kMaxNodes));
  up->add_option("--cpus-per-node", g_pool.cpus_per_node,
                 "CPUs each node offers its guests (a CFS quota; fractions allowed)")
      ->check(CLI::PositiveNumber);
  up->add_option("--staging", g_pool.staging_mib,
                 "MiB of staging each node allocates at start for incoming moves (roamd "
                 "--staging; default roamd's)")
      ->check(CheckMebibytes);
  up->add_option("--balance", g_pool.balance,
                 "Load sharing on every node (roamd --balance): off, exec or mosix; default "
                 "roamd's (mosix)")
      ->check(CLI::IsMember({"off", "exec", "mosix"}));
  up->add_option("--gossip", g_pool.gossip,
                 "How load information travels on every node (roamd --gossip): mosix or "
                 "antitask; default roamd's (mosix)")
      ->check(CLI::IsMember({"mosix", "antitask"}));
  up->add_option("--name", g_pool.name, "The pool's name, [A-Za-z0-9_-]{1,16}")
      ->capture_default_str();
  CLI::App* down = pool->add_subcommand("down", "Stop a local pool and remove what it left");
  down->add_option("--name", g_pool.name, "The pool's name")->capture_default_str();
}

int RunPoolCommands(const CLI::App& app) {
  const CLI::App* pool = app.get_subcommand("pool");
  if (!pool->parsed()) return -1;
  if (pool->get_subcommand("up")->parsed()) return RunUp();
  if (pool->get_subcommand("down")->parsed()) return RunDown();
  return -1;
}

}  // namespace roam::launch
