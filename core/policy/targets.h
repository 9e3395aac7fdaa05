// What placement, rebalancing and eviction share: which peers may be
// chosen, and drawing one of the lightest at random.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>

#include "roam/load/load_vector.h"
#include "roam/policy/config.h"
#include "roam/policy/load_ledger.h"

namespace roam::policy::internal {

// Sampled within max_info_age of now (a vector stamped ahead of `now_ns`,
// a peer's clock slightly ahead, counts as fresh).
bool Fresh(const load::LoadVector& v, std::uint64_t now_ns, const PolicyConfig& config);

inline bool Accepting(const load::LoadVector& v) { return (v.flags() & load::kAccepting) != 0; }

// The node's load per CPU with one more process, by the ledger.
double WithOne(const load::LoadVector& v, const LoadLedger& ledger);

struct Target {
  std::uint32_t node = 0;
  double load_per_cpu = 0;  // with the process
};

// A fresh, accepting peer other than `self`, whose load per CPU with one
// more process is at most `at_most`, drawn at random among those within
// `choice_spread` of the lightest; none if no peer qualifies.
std::optional<Target> DrawTarget(std::uint32_t self, std::span<const load::LoadVector> peers,
                                 const LoadLedger& ledger, double at_most, std::uint64_t now_ns,
                                 const PolicyConfig& config, std::mt19937_64& rng);

}  // namespace roam::policy::internal
