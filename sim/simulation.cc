#include "roam/sim/simulation.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <ctime>
#include <limits>
#include <memory>
#include <optional>
#include <queue>
#include <set>
#include <utility>

#include "roam/base/check.h"
#include "roam/gossip/anti_tasks.h"
#include "roam/gossip/dissemination.h"
#include "roam/load/sampler.h"
#include "roam/policy/load_ledger.h"
#include "roam/policy/placement.h"
#include "roam/policy/rebalance.h"
#include "roam/transport/fake.h"

namespace roam::sim {
namespace {

// What a move costs in the simulated pool (not the policy's estimate of
// it, which PolicyConfig holds): a fixed part and the resident size at
// 1 GB/s. Starting a process elsewhere costs the fixed part.
constexpr double kMoveFixedSeconds = 0.1;
constexpr double kMoveBytesPerSecond = 1e9;

// Ages of view entries are kept in bins of 1/16 tick.
constexpr double kAgeBinsPerTick = 16;
constexpr std::size_t kAgeBins = std::size_t{1} << 17;

std::uint64_t Ns(double seconds) {
  return static_cast<std::uint64_t>(std::llround(std::max(seconds, 0.0) * 1e9));
}

double ProcessCpuSeconds() {
  std::timespec t{};
  if (::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t) != 0) return 0;
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

std::uint64_t Mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

struct Process {
  std::uint32_t origin = 0;
  std::uint32_t node = 0;  // where it runs, or is on its way to
  double start = 0;
  // When it arrived at its node by a move (for one in transit: when it
  // lands); 0 for a process started there, by its origin or by a remote
  // placement, as roamd passes it (a guest it started, not one that
  // migrated in): the residence time holds back only processes that moved.
  double arrived = 0;
  double demand = 0;
  double attained = 0;  // CPU seconds used on earlier nodes
  double join_v = 0;    // the node's per-process service when it joined
  double tag = 0;       // join_v + what it still needed then
  std::uint64_t resident = 0;
  std::uint32_t moves = 0;
  bool running = false;
};

// A node that one endpoint of its fabric reaches, and the key of that
// peer's board unpacked on it.
struct Link {
  std::unique_ptr<transport::Endpoint> endpoint;
  std::unique_ptr<transport::RemoteKey> board;
  gossip::BoardPeer peer;  // the two above, for the node's gossip
  std::uint64_t used = 0;  // the last tick it was handed out in (ticks count from 1)
};

struct Node {
  // Processor sharing: `v` is the CPU time each runnable process has had
  // since the start; a process finishes when v reaches its tag.
  double v = 0;
  double last = 0;
  std::set<std::pair<double, std::uint32_t>> running;  // (tag, process)
  std::uint64_t version = 0;                           // of its pending completion event
  std::uint32_t incoming = 0;                          // processes on their way here

  std::optional<load::LoadSampler> sampler;
  std::optional<load::LoadVector> own;  // its latest sample
  std::unique_ptr<transport::Fabric> fabric;
  // One of the two, by strategy: anti-tasks (antitask) or MOSIX
  // dissemination (the others).
  std::unique_ptr<gossip::Disseminator> gossip;
  std::unique_ptr<gossip::AntiTasks> anti;
  std::vector<Link> links;  // a few endpoints kept from earlier ticks
  std::size_t next_evict = 0;
  std::optional<policy::LoadLedger> ledger;
  std::mt19937_64 rng;
};

// Every node's address and its board's packed key, as the pool's bootstrap
// hands them out: in one flat table, a record of two cache lines a node
// (not two heap blocks), since every put of a large pool connects to a
// peer drawn at random.
class Directory {
 public:
  void Add(transport::ByteView address, transport::ByteView board_key) {
    ROAM_CHECK(address.size() <= 255 && board_key.size() <= 255,
               "an address of {} bytes or a key of {} is too long for the directory",
               address.size(), board_key.size());
    const std::size_t need = (2 + address.size() + board_key.size() + kLine - 1) / kLine;
    if (need > lines_) Widen(need);
    table_.resize((records_ + 1) * lines_);
    std::byte* r = Record(records_);
    r[0] = static_cast<std::byte>(address.size());
    r[1] = static_cast<std::byte>(board_key.size());
    std::copy(address.begin(), address.end(), r + 2);
    std::copy(board_key.begin(), board_key.end(), r + 2 + address.size());
    ++records_;
  }
  transport::ByteView address(std::uint32_t node) const {
    const std::byte* r = Record(node);
    return {r + 2, static_cast<std::size_t>(r[0])};
  }
  // Asks the caches for `node`'s record.
  void Prefetch(std::uint32_t node) const {
    for (std::size_t l = 0; l < lines_; ++l) __builtin_prefetch(&table_[node * lines_ + l]);
  }
  transport::ByteView board_key(std::uint32_t node) const {
    const std::byte* r = Record(node);
    return {r + 2 + static_cast<std::size_t>(r[0]), static_cast<std::size_t>(r[1])};
  }

