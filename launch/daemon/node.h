// roamd's node: everything one daemon does, driven by its event loop.
//   - The control socket: `roam` commands arrive as control.proto requests;
//     the caller is identified by SO_PEERCRED and may act only on its own
//     processes (root on all).
//   - The pool (pool_peers.h): authenticated requests between daemons.
//   - Guests: processes running on this node, each in a PID namespace of
//     its own behind roam's init (roam/proc/guest_spawn.h), in the node's
//     guest cgroup, with stdin, stdout and stderr on pipes held by this
//     daemon. Output goes to the process's home; stdin comes from it.
//   - Deputies: for each process whose home is this node, wherever it runs,
//     the record that keeps its identity here: the waiting `roam run`
//     session (stdio, signals, exit status), its current node, and `roam
//     ps`. A deputy checks every second that its process's node still
//     knows it; a node that stops answering makes the process "lost", which
//     ends its session with a clear message and exit status 255.
//   - Moves: a guest is moved by the migration thread (migrator.h); the
//     home holds its stdin and signals meanwhile, the old node hands over
//     its output and unread stdin, and a failed move leaves it where it
//     ran (docs/migration.md, "In the pool").
//
// Thread-safety: one thread, the loop's. Lifetime: the loop, fabrics and
// pool must outlive the node (roamd_main.cc owns them in that order).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "launch/daemon/balancer.h"
#include "launch/daemon/control.pb.h"
#include "launch/daemon/control_socket.h"
#include "launch/daemon/event_loop.h"
#include "launch/daemon/migrator.h"
#include "launch/daemon/peer.pb.h"
#include "launch/daemon/pool_peers.h"
#include "roam/base/error.h"
#include "roam/base/unique_fd.h"
#include "roam/numa/binding.h"
#include "roam/numa/placement.h"
#include "roam/numa/topology.h"

namespace roam::daemon {

inline constexpr std::uint32_t kControlVersion = 1;
// Exit status of `roam run` when its process was lost with its node.
inline constexpr int kLostExitCode = 255;
// The staging a node allocates at start unless told (roamd --staging).
inline constexpr std::size_t kDefaultStagingBytes = std::size_t{32} << 20;

struct NodeOptions {
  std::filesystem::path socket;
  // cgroup (v1 cpu hierarchy) directory that guests join; empty: none.
  std::string guest_cgroup;
  double cpus = 1.0;  // the node's capacity: `roam nodes`, its load vector
  // Load sharing (sampling, gossip, placement, rebalancing); nullptr: none.
  // Outlives the node.
  Balancer* balancer = nullptr;
  // This machine's topology: guests are bound to a NUMA node (BindGuest);
  // nullptr: not bound. Outlives the node.
  const numa::Topology* topology = nullptr;
  // Incoming moves' staging, allocated at start (roamd --staging). A move
  // that needs more grows it during the move: a pre-copy asks for twice the
  // process's memory.
  std::size_t staging_bytes = kDefaultStagingBytes;
  // Owner mode (owner.h): guests only while the owner has given no input
  // for `owner_idle_after`; more places to watch for input.
  bool owner_mode = false;
  std::vector<std::filesystem::path> owner_inputs;
  std::chrono::nanoseconds owner_idle_after = std::chrono::seconds(30);
  std::chrono::milliseconds heartbeat{1000};
  // Consecutive failed heartbeats after which a guest's node is lost.
  int lost_after = 3;
};

class Node final {
 public:
  // Listens on the control socket, starts serving `peers`' messages and
  // starts the migration thread on `data` (the fabric whose address the
  // pool published as this node's data address).
  static Result<std::unique_ptr<Node>> Start(
      EventLoop& loop, PoolPeers& peers, std::unique_ptr<transport::Fabric> data,
      std::function<Result<std::unique_ptr<transport::Fabric>>()> page_fabric,
      const NodeOptions& options);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Ends every guest (SIGKILL to its init, which takes the namespace down)
  // and tells each waiting session why. For SIGTERM.
  void Shutdown();

  // The pool's request handler (PoolPeers::Handler).
  Result<peer::Reply> OnPeerMessage(const std::string& sender, const peer::Message& message);

 private:
  struct Session;
  struct Deputy;
  struct Guest;

  Node(EventLoop& loop, PoolPeers& peers, NodeOptions options, UniqueFd listen_fd);

  // Control socket.
  void OnAccept();
  void OnSessionEvent(std::uint64_t sid, std::uint32_t revents);
  void HandleRequest(std::uint64_t sid, const control::Request& request);
  void Send(std::uint64_t sid, control::Reply reply);
  void SendError(std::uint64_t sid, const Error& error);
  void FlushSession(Session& session);
  void CloseSession(std::uint64_t sid);

