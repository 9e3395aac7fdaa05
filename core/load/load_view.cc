#include "roam/load/load_view.h"

#include <algorithm>

namespace roam::load {

LoadView::LoadView(std::uint32_t self, std::size_t capacity)
    : self_(self), capacity_(std::max<std::size_t>(capacity, 1)) {
  entries_.reserve(capacity_);
}

bool LoadView::Merge(const LoadVector& v) {
  if (v.node() == self_) return false;
  for (LoadVector& known : entries_) {
    if (known.node() != v.node()) continue;
    if (!Newer(v, known)) return false;
    known = v;
    return true;
  }
  if (entries_.size() < capacity_) {
    entries_.push_back(v);
    return true;
  }
  auto oldest = std::min_element(
      entries_.begin(), entries_.end(),
      [](const LoadVector& a, const LoadVector& b) { return a.sampled_ns() < b.sampled_ns(); });
  if (oldest->sampled_ns() >= v.sampled_ns()) return false;
  *oldest = v;
  return true;
}

void LoadView::Forget(std::uint32_t node) {
  std::erase_if(entries_, [node](const LoadVector& v) { return v.node() == node; });
}

std::optional<LoadVector> LoadView::Find(std::uint32_t node) const {
  if (node == self_) return own_;
  for (const LoadVector& v : entries_) {
    if (v.node() == node) return v;
  }
  return std::nullopt;
}

std::vector<LoadVector> LoadView::Window(std::size_t window) const {
  std::vector<LoadVector> out;
  if (window == 0) return out;
  if (own_) out.push_back(*own_);
  const std::size_t others = std::min(window - out.size(), entries_.size());
  const std::size_t at = out.size();
  out.resize(at + others);
  std::partial_sort_copy(
      entries_.begin(), entries_.end(), out.begin() + at, out.end(),
      [](const LoadVector& a, const LoadVector& b) { return a.sampled_ns() > b.sampled_ns(); });
  return out;
}

}  // namespace roam::load
