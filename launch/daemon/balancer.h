// roamd's part in load sharing: it samples this node's load (the runnable
// tasks of the processes roam runs here, against the CPUs the node offers),
// spreads it through the pool (roam::gossip: a load board peers write with
// one-sided puts on the control fabric) by MOSIX dissemination or by Lau et
// al.'s anti-tasks, and asks the policy (roam::policy) where a new process
// should start, which processes should move away, and whether to take one
// a peer offers.
//
// Node ids in load vectors are pool ranks.
//
// Thread-safety: one thread, the daemon's event loop (which progresses the
// control fabric). Lifetime: the fabric outlives the balancer; Attach's
// PoolPeers outlives it too.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "launch/daemon/pool_peers.h"
#include "roam/base/error.h"
#include "roam/gossip/anti_tasks.h"
#include "roam/gossip/dissemination.h"
#include "roam/load/sampler.h"
#include "roam/policy/config.h"
#include "roam/policy/load_ledger.h"
#include "roam/policy/rebalance.h"
#include "roam/transport/transport.h"

namespace roam::daemon {

// What the node does with the load it learns (roamd --balance).
enum class BalanceMode {
  kOff,    // no sampling, no gossip: processes run where they are asked to
  kExec,   // new processes start on the least-loaded node; nothing moves
  kMosix,  // that, and overloaded nodes move old processes to lighter ones
};
Result<BalanceMode> ParseBalanceMode(std::string_view text);
std::string_view BalanceModeName(BalanceMode mode);

// How load information travels (roamd --gossip); every node of a pool
// runs the same.
enum class GossipKind {
  kMosix,     // each node writes its window into `fanout` random peers a tick
  kAntiTask,  // light nodes send requests for work toward heavy ones; a
              // heavy node moves processes to the senders of those it keeps
};
Result<GossipKind> ParseGossipKind(std::string_view text);
std::string_view GossipKindName(GossipKind kind);

// The runnable tasks (state R) among the threads of `pid`; 0 when it is gone.
int RunnableTasks(pid_t pid);
// Its resident memory in bytes (/proc/PID/statm); 0 when it is gone.
std::uint64_t ResidentBytes(pid_t pid);

class Balancer final {
 public:
  struct Options {
    std::uint32_t self = 0;  // this node's rank in its pool
    BalanceMode mode = BalanceMode::kMosix;
    policy::PolicyConfig policy;
    load::LoadSampler::Options sampler;
    GossipKind gossip_kind = GossipKind::kMosix;
    // The board's shape, the view's capacity and the seed serve both kinds.
    gossip::Disseminator::Options gossip;
    gossip::AntiTaskThresholds thresholds;  // kAntiTask
  };

  // The board is allocated on `control` now, so that its key is published
  // when the node joins (PackBoardKey). Refuses mode kOff (a node that does
  // not share load has no balancer) and a bad policy or gossip option, with
  // a one-line error.
  static Result<std::unique_ptr<Balancer>> Create(transport::Fabric& control, Options options);

  Result<transport::Bytes> PackBoardKey() const;
  // Once the pool is known: a board to write to at every member that
  // published one (unpacked on first use).
  Status Attach(PoolPeers& peers);

  // One tick: folds in a reading taken now, then gossips.
  void Tick(const load::NodeReadings& readings, std::uint64_t now_ns);

  // Where a process started here should run: a member's name (this node's
  // own when nothing is better, balancing is off, or before the first
  // tick), and this node's load per CPU with the process, for the target's
  // Admit.
  struct Placement {
    std::string node;
    double here_load_per_cpu = 0;
  };
  Placement Place(std::uint64_t now_ns);
  // Moves to make now (kMosix only), targets as member names: to lighter
  // peers it knows of, or under anti-tasks to the senders of those this
  // tick kept.
  struct NamedMove {
    std::uint64_t id = 0;  // the candidate's
    std::string target;
    double source_load_per_cpu = 0;
  };
  std::vector<NamedMove> Moves(std::span<const policy::Candidate> candidates, std::uint64_t now_ns);
  // This node must empty itself (draining, or its owner is back): where
  // each guest among `candidates` goes, whatever its age: peers that
  // accept guests, spread by load, or its home when none does. Its own
  // processes stay. Empty before the first tick.
  std::vector<NamedMove> Evictions(std::span<const policy::Candidate> candidates,
                                   std::uint64_t now_ns);
  // A peer offers a process that has `asker_load_per_cpu` where it is: yes
  // (and counted here) while this node stays lighter with it.
  bool Admit(double asker_load_per_cpu, std::uint64_t now_ns);
  // A process is on its way to or from `node` (+1 arriving, -1 leaving).
  void Record(std::string_view node, std::uint64_t now_ns, int processes);

  // `roam idle`: the nodes, this one included, that accept guests and have
  // a CPU free, as far as this node knows; most room first.
  struct IdleNode {
    std::string node;
    double free_cpus = 0;
    double load_per_cpu = 0;
    double age_seconds = 0;  // of what this node knows of it
  };
  std::vector<IdleNode> Idle(std::uint64_t now_ns) const;

  BalanceMode mode() const { return options_.mode; }
  // This node's latest vector, and what it knows of the others.
  const load::LoadVector& own() const { return own_; }
  std::span<const load::LoadVector> peers() const { return view().peers(); }
  GossipKind gossip_kind() const { return options_.gossip_kind; }

 private:
  Balancer(Options options, std::unique_ptr<gossip::Disseminator> gossip,
           std::unique_ptr<gossip::AntiTasks> anti);
  const load::LoadView& view() const { return gossip_ ? gossip_->view() : anti_->view(); }
  std::optional<std::uint32_t> RankOf(std::string_view name) const;
  std::string NameOf(std::uint32_t rank) const;

  Options options_;
  // One of the two, by gossip_kind.
  std::unique_ptr<gossip::Disseminator> gossip_;
  std::unique_ptr<gossip::AntiTasks> anti_;
  PoolPeers* pool_ = nullptr;
  load::LoadSampler sampler_;
  load::LoadVector own_{};
  bool sampled_ = false;
  policy::LoadLedger ledger_;
  std::mt19937_64 rng_;
  // By member rank: its board's key as its endpoint unpacked it, and the
  // peer the disseminator writes to (a member without a board, or whose
  // key did not unpack, is left out).
  std::vector<std::unique_ptr<transport::RemoteKey>> boards_;
  std::vector<gossip::BoardPeer> board_peers_;
};

}  // namespace roam::daemon