 private:
  static constexpr std::size_t kLine = 64;
  struct alignas(kLine) Line {
    std::array<std::byte, kLine> bytes;
  };

  std::byte* Record(std::size_t node) { return table_[node * lines_].bytes.data(); }
  const std::byte* Record(std::size_t node) const { return table_[node * lines_].bytes.data(); }
  // Records of `lines` lines, for a longer address or key than so far.
  void Widen(std::size_t lines) {
    std::vector<Line> wider(records_ * lines);
    for (std::size_t r = 0; r < records_; ++r) {
      std::copy_n(table_.begin() + static_cast<std::ptrdiff_t>(r * lines_), lines_,
                  wider.begin() + static_cast<std::ptrdiff_t>(r * lines));
    }
    table_ = std::move(wider);
    lines_ = lines;
  }

  std::vector<Line> table_;
  std::size_t lines_ = 2;  // a record's: the fake transport's fit in two
  std::size_t records_ = 0;
};

struct Event {
  enum class Kind : std::uint8_t { kCompletion, kLanding };
  double time = 0;
  std::uint64_t seq = 0;  // ties in issue order: runs repeat exactly
  Kind kind = Kind::kCompletion;
  std::uint32_t index = 0;  // the node (completion) or process (landing)
  std::uint64_t version = 0;
  bool operator>(const Event& o) const { return time != o.time ? time > o.time : seq > o.seq; }
};

class Histogram {
 public:
  void Add(double ticks) {
    const double bin = std::min<double>(std::floor(ticks * kAgeBinsPerTick), kAgeBins - 1);
    ++bins_[static_cast<std::size_t>(std::max(bin, 0.0))];
    ++count_;
    sum_ += ticks;
    max_ = std::max(max_, ticks);
  }
  Quantiles Get() const {
    Quantiles q;
    if (count_ == 0) return q;
    q.mean = sum_ / static_cast<double>(count_);
    q.median = At(0.5);
    q.p99 = At(0.99);
    q.max = max_;
    return q;
  }

 private:
  // The lower edge of the bin holding quantile `f` (exact for ages read
  // at ticks, whole numbers of ticks).
  double At(double f) const {
    const auto want = static_cast<std::uint64_t>(std::ceil(f * static_cast<double>(count_)));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bins_.size(); ++i) {
      seen += bins_[i];
      if (seen >= want && seen > 0) return static_cast<double>(i) / kAgeBinsPerTick;
    }
    return max_;
  }
  std::vector<std::uint64_t> bins_ = std::vector<std::uint64_t>(kAgeBins, 0);
  std::uint64_t count_ = 0;
  double sum_ = 0;
  double max_ = 0;
};

Quantiles Exact(std::vector<double>& values) {
  Quantiles q;
  if (values.empty()) return q;
  double sum = 0;
  for (double v : values) sum += v;
  q.mean = sum / static_cast<double>(values.size());
  auto at = [&](double f) {
    const auto k = static_cast<std::size_t>(
        std::min<double>(std::ceil(f * static_cast<double>(values.size())) - 1, values.size() - 1));
    std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(k), values.end());
    return values[k];
  };
  q.median = at(0.5);
  q.p99 = at(0.99);
  q.max = *std::max_element(values.begin(), values.end());
  return q;
}

// Dissemination puts from 4 buffers, one window a tick, and its puts read
// at landing (one copy, no completion of their own) complete in the next
// tick's Progress at the latest: it never runs out of buffers either way.
// Anti-tasks seal a buffer for each put, several in some ticks, and would
// find them busy more often if each were held until its ack: their puts
// are copied at issue.
transport::FakeNetwork::PutSource PutSourceFor(Strategy strategy) {
  return strategy == Strategy::kAntiTask ? transport::FakeNetwork::PutSource::kCopiedAtIssue
                                         : transport::FakeNetwork::PutSource::kReadAtLanding;
}

