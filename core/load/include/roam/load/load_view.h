// What one node knows of the others' load: the freshest vector it has seen
// of each of at most `capacity` nodes (MOSIX keeps a small window, not the
// whole pool: at 100,000 nodes a node knows a few dozen, and new
// information replaces the oldest). Fed by board scans and by the node's
// own samples; read by the policy and by the window the node writes out.
//
// Thread-safety: used by one thread at a time. A value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "roam/load/load_vector.h"

namespace roam::load {

class LoadView {
 public:
  // `self`: this node's id; its own vector is kept apart and never evicted.
  LoadView(std::uint32_t self, std::size_t capacity);

  // Keeps `v` if it is newer than what is known of its node; a node not
  // known yet takes the place of the entry sampled longest ago once the
  // view is full (unless `v` is older still). Vectors of this node itself,
  // as others pass them on, are ignored. True if kept.
  bool Merge(const LoadVector& v);
  void SetOwn(const LoadVector& v) { own_ = v; }
  const std::optional<LoadVector>& own() const { return own_; }

  // Forgets a node (it left the pool, or was found gone).
  void Forget(std::uint32_t node);

  // The newest vector known of `node`, if any (its own included).
  std::optional<LoadVector> Find(std::uint32_t node) const;
  // Every peer known, in no particular order (not its own).
  std::span<const LoadVector> peers() const { return entries_; }

  // The window to write out: its own vector first, then up to `window - 1`
  // others, freshest sampled first.
  std::vector<LoadVector> Window(std::size_t window) const;

  std::size_t capacity() const { return capacity_; }

 private:
  std::uint32_t self_;
  std::size_t capacity_;
  std::optional<LoadVector> own_;
  std::vector<LoadVector> entries_;
};

}  // namespace roam::load
