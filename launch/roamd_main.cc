// roamd: the per-node daemon. Joins its pool (a bootstrap: a shared
// directory for the local pool, a TCP rendezvous for a host list, the
// launcher's PMIx under srun --mpi=pmix or mpirun), serves the
// node's control socket for `roam`, runs guests, keeps deputies, and talks
// to the other daemons over the transport with authenticated messages.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "launch/cli.h"
#include "launch/daemon/control_socket.h"
#include "launch/daemon/event_loop.h"
#include "launch/daemon/launcher.h"
#include "launch/daemon/node.h"
#include "launch/daemon/pool_peers.h"
#include "launch/pool/pool_key.h"
#include "roam/base/version.h"
#include "roam/numa/topology.h"
#include "roam/transport/bootstrap.h"
#include "roam/transport/transport.h"

namespace {

struct Flags {
  std::string name;
  int rank = 0;
  int size = 1;
  std::string bootstrap;
  bool pmix = false;  // the bootstrap is the launcher's PMIx
  std::string socket = std::string(roam::daemon::kSystemSocket);
  std::string pool_key;  // a path, or "job" (launcher.h); empty until parsed
  std::string guest_cgroup;
  double cpus = 0;
  std::int64_t staging_mib = roam::daemon::kDefaultStagingBytes >> 20;
  std::string balance = "mosix";
  std::string gossip = "mosix";
  bool owner_mode = false;
  std::vector<std::string> owner_inputs;
  double owner_idle_after = 30;
  std::string bind = "numa";
};

constexpr std::string_view kPoolKeyFile = "/etc/roam/pool.key";
constexpr std::chrono::seconds kJoinTimeout{30};

// The bootstrap this node joins its pool by: the launcher's PMIx (its
// rank, size and, unless --name, its node name, which this fills in), or
// the spec, by default a directory under /run/roam.
roam::Result<std::unique_ptr<roam::transport::Bootstrap>> OpenNodeBootstrap(Flags& flags) {
  using namespace roam;  // NOLINT(google-build-using-namespace)
  if (flags.pmix) {
    ROAM_ASSIGN_OR_RETURN(auto boot, transport::OpenPmixBootstrap());
    if (flags.name.empty()) flags.name = daemon::LauncherNodeName(daemon::PlaceOf(*boot));
    return std::unique_ptr<transport::Bootstrap>(std::move(boot));
  }
  const std::string spec =
      flags.bootstrap.empty() ? "dir:/run/roam/boot." + flags.name : flags.bootstrap;
  return transport::OpenBootstrap(spec, flags.rank, flags.size, kJoinTimeout);
}

// The key file, or under PMIx by default the job's key (launcher.h).
roam::Result<roam::pool::PoolKey> PoolKeyOf(const Flags& flags, roam::transport::Bootstrap& boot) {
  if (flags.pool_key == "job") return roam::daemon::ShareJobKey(boot, kJoinTimeout);
  return roam::pool::PoolKey::Load(flags.pool_key);
}

roam::Status Serve(Flags& flags) {
  using namespace roam;  // NOLINT(google-build-using-namespace)
  // Destroyed last: under PMIx, the launcher expects PMIx_Finalize before
  // the process exits.
  ROAM_ASSIGN_OR_RETURN(auto boot, OpenNodeBootstrap(flags));
  ROAM_ASSIGN_OR_RETURN(auto key, PoolKeyOf(flags, *boot));
  const std::string socket = daemon::ExpandNodeName(flags.socket, flags.name);
  ROAM_ASSIGN_OR_RETURN(auto loop, daemon::EventLoop::Create());
  transport::FabricOptions fabric_options;
  fabric_options.name = flags.name;
  ROAM_ASSIGN_OR_RETURN(auto control, transport::OpenFabric("ucx", fabric_options));
  // The migration fabric: pages and images travel on a worker of their own,
  // driven by the migration thread, so that a large move never stalls the
  // control traffic.
  fabric_options.name = flags.name + ".data";
  // A target answers nothing while it grows its staging or restores (seconds
  // for gibibytes here): a silent peer is given the restore's own limit
  // (MigrateOptions::restore_timeout). A daemon that dies closes its
  // connections, which is noticed at once.
  fabric_options.peer_timeout = std::chrono::seconds(60);
  ROAM_ASSIGN_OR_RETURN(auto data, transport::OpenFabric("ucx", fabric_options));
  ROAM_ASSIGN_OR_RETURN(const auto data_address, data->Address());

  // The load board lives on the control fabric (the event loop's thread
  // progresses it) and its key is published with the node's addresses.
  ROAM_ASSIGN_OR_RETURN(const daemon::BalanceMode mode, daemon::ParseBalanceMode(flags.balance));
  daemon::Balancer::Options balance_options;
  balance_options.self = static_cast<std::uint32_t>(boot->rank());
  balance_options.mode = mode;
  ROAM_ASSIGN_OR_RETURN(balance_options.gossip_kind, daemon::ParseGossipKind(flags.gossip));
  balance_options.gossip.seed =
      static_cast<std::uint64_t>(getpid()) ^ static_cast<std::uint64_t>(time(nullptr));
  std::unique_ptr<daemon::Balancer> balancer;
  daemon::PoolOptions pool_options;
  if (mode != daemon::BalanceMode::kOff) {
    ROAM_ASSIGN_OR_RETURN(balancer, daemon::Balancer::Create(*control, balance_options));
    ROAM_ASSIGN_OR_RETURN(pool_options.board_key, balancer->PackBoardKey());
    pool_options.gossip = daemon::GossipKindName(balance_options.gossip_kind);
  }
  pool_options.name = flags.name;
  pool_options.join_timeout = kJoinTimeout;
  daemon::Node* node_ptr = nullptr;
  ROAM_ASSIGN_OR_RETURN(
      auto peers,
      daemon::PoolPeers::Join(*loop, *boot, *control, data_address, std::move(key), pool_options,
                              [&node_ptr](const std::string& sender,
                                          const peer::Message& message) -> Result<peer::Reply> {
                                if (node_ptr == nullptr) {
                                  return MakeError(Errc::kUnavailable, "starting");
                                }
                                return node_ptr->OnPeerMessage(sender, message);
                              }));
  ROAM_TRY(loop->AddFabric(*control));
  if (balancer) ROAM_TRY(balancer->Attach(*peers));

  daemon::NodeOptions node_options;
  node_options.socket = socket;
  node_options.guest_cgroup = flags.guest_cgroup;
  node_options.cpus =
      flags.cpus > 0 ? flags.cpus : static_cast<double>(sysconf(_SC_NPROCESSORS_ONLN));
  node_options.staging_bytes = static_cast<std::size_t>(flags.staging_mib) << 20;
  node_options.balancer = balancer.get();
  std::optional<numa::Topology> topology;
  if (flags.bind == "numa") {
    ROAM_ASSIGN_OR_RETURN(topology, numa::Topology::FromSystem());
    node_options.topology = &*topology;
  }
  node_options.owner_mode = flags.owner_mode;
  node_options.owner_inputs.assign(flags.owner_inputs.begin(), flags.owner_inputs.end());
  node_options.owner_idle_after = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double>(flags.owner_idle_after));
  // Each incoming post-copy fetches its pages on a fabric of its own.
  auto page_fabric = [name = flags.name]() {
    transport::FabricOptions options;
    options.name = name + ".pages";
    return transport::OpenFabric("ucx", options);
  };
  ROAM_ASSIGN_OR_RETURN(
      auto node, daemon::Node::Start(*loop, *peers, std::move(data), page_fabric, node_options));
  node_ptr = node.get();