class Simulation {
 public:
  explicit Simulation(const Options& options)
      : options_(options),
        workload_({.nodes = options.nodes,
                   .capacity_cpus = options.capacity_cpus,
                   .load = options.load,
                   .duration = options.duration,
                   .seed = options.seed}),
        network_(
            transport::FakeNetwork::Options{.seed = Mix(options.seed ^ 0x6e6574),
                                            .now =
                                                [this] {
                                                  return transport::FakeNetwork::Clock::time_point(
                                                      std::chrono::nanoseconds(Ns(now_)));
                                                },
                                            .put_source = PutSourceFor(options.strategy)}),
        rng_(Mix(options.seed ^ 0x73696d)),
        tick_ns_(Ns(options.tick)) {}

  ~Simulation() {
    // Answers still on the wire land first: a network with nothing in
    // flight closes its fabrics in time linear in their number.
    for (int round = 0; round < 4 && network_.in_flight() > 0; ++round) {
      for (Node& n : nodes_) n.fabric->Progress();
    }
    // Keys and endpoints before their fabrics, fabrics before the network.
    for (Node& n : nodes_) {
      n.links.clear();
      n.gossip.reset();
      n.anti.reset();
      n.fabric.reset();
    }
  }

  Status Start() {
    nodes_.resize(options_.nodes);
    for (std::uint32_t i = 0; i < options_.nodes; ++i) {
      Node& n = nodes_[i];
      transport::Bytes board_key;
      n.sampler.emplace(
          i, 1,
          load::LoadSampler::Options{std::chrono::duration_cast<std::chrono::milliseconds>(
              options_.policy.load_half_life)});
      n.ledger.emplace(options_.policy.load_half_life);
      n.rng.seed(Mix(options_.seed * 0x100000001b3ULL + i));
      ROAM_ASSIGN_OR_RETURN(n.fabric, network_.AddNode({.name = fmt::format("n{}", i)}));
      const load::BoardShape shape{.window = options_.window, .slots = options_.slots};
      const std::uint64_t seed = Mix(options_.seed ^ (std::uint64_t{i} << 20));
      if (options_.strategy == Strategy::kAntiTask) {
        ROAM_ASSIGN_OR_RETURN(
            n.anti, gossip::AntiTasks::Create(*n.fabric, i,
                                              {.shape = shape,
                                               .thresholds = {},
                                               .view_capacity = options_.view_capacity,
                                               .max_info_age = options_.policy.max_info_age,
                                               .seed = seed}));
        ROAM_ASSIGN_OR_RETURN(board_key, n.anti->PackBoardKey());
      } else {
        ROAM_ASSIGN_OR_RETURN(n.gossip,
                              gossip::Disseminator::Create(*n.fabric, i,
                                                           {.shape = shape,
                                                            .fanout = options_.fanout,
                                                            .view_capacity = options_.view_capacity,
                                                            .seed = seed}));
        ROAM_ASSIGN_OR_RETURN(board_key, n.gossip->PackBoardKey());
      }
      ROAM_ASSIGN_OR_RETURN(const transport::Bytes address, n.fabric->Address());
      directory_.Add(address, board_key);
    }
    if (options_.strategy == Strategy::kCentral) {
      for (std::uint32_t i = 0; i < options_.nodes; ++i) by_load_.insert({0, i});
    }
    jobs_ = options_.jobs;
    std::stable_sort(jobs_.begin(), jobs_.end(),
                     [](const Arrival& a, const Arrival& b) { return a.time < b.time; });
    for (std::uint32_t b = 0; b < options_.burst; ++b) {
      Arrival a = workload_.Burst(0);
      Begin(a, /*placed=*/false);
    }
    has_next_ = workload_.Next(next_);
    return Ok();
  }

