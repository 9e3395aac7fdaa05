// A map from disjoint half-open ranges of addresses to values: what a
// pre-copy knows of each page it read (kept by the sink, or all zero), where
// its rounds put each page in a target's staging. Assigning over a range
// replaces what was there; neighbours that continue each other merge, so a
// round that reads a gibibyte in order holds a handful of entries.
//
// `Shift(value, bytes)` is the value `bytes` further into a range: an
// offset grows with the address (a staging offset), a label does not. Two
// adjacent ranges merge when the second's value is the first's shifted by
// its length.
//
// Thread-safety: none; one owner.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <utility>

#include "roam/base/error.h"

namespace roam {

// Shift for values that label a range (the same everywhere in it).
struct SameValue {
  template <typename T>
  T operator()(const T& value, std::uint64_t /*bytes*/) const {
    return value;
  }
};

// Shift for values that are an offset of the range's start.
struct OffsetValue {
  std::uint64_t operator()(std::uint64_t value, std::uint64_t bytes) const { return value + bytes; }
};

template <typename T, typename Shift = SameValue>
class RangeMap final {
 public:
  // [lo, hi) maps to `value` (at lo) from now on. An empty range is ignored.
  void Assign(std::uint64_t lo, std::uint64_t hi, const T& value) {
    if (hi <= lo) return;
    Erase(lo, hi);
    auto next = map_.lower_bound(lo);
    // Merge with the range ending at lo, then with the one starting at hi.
    if (next != map_.begin()) {
      auto prev = std::prev(next);
      if (prev->second.end == lo && Shift{}(prev->second.value, lo - prev->first) == value) {
        prev->second.end = hi;
        MergeNext(prev);
        return;
      }
    }
    MergeNext(map_.emplace_hint(next, lo, Entry{hi, value}));
  }

  // [lo, hi) maps to nothing from now on; ranges across its ends are cut.
  void Erase(std::uint64_t lo, std::uint64_t hi) {
    if (hi <= lo) return;
    auto it = map_.lower_bound(lo);
    if (it != map_.begin()) {
      auto prev = std::prev(it);
      if (prev->second.end > lo) {
        const std::uint64_t end = prev->second.end;
        prev->second.end = lo;
        if (end > hi) {
          map_.emplace_hint(it, hi, Entry{end, Shift{}(prev->second.value, hi - prev->first)});
          return;
        }
      }
    }
    while (it != map_.end() && it->first < hi) {
      if (it->second.end > hi) {
        const Entry rest{it->second.end, Shift{}(it->second.value, hi - it->first)};
        map_.erase(it);
        map_.emplace(hi, rest);
        return;
      }
      it = map_.erase(it);
    }
  }

  // Calls fn(lo, hi, value) for each piece of [lo, hi) in address order:
  // `value` points at the piece's value (at its lo), or is null where
  // nothing is mapped. Stops at fn's first error and returns it.
  template <typename Fn>
  Status Visit(std::uint64_t lo, std::uint64_t hi, Fn&& fn) const {
    std::uint64_t at = lo;
    auto it = map_.upper_bound(lo);
    if (it != map_.begin() && std::prev(it)->second.end > lo) --it;
    for (; at < hi; ++it) {
      if (it == map_.end() || it->first >= hi) return fn(at, hi, static_cast<const T*>(nullptr));
      if (it->first > at) {
        ROAM_TRY(fn(at, it->first, static_cast<const T*>(nullptr)));
        at = it->first;
      }
      const std::uint64_t end = std::min(it->second.end, hi);
      const T value = Shift{}(it->second.value, at - it->first);
      ROAM_TRY(fn(at, end, &value));
      at = end;
    }
    return Ok();
  }

  std::size_t ranges() const { return map_.size(); }
  bool empty() const { return map_.empty(); }

 private:
  struct Entry {
    std::uint64_t end;
    T value;
  };
  using Map = std::map<std::uint64_t, Entry>;

  void MergeNext(typename Map::iterator it) {
    auto next = std::next(it);
    if (next != map_.end() && next->first == it->second.end &&
        Shift{}(it->second.value, it->second.end - it->first) == next->second.value) {
      it->second.end = next->second.end;
      map_.erase(next);
    }
  }

  Map map_;
};

}  // namespace roam
