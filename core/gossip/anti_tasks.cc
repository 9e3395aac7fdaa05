#include "roam/gossip/anti_tasks.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "board_io.h"

namespace roam::gossip {

const BoardPeer* AntiTaskPeerList::Find(std::uint32_t node) {
  for (const BoardPeer& p : peers_) {
    if (p.node == node) return &p;
  }
  return nullptr;
}

LoadState StateOf(const load::LoadVector& v, const AntiTaskThresholds& thresholds) {
  const double per_cpu = load::LoadPerCpu(v);
  if (per_cpu > thresholds.heavy_above) return LoadState::kHeavy;
  if (per_cpu < thresholds.light_below && (v.flags() & load::kAccepting) != 0) {
    return LoadState::kLight;
  }
  return LoadState::kNormal;
}

namespace {

// Buffers anti-tasks are put from (board_io.h): several may go out in
// one tick.
constexpr std::size_t kBuffers = 8;

class AntiTasksImpl final : public AntiTasks {
 public:
  AntiTasksImpl(std::uint32_t self, Options options, internal::BoardIo io)
      : self_(self),
        options_(options),
        io_(std::move(io)),
        view_(self, options.view_capacity),
        rng_(options.seed) {}

  Result<transport::Bytes> PackBoardKey() const override { return io_.PackBoardKey(); }

  Status Tick(const load::LoadVector& own, AntiTaskPeers& peers) override {
    ++counts_.ticks;
    pulls_.clear();
    arrived_.clear();
    view_.SetOwn(own);
    io_.Scan([this](std::uint32_t, std::span<const load::LoadVector> window) {
      for (const load::LoadVector& v : window) view_.Merge(v);
      // A window that starts with a heavy node is its answer to one of
      // this node's anti-tasks: where work is, information only.
      if (StateOf(window.front(), options_.thresholds) != LoadState::kHeavy) {
        arrived_.emplace_back(window.begin(), window.end());
      }
    });
    const LoadState state = StateOf(own, options_.thresholds);
    for (std::vector<load::LoadVector>& trajectory : arrived_) {
      const load::LoadVector& origin = trajectory.front();
      if (origin.node() == self_) {
        ++counts_.ended;  // back home: nobody on its way had work
        continue;
      }
      if (state == LoadState::kHeavy) {
        pulls_.push_back({origin, static_cast<std::uint32_t>(trajectory.size() - 1)});
        ++counts_.pulled;
        // The origin learns where work is, for its next anti-tasks.
        if (const BoardPeer* back = Writable(peers.Find(origin.node()))) {
          if (Put(*back, {&own, 1})) ++counts_.answered;
        }
        continue;
      }
      if (trajectory.size() >= options_.shape.window) {
        ++counts_.ended;
        continue;
      }
      trajectory.push_back(own);
      if (const BoardPeer* next = NextHop(trajectory, peers)) {
        if (Put(*next, trajectory)) ++counts_.forwarded;
      } else {
        ++counts_.ended;
      }
    }
    if (state == LoadState::kLight) {
      if (const BoardPeer* next = NextHop({&own, 1}, peers)) {
        if (Put(*next, {&own, 1})) ++counts_.launched;
      }
    }
    origins_.clear();
    for (const Pull& pull : pulls_) {
      const std::optional<load::LoadVector> known = view_.Find(pull.origin.node());
      const load::LoadVector& v =
          known && known->sampled_ns() > pull.origin.sampled_ns() ? *known : pull.origin;
      if (std::none_of(origins_.begin(), origins_.end(),
                       [&](const load::LoadVector& o) { return o.node() == v.node(); })) {
        origins_.push_back(v);
      }
    }
    return Ok();
  }

  std::span<const Pull> pulls() const override { return pulls_; }
  std::span<const load::LoadVector> origins() const override { return origins_; }
  const load::LoadView& view() const override { return view_; }
  AntiTaskCounts counts() const override {
    AntiTaskCounts c = counts_;
    c.board = io_.board_counts();
    c.put_failures += io_.failures();
    return c;
  }

 private:
  static const BoardPeer* Writable(const BoardPeer* p) {
    return p != nullptr && p->endpoint != nullptr && p->board != nullptr ? p : nullptr;
  }