  Status Loop() {
    double next_tick = 0;
    while (has_next_ || job_at_ < jobs_.size() || live_ > 0) {
      if (options_.max_ticks != 0 && summary_.ticks >= options_.max_ticks) break;
      const double event = events_.empty() ? kNever : events_.top().time;
      const double arrival = NextArrivalTime();
      if (next_tick <= event && next_tick <= arrival) {
        now_ = next_tick;
        ROAM_TRY(Tick());
        next_tick = static_cast<double>(summary_.ticks) * options_.tick;
      } else if (event <= arrival) {
        const Event e = events_.top();
        events_.pop();
        now_ = e.time;
        if (e.kind == Event::Kind::kCompletion) {
          Complete(e);
        } else {
          Land(e.index);
        }
      } else {
        now_ = arrival;
        Arrival a;
        if (job_at_ < jobs_.size() && (!has_next_ || jobs_[job_at_].time <= next_.time)) {
          a = jobs_[job_at_++];
        } else {
          a = next_;
          has_next_ = workload_.Next(next_);
        }
        Begin(a, /*placed=*/true);
      }
    }
    return Ok();
  }

  Summary Finish() {
    summary_.strategy = options_.strategy;
    summary_.nodes = options_.nodes;
    summary_.load = options_.load;
    summary_.processes = slowdowns_.size();
    summary_.unfinished = live_;
    summary_.slowdown = Exact(slowdowns_);
    const double seconds = static_cast<double>(summary_.ticks) * options_.tick;
    const double node_seconds = seconds * options_.nodes;
    std::uint64_t puts = 0;
    for (const Node& n : nodes_) {
      if (n.anti) {
        const gossip::AntiTaskCounts c = n.anti->counts();
        puts += c.puts;
        summary_.put_failures += c.put_failures;
        summary_.pulls += c.pulled;
      } else {
        const gossip::DisseminationCounts c = n.gossip->counts();
        puts += c.puts;
        summary_.put_failures += c.put_failures;
      }
    }
    if (node_seconds > 0) {
      summary_.migrations_per_node_second = static_cast<double>(summary_.migrations) / node_seconds;
      summary_.puts_per_node_second = static_cast<double>(puts) / node_seconds;
    }
    summary_.info_age = ages_.Get();
    summary_.worst_in_view = worst_.Get();
    return std::move(summary_);
  }

 private:
  static constexpr double kNever = std::numeric_limits<double>::infinity();

  bool UsesViews() const {
    return options_.strategy != Strategy::kRandom && options_.strategy != Strategy::kCentral;
  }

  static const load::LoadView& ViewOf(const Node& n) {
    return n.anti ? n.anti->view() : n.gossip->view();
  }

  double NextArrivalTime() const {
    double t = has_next_ ? next_.time : kNever;
    if (job_at_ < jobs_.size()) t = std::min(t, jobs_[job_at_].time);
    return t;
  }

  double Rate(const Node& n) const {
    return n.running.empty()
               ? 0.0
               : std::min(1.0, options_.capacity_cpus / static_cast<double>(n.running.size()));
  }

  void Advance(Node& n) {
    if (!n.running.empty()) n.v += Rate(n) * (now_ - n.last);
    n.last = now_;
  }

  void Schedule(std::uint32_t node) {
    Node& n = nodes_[node];
    ++n.version;
    if (n.running.empty()) return;
    const double dt = std::max(0.0, (n.running.begin()->first - n.v) / Rate(n));
    events_.push({now_ + dt, seq_++, Event::Kind::kCompletion, node, n.version});
  }

  std::uint32_t ExactLoad(std::uint32_t node) const {
    return static_cast<std::uint32_t>(nodes_[node].running.size()) + nodes_[node].incoming;
  }

  // Central's view of a node's load changes: keep by_load_ in step.
  template <typename F>
  void Changing(std::uint32_t node, F change) {
    if (options_.strategy != Strategy::kCentral) {
      change();
      return;
    }
    by_load_.erase({ExactLoad(node), node});
    change();
    by_load_.insert({ExactLoad(node), node});
  }

  void Join(std::uint32_t id) {
    Process& p = procs_[id];
    Node& n = nodes_[p.node];
    Advance(n);
    p.join_v = n.v;
    p.tag = n.v + std::max(0.0, p.demand - p.attained);
    p.running = true;
    Changing(p.node, [&] { n.running.insert({p.tag, id}); });
    Schedule(p.node);
  }

