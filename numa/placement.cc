#include "roam/numa/placement.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>

#include "roam/base/check.h"

namespace roam::numa {
namespace {

int FreeCores(const NumaNodeCores& node, const CoreLedger& ledger) {
  return static_cast<int>(std::count_if(node.cores.begin(), node.cores.end(),
                                        [&](const CpuSet& c) { return ledger.CoreUsers(c) == 0; }));
}

// The node's cores, least used first, ties by logical order: indices into
// node.cores.
std::vector<int> CoresByLoad(const NumaNodeCores& node, const CoreLedger& ledger) {
  std::vector<int> order(node.cores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return ledger.CoreUsers(node.cores[a]) < ledger.CoreUsers(node.cores[b]);
  });
  return order;
}

}  // namespace

std::string Placement::ToString() const {
  return fmt::format("node {} cpus {}", numa_node, cpus.ToString());
}

void CoreLedger::Take(const Placement& placement) {
  for (int pu : placement.cpus.cpus()) {
    if (static_cast<std::size_t>(pu) >= users_.size()) users_.resize(pu + 1, 0);
    ++users_[pu];
  }
}

void CoreLedger::Release(const Placement& placement) {
  for (int pu : placement.cpus.cpus()) {
    ROAM_CHECK(users(pu) > 0, "release of {}: PU {} holds no process", placement.ToString(), pu);
  }
  for (int pu : placement.cpus.cpus()) --users_[pu];
  // Trailing zeros trimmed, so that equal counts compare equal.
  while (!users_.empty() && users_.back() == 0) users_.pop_back();
}

int CoreLedger::users(int pu) const {
  return pu >= 0 && static_cast<std::size_t>(pu) < users_.size() ? users_[pu] : 0;
}

int CoreLedger::CoreUsers(const CpuSet& core) const {
  int most = 0;
  for (int pu : core.cpus()) most = std::max(most, users(pu));
  return most;
}

int CoreLedger::total() const { return std::accumulate(users_.begin(), users_.end(), 0); }

Result<Placement> ChoosePlacement(const Topology& topology, const CoreLedger& ledger, int cores) {
  if (cores < 1) {
    return MakeError(Errc::kInvalidArgument, "a process needs at least 1 core, not {}", cores);
  }
  const std::vector<NumaNodeCores> nodes = topology.CoresByNumaNode();
  int best = -1;
  int best_free = -1;
  std::int64_t best_shared = std::numeric_limits<std::int64_t>::max();
  std::vector<int> best_cores;
  int largest = 0;
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const NumaNodeCores& node = nodes[i];
    largest = std::max(largest, static_cast<int>(node.cores.size()));
    if (static_cast<int>(node.cores.size()) < cores) continue;
    const int free = FreeCores(node, ledger);
    std::vector<int> order = CoresByLoad(node, ledger);
    order.resize(cores);
    std::int64_t shared = 0;
    for (int c : order) shared += ledger.CoreUsers(node.cores[c]);
    // Strictly better only, so ties keep the lowest index.
    if (free > best_free || (free == best_free && shared < best_shared)) {
      best = static_cast<int>(i);
      best_free = free;
      best_shared = shared;
      best_cores = std::move(order);
    }
  }
  if (best < 0) {
    return MakeError(Errc::kResourceExhausted,
                     "a process needs {} cores on one NUMA node; the largest here has {} ({})",
                     cores, largest, topology.Summary());
  }
  Placement placement{.numa_node = nodes[best].os_index, .cpus = {}};
  for (int c : best_cores) placement.cpus = placement.cpus.Union(nodes[best].cores[c]);
  return placement;
}

std::array<std::uint8_t, 8> FreeCoresPerNumaNode(const Topology& topology,
                                                 const CoreLedger& ledger) {
  std::array<std::uint8_t, 8> free{};
  const std::vector<NumaNodeCores> nodes = topology.CoresByNumaNode();
  for (std::size_t i = 0; i < nodes.size() && i < free.size(); ++i) {
    free[i] = static_cast<std::uint8_t>(std::min(FreeCores(nodes[i], ledger), 255));
  }
  return free;
}

}  // namespace roam::numa