  void HandleRun(std::uint64_t sid, const control::Run& run);
  // The run's process goes to `node` (HandleRun's choice).
  void StartRun(std::uint64_t sid, const control::Run& run, const std::string& node);
  void HandlePs(std::uint64_t sid, const control::Ps& ps);
  void HandleNodes(std::uint64_t sid);
  // `roam drain` / `roam undrain`, here or forwarded to the node named.
  void HandleDrain(std::uint64_t sid, const control::Drain& drain);
  // Draining: no new guests (placements, moves, reservations from other
  // nodes) and the guests here sent away each tick; the answer for roam.
  control::Reply SetDraining(bool on);
  void HandleIdle(std::uint64_t sid);
  void HandleStdin(std::uint64_t sid, const control::Request& request);
  void HandleSessionSignal(std::uint64_t sid, int signo);
  // To wherever the process runs; held while it moves.
  void SignalDeputy(Deputy& deputy, int signo);
  // Best effort: `signo` to process `id` at `node` (SIGKILL: one that must
  // not run on without its home).
  void SendSignal(const std::string& node, const std::string& id, int signo);
  // kill and migrate: decided at the process's home, for a caller `uid`.
  // nullopt: the answer goes to session `sid` later (a migration; 0: none).
  Result<std::optional<control::Reply>> HandleAtHome(uid_t uid, const control::Request& request,
                                                     std::uint64_t sid);
  Result<std::optional<control::Reply>> StartMigration(Deputy& deputy,
                                                       const control::Migrate& migrate,
                                                       std::uint64_t sid);
  void FinishMigration(const std::string& sender, const peer::MigrationDone& done);
  // A moving process whose old node is lost: it runs at the new node, or it
  // is lost too.
  void SettleLostMove(const std::string& id, const Error& why);
  // The move's progress or outcome to whoever waits for it (a session here,
  // a forwarding node); the outcome ends the wait.
  void AnswerMigrate(Deputy& deputy, control::Reply reply);
  void ForwardToHome(std::uint64_t sid, const std::string& id, const control::Request& request);
  // Forwarded migrates whose answer the home sends later, and whether it
  // still answers (a home lost meanwhile ends the wait with an error).
  void CheckAwaitedHomes();

  // Deputies (processes whose home is here).
  Deputy* FindDeputy(const std::string& id);
  // Forgets the deputy; `last` ends its session, if one still waits.
  void EndDeputy(const std::string& id, control::Reply last);
  void Heartbeat();
  void ProcessInfoOf(const Deputy& deputy, control::ProcessInfo* out) const;

  // Guests (processes running here). StartGuest: the guest's pid in its
  // own pid namespace.
  Result<pid_t> StartGuest(const std::string& home, const peer::StartGuest& start);
  Guest* FindGuest(const std::string& id);
  void PumpOutput(Guest& guest, int index);
  // Sends one chunk of output home, again after a while if home is busy.
  void SendOutput(const std::string& id, int index, peer::Message message);
  void ReportExit(const std::string& id, peer::Message message, int tries);
  void PumpInput(Guest& guest);
  void OnGuestExit(const std::string& id);
  void MaybeReportExit(Guest& guest);
  void DropGuest(const std::string& id);
  void UnwatchGuest(Guest& guest);
  // NUMA locality (NodeOptions::topology): a guest started or arrived here
  // is bound to the NUMA node with the most free cores: every CPU of it (its
  // threads spread over them as the scheduler likes) and its pages moved
  // there; it counts as one core of that node in the ledger, which gives
  // the load vector's free cores. A binding that fails is logged, never a
  // reason to refuse the process.
  void BindGuest(Guest& guest);
  void UnbindGuest(Guest& guest);
  void ReapInits();
  void SampleLoad();
  // Load sharing, each sample: the node's vector out, then (mosix) moves
  // of old processes to lighter nodes, each reserved at its target first;
  // on a draining node, every guest away instead (home when balancing is
  // off).
  void BalanceTick();
  // Owner mode: whether the owner is at work now (kOwnerActive kept in
  // step, the change logged); false when the node is not in owner mode.
  bool CheckOwner();
  // Load sharing, and eviction from a draining node (`evict`: to its home
  // without a reservation there, and tried again sooner if it fails).
  void Rebalance(Guest& guest, const Balancer::NamedMove& move, bool evict);
  // A move that could not be arranged or failed: not tried again for a while.
  void PostponeMove(Guest& guest);
  // Migration, at the process's current node and at its new one.
  Status MigrateGuestAway(const std::string& home, const peer::MigrateGuest& request);
  void OnMigrationOutcome(MigrationOutcome outcome);
  void HandOver(Guest& guest);
  void CarryStdin(const std::string& id, peer::Message carry, int tries);
  void OnArrival(Arrival arrival);
  void WatchGuest(Guest& guest);

  EventLoop& loop_;
  PoolPeers& peers_;
  NodeOptions options_;
  UniqueFd listen_fd_;
  WatchId listen_watch_;
  TimerId heartbeat_timer_;
  TimerId load_timer_;
  std::uint64_t next_sid_ = 1;
  std::uint64_t next_process_ = 1;
  std::uint64_t next_migration_ = 1;
  std::map<std::uint64_t, std::unique_ptr<Session>> sessions_;
  std::map<std::string, std::unique_ptr<Deputy>> deputies_;
  std::map<std::string, std::unique_ptr<Guest>> guests_;
  struct AwaitedHome {
    std::string home;
    int missed = 0;  // heartbeats it did not answer
  };
  std::map<std::uint64_t, AwaitedHome> awaited_homes_;  // by session
  std::unique_ptr<Migrator> migrator_;
  std::vector<pid_t> inits_;  // released namespace inits to reap
  double load_ = 0;           // CPUs used by guests over the last sample
  // Why the node takes no guests now: LoadFlag bits kDraining (roam drain)
  // and kOwnerActive (owner mode). Read by the migration thread too: an
  // incoming move is refused while any is set.
  std::shared_ptr<std::atomic<std::uint8_t>> refusing_ =
      std::make_shared<std::atomic<std::uint8_t>>(0);
  numa::CoreLedger core_ledger_;      // guests bound here, by core
  std::uint64_t migrations_in_ = 0;   // moves that landed here
  std::uint64_t migrations_out_ = 0;  // moves away that completed
  std::chrono::steady_clock::time_point last_sample_;
  std::vector<char> read_buffer_;  // PumpOutput's, not a fresh one per read attempt
};

}  // namespace roam::daemon