  auto stop = [&](const signalfd_siginfo&) {
    node->Shutdown();
    // A moment for the sessions to hear why, then out.
    (void)loop->AddTimer(std::chrono::milliseconds(200), std::chrono::milliseconds(0),
                         [&] { loop->Stop(); });
  };
  ROAM_TRY(loop->OnSignal(SIGTERM, stop).map([](daemon::SignalId) {}));
  ROAM_TRY(loop->OnSignal(SIGINT, stop).map([](daemon::SignalId) {}));
  std::fprintf(stderr, "roamd %s: serving %s, pool of %zu\n", flags.name.c_str(), socket.c_str(),
               peers->members().size());
  Status ran = loop->Run();
  node_ptr = nullptr;
  node.reset();
  // Its board keys were unpacked by the pool's endpoints: gone before them.
  balancer.reset();
  unlink(socket.c_str());
  (void)loop->RemoveFabric(*control);
  return ran;
}

}  // namespace

// CLI11 throws only for mistakes in building the command line, never for user input.
int main(int argc, char** argv) {  // NOLINT(bugprone-exception-escape)
  CLI::App app{"roamd: the roam node daemon", "roamd"};
  app.set_version_flag("--version", std::string("roamd ") + ROAM_VERSION_STRING + " (git " +
                                        ROAM_GIT_DESCRIBE + ")");
  Flags flags;
  app.add_option("--name", flags.name,
                 "This node's name in the pool (under a PMIx launcher, by default Slurm's name "
                 "for the node or the host name, with .<local rank> when ranks share a host)");
  CLI::Option* rank =
      app.add_option("--rank", flags.rank, "This node's rank in the bootstrap (0..size-1)")
          ->check(CLI::NonNegativeNumber);
  CLI::Option* size =
      app.add_option("--size", flags.size, "Nodes in the pool")->check(CLI::PositiveNumber);
  app.add_option("--bootstrap", flags.bootstrap,
                 "How the nodes find each other: dir:PATH (shared directory), tcp:HOST:PORT "
                 "(rendezvous at rank 0) or pmix (the launcher's; the default when srun "
                 "--mpi=pmix or mpirun starts roamd)");
  app.add_option("--socket", flags.socket,
                 "The control socket `roam` connects to; %n stands for the node's name")
      ->capture_default_str();
  app.add_option("--pool-key", flags.pool_key,
                 "The pool key file (mode 0600, the daemon user's), or job: a key rank 0 makes "
                 "at start and hands out through PMIx (the default under PMIx; default "
                 "elsewhere: /etc/roam/pool.key)");
  app.add_option("--guest-cgroup", flags.guest_cgroup,
                 "cgroup directory (v1 cpu) that guests run in");
  app.add_option("--cpus", flags.cpus, "The node's capacity in CPUs (default: online CPUs)");
  app.add_option("--staging", flags.staging_mib,
                 "MiB of staging for incoming moves, allocated at start (0: none until the "
                 "first move); a move that needs more grows it while it runs")
      ->capture_default_str()
      ->check(roam::launch::CheckMebibytes);
  app.add_option("--balance", flags.balance,
                 "Load sharing: off (processes run where asked), exec (new processes start on "
                 "the least-loaded node) or mosix (that, and old processes move from overloaded "
                 "nodes to lighter ones)")
      ->capture_default_str()
      ->check(CLI::IsMember({"off", "exec", "mosix"}));
  app.add_option("--gossip", flags.gossip,
                 "How load information travels, the same on every node of a pool: mosix (each "
                 "node writes what it knows into a few random peers every second) or antitask "
                 "(light nodes send requests for work toward heavy ones, which move processes "
                 "to them; Lau et al.)")
      ->capture_default_str()
      ->check(CLI::IsMember({"mosix", "antitask"}));
  app.add_option("--bind", flags.bind,
                 "numa: bind each guest to the NUMA node with the most free cores (its CPUs "
                 "and memory); off: leave guests where the scheduler puts them")
      ->capture_default_str()
      ->check(CLI::IsMember({"numa", "off"}));
  app.add_flag("--owner-mode", flags.owner_mode,
               "Take guests only while this machine's owner is away (no input on a login "
               "terminal or an --owner-input for --owner-idle-after); send them away when the "
               "owner comes back");
  app.add_option("--owner-input", flags.owner_inputs,
                 "Watch this path for the owner's input instead of the login terminals "
                 "(repeatable)");
  app.add_option("--owner-idle-after", flags.owner_idle_after,
                 "Seconds without input after which the owner counts as away")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  if (const auto exit_code = roam::launch::ParseCommandLine(app, argc, argv)) return *exit_code;
  flags.pmix = flags.bootstrap == "pmix" ||
               (flags.bootstrap.empty() && roam::daemon::StartedByPmixLauncher());
  const auto usage = [](const std::string& message) {
    std::fprintf(stderr, "roamd: %s\n", message.c_str());
    return roam::launch::kUsageError;
  };
  if (flags.pmix) {
    if (rank->count() > 0 || size->count() > 0) {
      return usage("--rank and --size come from the launcher under PMIx; leave them out");
    }
    if (flags.pool_key.empty()) flags.pool_key = "job";
  } else {
    if (flags.name.empty()) {
      return usage(
          "--name is required unless a PMIx launcher (srun --mpi=pmix, mpirun) starts "
          "roamd");
    }
    if (flags.rank >= flags.size) {
      return usage(fmt::format("--rank {} is not below --size {}", flags.rank, flags.size));
    }
    if (flags.pool_key == "job") {
      return usage(
          "--pool-key job needs a PMIx launcher (elsewhere the key would travel "
          "unprotected): give a key file");
    }
    if (flags.pool_key.empty()) flags.pool_key = std::string(kPoolKeyFile);
  }
  // The staging stays resident for the daemon's life: more than the node's
  // memory cannot be had (and would overflow as bytes).
  const std::int64_t memory_mib = static_cast<std::int64_t>(sysconf(_SC_PHYS_PAGES)) *
                                      static_cast<std::int64_t>(sysconf(_SC_PAGESIZE)) >>
                                  20;
  if (flags.staging_mib > memory_mib) {
    std::fprintf(stderr, "roamd: --staging %lld MiB is more than this node's memory (%lld MiB)\n",
                 static_cast<long long>(flags.staging_mib), static_cast<long long>(memory_mib));
    return roam::launch::kUsageError;
  }
  signal(SIGPIPE, SIG_IGN);
  // The signals the event loop reads from a signalfd must be blocked in
  // every thread, so before any starts (UCX's, the migration thread), or a
  // SIGTERM for the process lands in a thread that does not block it and
  // its default action kills the daemon unheard.
  sigset_t handled;
  sigemptyset(&handled);
  for (int s : {SIGTERM, SIGINT, SIGCHLD}) sigaddset(&handled, s);
  pthread_sigmask(SIG_BLOCK, &handled, nullptr);
  if (const roam::Status served = Serve(flags); !served) {
    std::fprintf(stderr, "roamd %s: %s\n", flags.name.c_str(), served.error().ToString().c_str());
    return 1;
  }
  return 0;
}
