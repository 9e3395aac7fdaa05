// A node's load as the pool shares it: a fixed-size, versioned record
// (load.fbs, FlatBuffers struct, 64 bytes) that nodes write into each
// other's load boards and read in place.
//
// Thread-safety: a value type.
#pragma once

#include <cstdint>

#include "core/load/load_generated.h"

namespace roam::load {

using LoadVector = fb::LoadVector;
static_assert(sizeof(LoadVector) == 64, "a load vector is 64 bytes on the wire");

// LoadVector::flags.
enum LoadFlag : std::uint8_t {
  kAccepting = 1 << 0,    // takes guests (not draining, its owner idle)
  kDraining = 1 << 1,     // `roam drain`: sends its guests away
  kOwnerActive = 1 << 2,  // owner mode: its owner works there now
};

// Runnable tasks per CPU offered (1.0: every CPU busy); a node that offers
// no CPU counts as infinitely loaded.
double LoadPerCpu(const LoadVector& v);

// Whether `a` is newer information about the same node than `b`: a later
// epoch (the daemon restarted), or a later sample within one.
inline bool Newer(const LoadVector& a, const LoadVector& b) {
  return a.epoch() != b.epoch() ? a.epoch() > b.epoch() : a.sequence() > b.sequence();
}

}  // namespace roam::load
