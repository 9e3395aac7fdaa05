// What this node is and what roam can use on it: host and kernel, hardware
// topology (hwloc), transport resources (UCX), the PMIx library. `roam info`
// prints it; roamd will publish parts of it to its peers.
//
// Thread-safety: BuildNodeReport() may be called from any thread; the report
// is a plain value.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "roam/base/error.h"
#include "roam/transport/probe.h"

namespace roam::launch {

struct NodeReport {
  std::string roam_version;  // "0.1.0 (git 1a2b3c4)"
  std::string hostname;
  std::string kernel;   // uname release, e.g. "6.18.44"
  std::string machine;  // uname machine, e.g. "x86_64"
  int packages = 0;
  int numa_nodes = 0;
  int cores = 0;
  int pus = 0;
  std::string topology;  // hwloc summary line
  transport::BackendReport ucx;
  std::string pmix_version;
  bool verbs_headers = false;  // built with rdma-core headers (future verbs backend)
};

Result<NodeReport> BuildNodeReport();

nlohmann::json ToJson(const NodeReport& report);
// Aligned "key  value" lines for a terminal.
std::string ToText(const NodeReport& report);

}  // namespace roam::launch