  void Leave(std::uint32_t id) {
    Process& p = procs_[id];
    Node& n = nodes_[p.node];
    Advance(n);
    p.attained += n.v - p.join_v;
    p.running = false;
    Changing(p.node, [&] { n.running.erase({p.tag, id}); });
    Schedule(p.node);
  }

  // `id` leaves for `target`, where it lands after `cost` seconds, by a
  // move or started there.
  enum class Way : std::uint8_t { kMove, kRemoteStart };
  void Send(std::uint32_t id, std::uint32_t target, double cost, Way way) {
    Process& p = procs_[id];
    p.node = target;
    if (way == Way::kMove) p.arrived = now_ + cost;
    Changing(target, [&] { ++nodes_[target].incoming; });
    events_.push({now_ + cost, seq_++, Event::Kind::kLanding, id, 0});
  }

  void Land(std::uint32_t id) {
    const std::uint32_t target = procs_[id].node;
    Changing(target, [&] { --nodes_[target].incoming; });
    Join(id);
  }

  void Complete(const Event& e) {
    Node& n = nodes_[e.index];
    if (e.version != n.version) return;  // superseded by a later change
    Advance(n);
    // The first is due by this event; others due within rounding go too.
    const double tolerance = 1e-9 * std::max(1.0, std::abs(n.v));
    bool first = true;
    while (!n.running.empty() && (first || n.running.begin()->first <= n.v + tolerance)) {
      first = false;
      const std::uint32_t id = n.running.begin()->second;
      Changing(e.index, [&] { n.running.erase(n.running.begin()); });
      Done(id);
    }
    Schedule(e.index);
  }

  void Done(std::uint32_t id) {
    Process& p = procs_[id];
    slowdowns_.push_back((now_ - p.start) / p.demand);
    summary_.makespan = std::max(summary_.makespan, now_);
    if (options_.record_processes) {
      summary_.records.push_back({p.origin, p.node, p.start, now_, p.demand, p.resident, p.moves});
    }
    --live_;
    free_.push_back(id);
  }

  std::uint32_t NewProcess(const Arrival& a) {
    std::uint32_t id;
    if (free_.empty()) {
      id = static_cast<std::uint32_t>(procs_.size());
      procs_.emplace_back();
    } else {
      id = free_.back();
      free_.pop_back();
    }
    Process& p = procs_[id];
    p = Process{};
    p.origin = a.node;
    p.node = a.node;
    p.start = now_;
    p.demand = a.demand;
    p.resident = a.resident_bytes;
    ++live_;
    return id;
  }

  // A new process at its node: where it runs is the strategy's (a burst's
  // stays where it is started).
  void Begin(const Arrival& a, bool placed) {
    const std::uint32_t id = NewProcess(a);
    const std::uint32_t origin = a.node;
    std::uint32_t target = origin;
    if (placed) target = Place(origin);
    if (target == origin) {
      Join(id);
    } else {
      ++summary_.remote_placements;
      Send(id, target, kMoveFixedSeconds, Way::kRemoteStart);
    }
  }

  std::uint32_t Place(std::uint32_t origin) {
    switch (options_.strategy) {
      case Strategy::kRandom:
        return std::uniform_int_distribution<std::uint32_t>(0, options_.nodes - 1)(rng_);
      case Strategy::kCentral: {
        const auto best = by_load_.begin();
        return best->first < ExactLoad(origin) ? best->second : origin;
      }
      case Strategy::kExec:
      case Strategy::kMosix:
      case Strategy::kAntiTask:
        return PlaceByPolicy(origin);
    }
    return origin;
  }

  std::uint32_t PlaceByPolicy(std::uint32_t origin) {
    Node& n = nodes_[origin];
    if (!n.own) return origin;  // before the first sample
    const std::uint64_t now_ns = Ns(now_);
    // What peers put since the node's last tick (at the end of that tick,
    // here) counts with its age now.
    if (n.gossip) n.gossip->Refresh();
    const auto peers = ViewOf(n).peers();
    NoteAges(peers, now_ns);
    const policy::PlacementChoice choice =
        policy::ChoosePlacement(*n.own, peers, *n.ledger, now_ns, options_.policy, n.rng);
    std::uint32_t target = origin;
    if (choice.node != origin) {
      Node& t = nodes_[choice.node];
      if (t.own && policy::Admit(*t.own, *t.ledger, choice.here_load_per_cpu)) {
        target = choice.node;
        t.ledger->Record(target, now_ns, 1000);
      } else {
        ++summary_.refused;
      }
    }
    n.ledger->Record(target, now_ns, 1000);
    return target;
  }

