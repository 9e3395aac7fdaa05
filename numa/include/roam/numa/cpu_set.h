// A set of OS CPU numbers (the kernel's PU numbering: cpuN in
// /sys/devices/system/cpu, bit N of an affinity mask), kept as a sorted list
// without duplicates, with the kernel's list syntax ("0-3,8", as in
// Cpus_allowed_list and /sys/devices/system/cpu/online) for text.
// The same syntax numbers NUMA nodes (/sys/devices/system/node/online), so
// the type also carries node lists where one is needed.
//
// Thread-safety: a plain value; distinct objects may be used from any thread,
// one object needs external synchronization only while it is modified.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::numa {

class CpuSet final {
 public:
  // Parse() refuses numbers above this, so that "0-4000000000" cannot
  // allocate gigabytes; Linux's NR_CPUS tops out at 8192.
  static constexpr int kMaxCpu = 65535;

  CpuSet() = default;
  // Sorted and deduplicated; every number must be in [0, kMaxCpu] (checked).
  CpuSet(std::initializer_list<int> cpus);
  static CpuSet FromList(std::vector<int> cpus);
  // "0-3,8"; surrounding whitespace (a trailing newline from /proc or /sys)
  // is ignored; "" is the empty set. kInvalidArgument for anything else.
  static Result<CpuSet> Parse(std::string_view text);

  // Ranges of consecutive numbers collapse: {0,1,2,3,8} -> "0-3,8"; {} -> "".
  std::string ToString() const;

  const std::vector<int>& cpus() const { return cpus_; }
  bool empty() const { return cpus_.empty(); }
  int size() const { return static_cast<int>(cpus_.size()); }
  bool contains(int cpu) const;
  // The members of this set that `other` lacks.
  CpuSet Minus(const CpuSet& other) const;
  CpuSet Union(const CpuSet& other) const;

  friend bool operator==(const CpuSet&, const CpuSet&) = default;

 private:
  std::vector<int> cpus_;  // sorted, unique, each in [0, kMaxCpu]
};

}  // namespace roam::numa
