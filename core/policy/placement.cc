#include "roam/policy/placement.h"

#include <algorithm>
#include <limits>

#include "targets.h"

namespace roam::policy {

using internal::Accepting;
using internal::Fresh;
using internal::WithOne;

PlacementChoice ChoosePlacement(const load::LoadVector& own,
                                std::span<const load::LoadVector> peers, const LoadLedger& ledger,
                                std::uint64_t now_ns, const PolicyConfig& config,
                                std::mt19937_64& rng) {
  const PlacementChoice here{own.node(), WithOne(own, ledger), WithOne(own, ledger)};
  const std::optional<internal::Target> peer = internal::DrawTarget(
      own.node(), peers, ledger, std::numeric_limits<double>::infinity(), now_ns, config, rng);
  if (!peer) return here;
  // A node that takes no guests does not keep new processes either while a
  // peer can take them.
  if (!Accepting(own) || peer->load_per_cpu + config.placement_margin <= here.load_per_cpu) {
    return {peer->node, peer->load_per_cpu, here.here_load_per_cpu};
  }
  return here;
}

bool Admit(const load::LoadVector& own, const LoadLedger& ledger, double asker_load_per_cpu) {
  return Accepting(own) && WithOne(own, ledger) < asker_load_per_cpu;
}

std::vector<IdleNode> IdleNodes(const load::LoadVector& own,
                                std::span<const load::LoadVector> peers, const LoadLedger& ledger,
                                std::uint64_t now_ns, const PolicyConfig& config) {
  std::vector<IdleNode> idle;
  auto consider = [&](const load::LoadVector& v) {
    if (!Accepting(v) || v.capacity_milli() == 0 || !Fresh(v, now_ns, config)) return;
    const double load = ledger.Adjusted(v);
    const double free_cpus = (v.capacity_milli() - load) / 1000.0;
    if (free_cpus < 1.0) return;
    idle.push_back({v.node(), free_cpus, load / v.capacity_milli(), v.sampled_ns()});
  };
  consider(own);
  for (const load::LoadVector& v : peers) {
    if (v.node() != own.node()) consider(v);
  }
  std::sort(idle.begin(), idle.end(), [](const IdleNode& a, const IdleNode& b) {
    return a.free_cpus != b.free_cpus ? a.free_cpus > b.free_cpus : a.node < b.node;
  });
  return idle;
}

}  // namespace roam::policy
