// The hardware topology of a node (packages, NUMA nodes, cores, PUs), read
// through hwloc from the running system, or built from a synthetic
// description or an XML export so that placement can be tested on machines
// this one is not ("pack:2 numa:2 core:4 pu:2").
//
// Thread-safety: a loaded Topology is read-only; const methods may be called
// from several threads at once. Move-only; owns its hwloc topology.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"
#include "roam/numa/cpu_set.h"

struct hwloc_topology;

namespace roam::numa {

// One NUMA node and the cores whose memory is local to it, as placement sees
// them. Nodes come in hwloc's logical order; a core is listed under the first
// node whose CPUs include it, so a node that shares its CPUs with an earlier
// one (high-bandwidth memory beside DRAM) or has none lists no cores.
struct NumaNodeCores {
  int os_index = 0;           // the kernel's node number (nodeN in sysfs)
  std::vector<CpuSet> cores;  // each core's PUs (OS numbers), in logical order
};

class Topology final {
 public:
  // The topology of the machine this process runs on (what hwloc sees,
  // restricted to this process's allowed CPUs and memory).
  static Result<Topology> FromSystem();
  // hwloc's synthetic syntax, e.g. "pack:2 numa:2 core:4 pu:2".
  static Result<Topology> FromSynthetic(std::string_view description);
  // An XML export, from ToXml() or `lstopo --of xml`.
  static Result<Topology> FromXml(std::string_view xml);

  Topology(Topology&& other) noexcept;
  Topology& operator=(Topology&& other) noexcept;
  Topology(const Topology&) = delete;
  Topology& operator=(const Topology&) = delete;
  ~Topology();

  int packages() const;
  int numa_nodes() const;
  int cores() const;
  int pus() const;  // processing units: hardware threads

  // Every NUMA node with its cores. Where hwloc reports no cores (some
  // platforms expose only PUs), each PU stands for a core.
  std::vector<NumaNodeCores> CoresByNumaNode() const;

  // "1 package, 1 NUMA node, 2 cores, 2 PUs"
  std::string Summary() const;
  Result<std::string> ToXml() const;

 private:
  explicit Topology(hwloc_topology* topology) : topology_(topology) {}

  hwloc_topology* topology_;
};

}  // namespace roam::numa