  void NoteAges(std::span<const load::LoadVector> peers, std::uint64_t now_ns) {
    if (peers.empty()) return;
    double worst = 0;
    for (const load::LoadVector& v : peers) {
      const double age =
          now_ns > v.sampled_ns() ? static_cast<double>(now_ns - v.sampled_ns()) / tick_ns_ : 0.0;
      ages_.Add(age);
      worst = std::max(worst, age);
    }
    worst_.Add(worst);
  }

  // Three passes over the nodes, each touching a node once: at 100,000
  // nodes a pass over their state misses the caches throughout, so the
  // work that can share a pass does. Every node samples (and drops what
  // its ledger no longer needs) before any decides, so that a target's
  // admission reads its vector of this tick; then each node gossips and
  // decides (its view changes only in its own gossip tick, which scans its
  // board); then the puts land.
  Status Tick() {
    ++summary_.ticks;
    // random and central read no node's view: nothing to sample or spread.
    if (!UsesViews()) return Ok();
    const std::uint64_t now_ns = Ns(now_);
    const std::uint64_t oldest =
        now_ns - std::min<std::uint64_t>(now_ns, options_.policy.max_info_age.count());
    for (std::uint32_t i = 0; i < options_.nodes; ++i) {
      Node& n = nodes_[i];
      load::NodeReadings r;
      r.runnable = static_cast<double>(n.running.size());
      r.capacity_cpus = options_.capacity_cpus;
      r.processes = static_cast<std::uint16_t>(std::min<std::size_t>(n.running.size(), 65535));
      r.flags = load::kAccepting;
      n.own = n.sampler->Sample(r, now_ns);
      if (n.ledger->size() != 0) n.ledger->Expire(oldest);
    }
    for (std::uint32_t i = 0; i < options_.nodes; ++i) {
      Node& n = nodes_[i];
      if (n.anti) {
        NodeLinks links(*this, i);
        ROAM_TRY(n.anti->Tick(*n.own, links));
        ROAM_TRY(links.status());
        if (!n.anti->origins().empty()) Rebalance(i, now_ns, n.anti->origins());
        continue;
      }
      ROAM_TRY(ChooseLinks(i, peers_));
      ROAM_TRY(n.gossip->Tick(*n.own, peers_));
      if (options_.strategy == Strategy::kMosix) Rebalance(i, now_ns, ViewOf(n).peers());
    }
    for (Node& n : nodes_) n.fabric->Progress();
    return Ok();
  }

  // A link from node `i` to `peer` for this tick: kept in a small cache
  // of the node's, connected now if it is not there. A pool of 100,000
  // nodes cannot hold an endpoint from every node to every other. A link
  // handed out in this tick or the one before is not dropped, since its
  // puts may not have completed: a put completes with its ack (the fake
  // transport reads it where it lands), which reaches a node that
  // progressed before its target only in the next tick's Progress. While
  // every cached link is that recent, the cache grows.
  Result<Link*> LinkTo(std::uint32_t i, std::uint32_t peer) {
    Node& n = nodes_[i];
    const std::uint64_t tick = summary_.ticks;
    auto it = std::find_if(n.links.begin(), n.links.end(),
                           [&](const Link& l) { return l.peer.node == peer; });
    if (it == n.links.end()) {
      Link link;
      ROAM_ASSIGN_OR_RETURN(link.endpoint, n.fabric->Connect(directory_.address(peer)));
      ROAM_ASSIGN_OR_RETURN(link.board, link.endpoint->UnpackKey(directory_.board_key(peer)));
      link.peer = {peer, link.endpoint.get(), link.board.get()};
      const std::size_t cache = 3 * std::size_t{options_.fanout};
      std::size_t victim = n.links.size();
      for (std::size_t k = 0; k < n.links.size() && n.links.size() >= cache; ++k) {
        const std::size_t at = n.next_evict++ % n.links.size();
        if (n.links[at].used + 1 < tick) {
          victim = at;
          break;
        }
      }
      // An old link's puts have completed (in the Progress of the tick
      // after theirs at the latest): nothing is dropped with it.
      if (victim == n.links.size()) {
        n.links.push_back(std::move(link));
      } else {
        n.links[victim] = std::move(link);
      }
      it = n.links.begin() + static_cast<std::ptrdiff_t>(victim);
    }
    it->used = tick;
    return &*it;
  }

