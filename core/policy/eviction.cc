#include "roam/policy/eviction.h"

#include <limits>
#include <optional>

#include "targets.h"

namespace roam::policy {

EvictionPlan ChooseEvictions(const load::LoadVector& own, std::span<const load::LoadVector> peers,
                             std::span<const Candidate> processes, const LoadLedger& ledger,
                             std::uint64_t now_ns, const PolicyConfig& config,
                             std::mt19937_64& rng) {
  EvictionPlan plan;
  LoadLedger scratch = ledger;  // spreads the guests as they are placed
  const double source = ledger.AdjustedPerCpu(own);
  for (const Candidate& c : processes) {
    if (c.home == own.node()) continue;  // the node's own processes stay
    if (!c.movable) {
      plan.unmovable.push_back(c.id);
      continue;
    }
    const std::optional<internal::Target> peer = internal::DrawTarget(
        own.node(), peers, scratch, std::numeric_limits<double>::infinity(), now_ns, config, rng);
    // No peer takes guests: home takes its own back, whatever its load
    // (infinite when this node knows nothing of it).
    Move move{c.id, c.home, source, std::numeric_limits<double>::infinity(),
              MigrationCost(c.resident_bytes, config)};
    if (peer) {
      move.target = peer->node;
      move.target_load_per_cpu = peer->load_per_cpu;
    } else {
      for (const load::LoadVector& v : peers) {
        if (v.node() == c.home) move.target_load_per_cpu = internal::WithOne(v, scratch);
      }
    }
    plan.moves.push_back(move);
    scratch.Record(move.target, now_ns, 1000);
  }
  return plan;
}

bool OwnerActive(std::chrono::nanoseconds since_last_input, const PolicyConfig& config) {
  return since_last_input < config.owner_idle_after;
}

std::uint8_t NodeFlags(bool draining, bool owner_mode, bool owner_active) {
  std::uint8_t flags = 0;
  if (draining) flags |= load::kDraining;
  if (owner_mode && owner_active) flags |= load::kOwnerActive;
  if (flags == 0) flags |= load::kAccepting;
  return flags;
}

}  // namespace roam::policy
