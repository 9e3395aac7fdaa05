// Where on a node a new process runs: the NUMA node and the whole cores it is
// bound to, chosen from the node's topology and from how many processes roam
// has already placed on each CPU (CoreLedger). Pure computation, no I/O: the
// same code decides in roamd and in tests on synthetic topologies; binding a
// process to the result is roam/numa/binding.h.
//
// The choice: among NUMA nodes with at least `cores` cores, the one with the
// most free cores (no roam process on any of its PUs), then the one whose
// `cores` least-used cores carry the fewest processes, then the lowest
// (logical) index. On it, the `cores` least-used cores, lowest index first.
// So free whole cores go before a hyper-thread of a busy core, and once a
// node is full new processes share the least-shared cores.
//
// Thread-safety: plain values and free functions; a CoreLedger needs
// external synchronization while it is modified.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "roam/base/error.h"
#include "roam/numa/cpu_set.h"
#include "roam/numa/topology.h"

namespace roam::numa {

struct Placement {
  int numa_node = 0;  // the kernel's number of the chosen NUMA node
  CpuSet cpus;        // every PU of the chosen cores (OS numbers)

  // "node 1 cpus 8-11"
  std::string ToString() const;
  friend bool operator==(const Placement&, const Placement&) = default;
};

// How many roam-placed processes use each PU (by OS number). A core's load is
// that of its busiest PU, so a process bound to one hyper-thread makes the
// whole core busy.
class CoreLedger final {
 public:
  // Counts one more process on every PU of `placement`.
  void Take(const Placement& placement);
  // Undoes one Take of the same placement. Releasing a PU nobody holds is a
  // bug and stops the process (ROAM_CHECK).
  void Release(const Placement& placement);

  // Processes on `pu`; 0 for a PU never taken.
  int users(int pu) const;
  // Processes on the busiest PU of `core`.
  int CoreUsers(const CpuSet& core) const;
  // The total over all PUs (0: nothing placed).
  int total() const;

  friend bool operator==(const CoreLedger&, const CoreLedger&) = default;

 private:
  std::vector<int> users_;  // by PU OS number; grown on demand
};

// Chooses a NUMA node and `cores` whole cores for a new process (see the top
// of this file). kInvalidArgument if `cores` < 1; kResourceExhausted if no
// NUMA node has that many cores (a process is never spread over nodes).
Result<Placement> ChoosePlacement(const Topology& topology, const CoreLedger& ledger,
                                  int cores = 1);

// Free cores (no roam process on any PU) on each of the first 8 NUMA nodes,
// in the topology's logical order, saturating at 255; 0 beyond the last node.
// This is the load vector's free_cores field (roam/load/sampler.h).
std::array<std::uint8_t, 8> FreeCoresPerNumaNode(const Topology& topology,
                                                 const CoreLedger& ledger);

}  // namespace roam::numa
