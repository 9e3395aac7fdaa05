// Load vectors for policy tests: a node with a load and CPUs, sampled at a
// given time.
#pragma once

#include <cstdint>

#include "roam/load/load_vector.h"

namespace roam::policy::testing {

inline constexpr std::uint64_t kSecond = 1'000'000'000;

inline load::LoadVector Vector(std::uint32_t node, double load, double cpus,
                               std::uint64_t sampled_ns, std::uint8_t flags = load::kAccepting) {
  return load::LoadVector(node, /*epoch=*/1, /*sequence=*/1, sampled_ns,
                          static_cast<std::uint32_t>(load * 1000),
                          static_cast<std::uint32_t>(cpus * 1000), /*free_memory_mib=*/1024,
                          /*guests=*/0, /*processes=*/0, flags);
}

}  // namespace roam::policy::testing
