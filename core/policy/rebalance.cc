#include "roam/policy/rebalance.h"

#include <optional>

#include "targets.h"

namespace roam::policy {

std::chrono::nanoseconds MigrationCost(std::uint64_t resident_bytes, const PolicyConfig& config) {
  const double seconds = static_cast<double>(resident_bytes) / config.migration_bytes_per_second;
  return config.migration_fixed_cost + std::chrono::duration_cast<std::chrono::nanoseconds>(
                                           std::chrono::duration<double>(seconds));
}

std::vector<Move> ChooseMoves(const load::LoadVector& own, std::span<const load::LoadVector> peers,
                              std::span<const Candidate> candidates, const LoadLedger& ledger,
                              std::uint64_t now_ns, const PolicyConfig& config,
                              std::mt19937_64& rng) {
  std::vector<Move> moves;
  if (own.capacity_milli() == 0) return moves;
  LoadLedger scratch = ledger;  // counts the moves of this round as they are chosen
  std::vector<bool> chosen(candidates.size(), false);
  const auto min_residence = static_cast<std::uint64_t>(config.min_residence.count());
  while (moves.size() < config.max_moves_per_round) {
    const double source = scratch.AdjustedPerCpu(own);
    if (source <= 1.0) break;  // every runnable task has a CPU: nothing to gain
    const std::optional<internal::Target> target = internal::DrawTarget(
        own.node(), peers, scratch, source - config.hysteresis, now_ns, config, rng);
    if (!target) break;
    const load::LoadVector* target_vector = nullptr;
    for (const load::LoadVector& v : peers) {
      if (v.node() == target->node) target_vector = &v;
    }
    // Harchol-Balter and Downey: worth moving once its age exceeds the cost
    // over the load difference.
    const double gap = source - scratch.AdjustedPerCpu(*target_vector);
    std::optional<std::size_t> best;
    double best_score = 0;
    std::chrono::nanoseconds best_cost{0};
    for (std::size_t i = 0; i < candidates.size(); ++i) {
      const Candidate& c = candidates[i];
      if (chosen[i] || !c.movable) continue;
      if (now_ns < c.arrived_ns || now_ns - c.arrived_ns < min_residence) continue;
      const std::chrono::nanoseconds cost = MigrationCost(c.resident_bytes, config);
      const double age = static_cast<double>(c.cpu_age.count());
      const double cost_ns = static_cast<double>(cost.count());
      if (age < config.age_factor * cost_ns / gap) continue;
      const double score = cost_ns > 0 ? age / cost_ns : age;
      if (!best || score > best_score) {
        best = i;
        best_score = score;
        best_cost = cost;
      }
    }
    if (!best) break;
    chosen[*best] = true;
    moves.push_back({candidates[*best].id, target->node, source, target->load_per_cpu, best_cost});
    scratch.Record(own.node(), now_ns, -1000);
    scratch.Record(target->node, now_ns, 1000);
  }
  return moves;
}

}  // namespace roam::policy
