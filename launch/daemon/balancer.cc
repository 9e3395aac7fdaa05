#include "launch/daemon/balancer.h"

#include <unistd.h>

#include <fstream>
#include <limits>
#include <string>
#include <utility>

#include "core/ckpt/procfs/procfs.h"
#include "roam/policy/eviction.h"
#include "roam/policy/placement.h"

namespace roam::daemon {

Result<BalanceMode> ParseBalanceMode(std::string_view text) {
  if (text == "off") return BalanceMode::kOff;
  if (text == "exec") return BalanceMode::kExec;
  if (text == "mosix") return BalanceMode::kMosix;
  return MakeError(Errc::kInvalidArgument, "unknown balance mode '{}' (off, exec or mosix)", text);
}

std::string_view BalanceModeName(BalanceMode mode) {
  switch (mode) {
    case BalanceMode::kOff:
      return "off";
    case BalanceMode::kExec:
      return "exec";
    case BalanceMode::kMosix:
      return "mosix";
  }
  return "?";
}

Result<GossipKind> ParseGossipKind(std::string_view text) {
  if (text == "mosix") return GossipKind::kMosix;
  if (text == "antitask") return GossipKind::kAntiTask;
  return MakeError(Errc::kInvalidArgument, "unknown gossip '{}' (mosix or antitask)", text);
}

std::string_view GossipKindName(GossipKind kind) {
  return kind == GossipKind::kAntiTask ? "antitask" : "mosix";
}

int RunnableTasks(pid_t pid) {
  const Result<std::vector<pid_t>> threads = ckpt::procfs::ListThreads(pid);
  if (!threads) return 0;
  int runnable = 0;
  for (pid_t tid : *threads) {
    // /proc/TID/stat is the thread's own, as /proc/PID/task/TID/stat.
    const Result<ckpt::procfs::Stat> stat = ckpt::procfs::ReadStat(tid);
    if (stat && stat->state == 'R') ++runnable;
  }
  return runnable;
}

std::uint64_t ResidentBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/statm");
  std::uint64_t size = 0;
  std::uint64_t resident = 0;
  if (!(in >> size >> resident)) return 0;
  return resident * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

Result<std::unique_ptr<Balancer>> Balancer::Create(transport::Fabric& control, Options options) {
  if (options.mode == BalanceMode::kOff) {
    return MakeError(Errc::kInvalidArgument, "balance mode off needs no balancer");
  }
  ROAM_TRY(policy::Validate(options.policy));
  std::unique_ptr<gossip::Disseminator> gossip;
  std::unique_ptr<gossip::AntiTasks> anti;
  if (options.gossip_kind == GossipKind::kAntiTask) {
    ROAM_ASSIGN_OR_RETURN(anti,
                          gossip::AntiTasks::Create(control, options.self,
                                                    {.shape = options.gossip.shape,
                                                     .thresholds = options.thresholds,
                                                     .view_capacity = options.gossip.view_capacity,
                                                     .max_info_age = options.policy.max_info_age,
                                                     .seed = options.gossip.seed}));
  } else {
    ROAM_ASSIGN_OR_RETURN(gossip,
                          gossip::Disseminator::Create(control, options.self, options.gossip));
  }
  return std::unique_ptr<Balancer>(
      new Balancer(std::move(options), std::move(gossip), std::move(anti)));
}

Result<transport::Bytes> Balancer::PackBoardKey() const {
  return gossip_ ? gossip_->PackBoardKey() : anti_->PackBoardKey();
}

Balancer::Balancer(Options options, std::unique_ptr<gossip::Disseminator> gossip,
                   std::unique_ptr<gossip::AntiTasks> anti)
    : options_(std::move(options)),
      gossip_(std::move(gossip)),
      anti_(std::move(anti)),
      // The epoch tells this daemon's vectors from an earlier one's.
      sampler_(options_.self, static_cast<std::uint32_t>(time(nullptr)), options_.sampler),
      ledger_(options_.policy.load_half_life),
      rng_(options_.gossip.seed) {}

Status Balancer::Attach(PoolPeers& peers) {
  const Member* self = peers.Find(peers.self());
  if (self == nullptr || static_cast<std::uint32_t>(self->rank) != options_.self) {
    return MakeError(Errc::kInternal, "node {} is not rank {} of its pool", peers.self(),
                     options_.self);
  }
  pool_ = &peers;
  boards_.resize(peers.members().size());
  for (const Member& m : peers.members()) {
    if (m.board.empty() || m.name == peers.self()) continue;
    ROAM_ASSIGN_OR_RETURN(transport::Endpoint * ep, peers.EndpointTo(m));
    auto key = ep->UnpackKey(m.board);
    if (!key) {
      return MakeError(key.error().code(), "the load board key of {} does not unpack: {}", m.name,
                       key.error().message());
    }
    boards_[static_cast<std::size_t>(m.rank)] = std::move(*key);
    board_peers_.push_back(
        {static_cast<std::uint32_t>(m.rank), ep, boards_[static_cast<std::size_t>(m.rank)].get()});
  }
  return Ok();
}

void Balancer::Tick(const load::NodeReadings& readings, std::uint64_t now_ns) {
  own_ = sampler_.Sample(readings, now_ns);
  sampled_ = true;
  ledger_.Expire(now_ns -
                 std::min<std::uint64_t>(
                     now_ns, static_cast<std::uint64_t>(options_.policy.max_info_age.count())));
  // A put that cannot be issued is counted by the gossip; the next tick
  // tries again.
  if (gossip_) {
    (void)gossip_->Tick(own_, board_peers_);
  } else {
    (void)anti_->Tick(own_, board_peers_);
  }
}

std::optional<std::uint32_t> Balancer::RankOf(std::string_view name) const {
  if (pool_ == nullptr) return std::nullopt;
  const Member* m = pool_->Find(name);
  if (m == nullptr) return std::nullopt;
  return static_cast<std::uint32_t>(m->rank);
}

std::string Balancer::NameOf(std::uint32_t rank) const {
  for (const Member& m : pool_->members()) {
    if (static_cast<std::uint32_t>(m.rank) == rank) return m.name;
  }
  return pool_->self();
}

Balancer::Placement Balancer::Place(std::uint64_t now_ns) {
  if (pool_ == nullptr || !sampled_) return {pool_ == nullptr ? "" : pool_->self(), 0};
  // The board as it is now: peers' puts since this node's last tick.
  if (gossip_) gossip_->Refresh();
  const policy::PlacementChoice choice =
      policy::ChoosePlacement(own_, peers(), ledger_, now_ns, options_.policy, rng_);
  return {NameOf(choice.node), choice.here_load_per_cpu};
}

std::vector<Balancer::NamedMove> Balancer::Moves(std::span<const policy::Candidate> candidates,
                                                 std::uint64_t now_ns) {
  std::vector<NamedMove> named;
  if (pool_ == nullptr || options_.mode != BalanceMode::kMosix || !sampled_) return named;
  // Under anti-tasks, only to the senders of those kept this tick.
  const std::span<const load::LoadVector> targets = anti_ ? anti_->origins() : peers();
  for (const policy::Move& m :
       policy::ChooseMoves(own_, targets, candidates, ledger_, now_ns, options_.policy, rng_)) {
    named.push_back({m.id, NameOf(m.target), m.source_load_per_cpu});
  }
  return named;
}

std::vector<Balancer::NamedMove> Balancer::Evictions(std::span<const policy::Candidate> candidates,
                                                     std::uint64_t now_ns) {
  std::vector<NamedMove> named;
  if (pool_ == nullptr || !sampled_) return named;
  const policy::EvictionPlan plan =
      policy::ChooseEvictions(own_, peers(), candidates, ledger_, now_ns, options_.policy, rng_);
  // The node must empty, whatever its own load: a target is asked only
  // whether it takes guests.
  for (const policy::Move& m : plan.moves) {
    named.push_back({m.id, NameOf(m.target), std::numeric_limits<double>::infinity()});
  }
  return named;
}

std::vector<Balancer::IdleNode> Balancer::Idle(std::uint64_t now_ns) const {
  std::vector<IdleNode> named;
  if (pool_ == nullptr || !sampled_) return named;
  for (const policy::IdleNode& n :
       policy::IdleNodes(own_, peers(), ledger_, now_ns, options_.policy)) {
    named.push_back(
        {NameOf(n.node), n.free_cpus, n.load_per_cpu,
         now_ns > n.sampled_ns ? static_cast<double>(now_ns - n.sampled_ns) / 1e9 : 0.0});
  }
  return named;
}

bool Balancer::Admit(double asker_load_per_cpu, std::uint64_t now_ns) {
  if (!sampled_) return true;
  if (!policy::Admit(own_, ledger_, asker_load_per_cpu)) return false;
  ledger_.Record(options_.self, now_ns, 1000);
  return true;
}

void Balancer::Record(std::string_view node, std::uint64_t now_ns, int processes) {
  if (const std::optional<std::uint32_t> rank = RankOf(node)) {
    ledger_.Record(*rank, now_ns, processes * 1000);
  }
}

}  // namespace roam::daemon