  // Where an anti-task with this trajectory goes next: the peer this
  // node's view knows (freshly) as the most heavily loaded of the heavy
  // ones it has not visited, else a random peer it has not visited; none
  // when every peer was visited.
  const BoardPeer* NextHop(std::span<const load::LoadVector> trajectory, AntiTaskPeers& peers) {
    auto visited = [&](std::uint32_t node) {
      return node == self_ ||
             std::any_of(trajectory.begin(), trajectory.end(),
                         [node](const load::LoadVector& v) { return v.node() == node; });
    };
    // The heavy ones, heaviest first, until one is writable.
    heavy_.clear();
    const std::uint64_t now = view_.own()->sampled_ns();
    const auto max_age = static_cast<std::uint64_t>(options_.max_info_age.count());
    for (const load::LoadVector& v : view_.peers()) {
      if (StateOf(v, options_.thresholds) != LoadState::kHeavy || visited(v.node())) continue;
      if (now > v.sampled_ns() && now - v.sampled_ns() > max_age) continue;
      heavy_.push_back({load::LoadPerCpu(v), v.node()});
    }
    std::sort(heavy_.begin(), heavy_.end(), std::greater<>());
    for (const auto& [load, node] : heavy_) {
      if (const BoardPeer* p = Writable(peers.Find(node))) return p;
    }
    // At random: a few draws, then a scan of the unvisited rest.
    const std::size_t n = peers.size();
    if (n == 0) return nullptr;
    std::uniform_int_distribution<std::size_t> any(0, n - 1);
    for (int tries = 0; tries < 16; ++tries) {
      const BoardPeer* p = Writable(peers.At(any(rng_)));
      if (p != nullptr && !visited(p->node)) return p;
    }
    unvisited_.clear();
    for (std::size_t i = 0; i < n; ++i) {
      const BoardPeer* p = Writable(peers.At(i));
      if (p != nullptr && !visited(p->node)) unvisited_.push_back(i);
    }
    if (unvisited_.empty()) return nullptr;
    return peers.At(
        unvisited_[std::uniform_int_distribution<std::size_t>(0, unvisited_.size() - 1)(rng_)]);
  }

  // Seals `window` into a free buffer and puts it into `peer`'s board at
  // this node's slot. False when no buffer is free or the put was refused.
  bool Put(const BoardPeer& peer, std::span<const load::LoadVector> window) {
    const Result<std::optional<std::size_t>> buffer = io_.Seal(window);
    if (buffer && !*buffer) {
      ++counts_.busy;
      return false;
    }
    if (!buffer || !io_.Put(**buffer, peer)) {
      ++counts_.put_failures;
      return false;
    }
    ++counts_.puts;
    return true;
  }

  std::uint32_t self_;
  Options options_;
  internal::BoardIo io_;
  load::LoadView view_;
  std::mt19937_64 rng_;
  std::vector<std::vector<load::LoadVector>> arrived_;  // this tick's anti-tasks
  std::vector<Pull> pulls_;
  std::vector<load::LoadVector> origins_;
  std::vector<std::pair<double, std::uint32_t>> heavy_;  // NextHop's (load per CPU, node)
  std::vector<std::size_t> unvisited_;
  AntiTaskCounts counts_;
};

}  // namespace

Result<std::unique_ptr<AntiTasks>> AntiTasks::Create(transport::Fabric& fabric, std::uint32_t self,
                                                     Options options) {
  if (options.shape.window < 2) {
    return MakeError(Errc::kInvalidArgument,
                     "anti-tasks: a window of {} leaves no room for a trajectory",
                     options.shape.window);
  }
  const AntiTaskThresholds& t = options.thresholds;
  if (!(t.light_below >= 0) || !(t.light_below < t.heavy_above)) {
    return MakeError(Errc::kInvalidArgument,
                     "anti-tasks: light below {} must be under heavy above {}", t.light_below,
                     t.heavy_above);
  }
  ROAM_ASSIGN_OR_RETURN(auto io, internal::BoardIo::Create(fabric, options.shape, kBuffers, self));
  return std::unique_ptr<AntiTasks>(std::make_unique<AntiTasksImpl>(self, options, std::move(io)));
}

}  // namespace roam::gossip
