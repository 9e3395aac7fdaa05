#include "roam/numa/topology.h"

#include <hwloc.h>

#include <cerrno>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "roam/base/check.h"

namespace roam::numa {
namespace {

// Initializes a topology, lets `configure` choose its source, and loads it.
Result<hwloc_topology_t> Load(std::string_view what,
                              const std::function<int(hwloc_topology_t)>& configure) {
  hwloc_topology_t topology = nullptr;
  if (hwloc_topology_init(&topology) != 0) {
    return ErrnoError(errno, "hwloc: initialize a topology");
  }
  if (configure(topology) != 0) {
    const int err = errno;
    hwloc_topology_destroy(topology);
    return Error(Errc::kInvalidArgument, err,
                 fmt::format("hwloc: {} is not a valid topology", what));
  }
  if (hwloc_topology_load(topology) != 0) {
    const int err = errno;
    hwloc_topology_destroy(topology);
    return Error(ErrcFromErrno(err), err, fmt::format("hwloc: load the topology of {}", what));
  }
  return topology;
}

int Count(hwloc_topology_t topology, hwloc_obj_type_t type) {
  const int n = hwloc_get_nbobjs_by_type(topology, type);
  return n < 0 ? 0 : n;  // -1 means "at several depths", which these types never are
}

std::string Plural(int n, std::string_view noun) {
  return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s");
}

}  // namespace

Result<Topology> Topology::FromSystem() {
  ROAM_ASSIGN_OR_RETURN(hwloc_topology_t topology,
                        Load("this machine", [](hwloc_topology_t) { return 0; }));
  return Topology(topology);
}

Result<Topology> Topology::FromSynthetic(std::string_view description) {
  const std::string text(description);
  ROAM_ASSIGN_OR_RETURN(
      hwloc_topology_t topology,
      Load(fmt::format("synthetic description '{}'", text),
           [&text](hwloc_topology_t t) { return hwloc_topology_set_synthetic(t, text.c_str()); }));
  return Topology(topology);
}

Result<Topology> Topology::FromXml(std::string_view xml) {
  if (xml.empty()) return MakeError(Errc::kInvalidArgument, "hwloc: empty XML topology");
  const std::string text(xml);  // hwloc wants the terminating NUL counted in size
  ROAM_ASSIGN_OR_RETURN(
      hwloc_topology_t topology, Load("the XML buffer", [&text](hwloc_topology_t t) {
        return hwloc_topology_set_xmlbuffer(t, text.c_str(), static_cast<int>(text.size() + 1));
      }));
  return Topology(topology);
}

Topology::Topology(Topology&& other) noexcept
    : topology_(std::exchange(other.topology_, nullptr)) {}

Topology& Topology::operator=(Topology&& other) noexcept {
  if (this != &other) {
    if (topology_ != nullptr) hwloc_topology_destroy(topology_);
    topology_ = std::exchange(other.topology_, nullptr);
  }
  return *this;
}

Topology::~Topology() {
  if (topology_ != nullptr) hwloc_topology_destroy(topology_);
}

int Topology::packages() const { return Count(topology_, HWLOC_OBJ_PACKAGE); }
int Topology::numa_nodes() const { return Count(topology_, HWLOC_OBJ_NUMANODE); }
int Topology::cores() const { return Count(topology_, HWLOC_OBJ_CORE); }
int Topology::pus() const { return Count(topology_, HWLOC_OBJ_PU); }

std::vector<NumaNodeCores> Topology::CoresByNumaNode() const {
  const hwloc_obj_type_t core_type =
      Count(topology_, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
  std::vector<NumaNodeCores> nodes;
  hwloc_bitmap_t placed = hwloc_bitmap_alloc();  // PUs already listed under a node
  ROAM_CHECK(placed != nullptr, "hwloc_bitmap_alloc: out of memory");
  for (int i = 0; i < numa_nodes(); ++i) {
    hwloc_obj_t numa = hwloc_get_obj_by_type(topology_, HWLOC_OBJ_NUMANODE, i);
    NumaNodeCores& node = nodes.emplace_back();
    node.os_index = static_cast<int>(numa->os_index);
    if (numa->cpuset == nullptr) continue;
    hwloc_obj_t core = nullptr;
    while ((core = hwloc_get_next_obj_inside_cpuset_by_type(topology_, numa->cpuset, core_type,
                                                            core)) != nullptr) {
      if (hwloc_bitmap_intersects(core->cpuset, placed)) continue;
      hwloc_bitmap_or(placed, placed, core->cpuset);
      std::vector<int> pus;
      unsigned pu = 0;
      hwloc_bitmap_foreach_begin(pu, core->cpuset) { pus.push_back(static_cast<int>(pu)); }
      hwloc_bitmap_foreach_end();
      node.cores.push_back(CpuSet::FromList(std::move(pus)));
    }
  }
  hwloc_bitmap_free(placed);
  return nodes;
}

std::string Topology::Summary() const {
  return fmt::format("{}, {}, {}, {}", Plural(packages(), "package"),
                     Plural(numa_nodes(), "NUMA node"), Plural(cores(), "core"),
                     Plural(pus(), "PU"));
}

Result<std::string> Topology::ToXml() const {
  char* buffer = nullptr;
  int length = 0;
  if (hwloc_topology_export_xmlbuffer(topology_, &buffer, &length, 0) != 0) {
    return ErrnoError(errno, "hwloc: export the topology as XML");
  }
  // length counts the terminating NUL.
  std::string xml(buffer, length > 0 ? static_cast<std::size_t>(length - 1) : 0);
  hwloc_free_xmlbuffer(topology_, buffer);
  return xml;
}

}  // namespace roam::numa