  // The node's gossip peers this tick: `fanout` distinct others drawn at
  // random (the disseminator's own draw then takes them all). The next
  // node's are drawn now too, and their directory records asked for while
  // this node connects and gossips (at 100,000 nodes each is a miss):
  // rng_ serves only these draws, made in node order either way, so the
  // stream is the same.
  Status ChooseLinks(std::uint32_t i, std::vector<gossip::BoardPeer>& out) {
    out.clear();
    Node& n = nodes_[i];
    const std::uint64_t tick = summary_.ticks;
    if (!drawn_ || drawn_for_ != i || drawn_tick_ != tick) DrawPeers(i, next_chosen_);
    std::swap(chosen_, next_chosen_);
    const std::vector<std::uint32_t>& chosen = chosen_;
    drawn_ = false;
    if (i + 1 < options_.nodes) {
      DrawPeers(i + 1, next_chosen_);
      drawn_ = true;
      drawn_for_ = i + 1;
      drawn_tick_ = tick;
      for (std::uint32_t peer : next_chosen_) directory_.Prefetch(peer);
    }
    // The chosen that are cached stay for this tick.
    for (Link& l : n.links) {
      if (std::find(chosen.begin(), chosen.end(), l.peer.node) != chosen.end()) {
        l.used = summary_.ticks;
      }
    }
    for (std::uint32_t peer : chosen) {
      ROAM_ASSIGN_OR_RETURN(Link * link, LinkTo(i, peer));
      out.push_back(link->peer);
    }
    return Ok();
  }

  void DrawPeers(std::uint32_t i, std::vector<std::uint32_t>& chosen) {
    const std::uint32_t others = options_.nodes - 1;
    const std::uint32_t want = std::min(options_.fanout, others);
    chosen.clear();
    while (chosen.size() < want) {
      auto peer = std::uniform_int_distribution<std::uint32_t>(0, others - 1)(rng_);
      if (peer >= i) ++peer;
      if (std::find(chosen.begin(), chosen.end(), peer) == chosen.end()) chosen.push_back(peer);
    }
  }

  // Every other node, for node `i`'s anti-tasks: connected as they go.
  class NodeLinks final : public gossip::AntiTaskPeers {
   public:
    NodeLinks(Simulation& sim, std::uint32_t self) : sim_(sim), self_(self) {}
    std::size_t size() const override { return sim_.options_.nodes; }
    const gossip::BoardPeer* At(std::size_t index) override {
      return Find(static_cast<std::uint32_t>(index));
    }
    const gossip::BoardPeer* Find(std::uint32_t node) override {
      if (node == self_ || node >= sim_.options_.nodes || !status_) return nullptr;
      Result<Link*> link = sim_.LinkTo(self_, node);
      if (!link) {
        status_ = std::move(link).error();
        return nullptr;
      }
      return &(*link)->peer;
    }
    // A connect that failed: the simulation stops with it.
    Status status() const { return status_; }

   private:
    Simulation& sim_;
    std::uint32_t self_;
    Status status_ = Ok();
  };

  // Preemptive moves from node `i` to the nodes of `peers` (its view, or
  // under anti-tasks the origins of those it kept).
  void Rebalance(std::uint32_t i, std::uint64_t now_ns, std::span<const load::LoadVector> peers) {
    Node& n = nodes_[i];
    if (n.running.empty()) return;
    Advance(n);
    candidates_.clear();
    for (const auto& [tag, id] : n.running) {
      const Process& p = procs_[id];
      candidates_.push_back({.id = id,
                             .home = p.origin,
                             .cpu_age = std::chrono::nanoseconds(Ns(p.attained + n.v - p.join_v)),
                             .resident_bytes = p.resident,
                             .arrived_ns = Ns(p.arrived),
                             .movable = true});
    }
    NoteAges(peers, now_ns);
    const std::vector<policy::Move> moves =
        policy::ChooseMoves(*n.own, peers, candidates_, *n.ledger, now_ns, options_.policy, n.rng);
    for (const policy::Move& m : moves) {
      Node& t = nodes_[m.target];
      if (!t.own || !policy::Admit(*t.own, *t.ledger, m.source_load_per_cpu)) {
        ++summary_.refused;
        continue;
      }
      t.ledger->Record(m.target, now_ns, 1000);
      n.ledger->Record(i, now_ns, -1000);
      n.ledger->Record(m.target, now_ns, 1000);
      const auto id = static_cast<std::uint32_t>(m.id);
      Leave(id);
      ++procs_[id].moves;
      ++summary_.migrations;
      Send(id, m.target,
           kMoveFixedSeconds + static_cast<double>(procs_[id].resident) / kMoveBytesPerSecond,
           Way::kMove);
    }
  }

  const Options& options_;
  Workload workload_;
  transport::FakeNetwork network_;
  std::mt19937_64 rng_;  // random placement and gossip peers
  std::uint64_t tick_ns_;
  double now_ = 0;

  std::vector<Node> nodes_;
  Directory directory_;
  std::vector<Process> procs_;
  std::vector<std::uint32_t> free_;
  std::uint64_t live_ = 0;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events_;
  std::uint64_t seq_ = 0;
  std::set<std::pair<std::uint32_t, std::uint32_t>> by_load_;  // central: (load, node)

  Arrival next_;
  bool has_next_ = false;
  std::vector<Arrival> jobs_;
  std::size_t job_at_ = 0;

  std::vector<policy::Candidate> candidates_;
  std::vector<gossip::BoardPeer> peers_;
  std::vector<std::uint32_t> chosen_;
  std::vector<std::uint32_t> next_chosen_;  // drawn for node drawn_for_ in drawn_tick_
  bool drawn_ = false;
  std::uint32_t drawn_for_ = 0;
  std::uint64_t drawn_tick_ = 0;
  std::vector<double> slowdowns_;
  Histogram ages_;
  Histogram worst_;
  Summary summary_;
};

}  // namespace

std::string_view StrategyName(Strategy s) {
  switch (s) {
    case Strategy::kRandom:
      return "random";
    case Strategy::kExec:
      return "exec";
    case Strategy::kMosix:
      return "mosix";
    case Strategy::kCentral:
      return "central";
    case Strategy::kAntiTask:
      return "antitask";
  }
  return "?";
}

Result<Strategy> ParseStrategy(std::string_view name) {
  for (Strategy s : {Strategy::kRandom, Strategy::kExec, Strategy::kMosix, Strategy::kAntiTask,
                     Strategy::kCentral}) {
    if (StrategyName(s) == name) return s;
  }
  return MakeError(Errc::kInvalidArgument,
                   "unknown strategy '{}' (random, exec, mosix, antitask or central)", name);
}

Result<Summary> Run(const Options& options) {
  if (options.nodes == 0 || options.nodes > 1'000'000) {
    return MakeError(Errc::kInvalidArgument, "sim: {} nodes (1 to 1,000,000)", options.nodes);
  }
  if (!(options.capacity_cpus > 0) || !(options.tick > 0) || !(options.load >= 0) ||
      !(options.duration >= 0)) {
    return MakeError(Errc::kInvalidArgument,
                     "sim: capacity and tick must be positive, load and duration not negative");
  }
  for (const Arrival& a : options.jobs) {
    if (a.node >= options.nodes || !(a.demand > 0) || !(a.time >= 0)) {
      return MakeError(Errc::kInvalidArgument, "sim: a job at node {} of {} s at {} s", a.node,
                       a.demand, a.time);
    }
  }
  ROAM_TRY(policy::Validate(options.policy));
  const auto started = std::chrono::steady_clock::now();
  auto sim = std::make_unique<Simulation>(options);
  ROAM_TRY(sim->Start());
  const auto looping = std::chrono::steady_clock::now();
  const double cpu_before = ProcessCpuSeconds();
  ROAM_TRY(sim->Loop());
  const double cpu_after = ProcessCpuSeconds();
  const auto looped = std::chrono::steady_clock::now();
  Summary summary = sim->Finish();
  summary.loop_wall = looped - looping;
  summary.loop_cpu = std::chrono::duration<double>(cpu_after - cpu_before);
  sim.reset();
  summary.wall = std::chrono::steady_clock::now() - started;
  return summary;
}

}  // namespace roam::sim
