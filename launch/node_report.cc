#include "launch/node_report.h"

#include <pmix.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <climits>

#include "roam/base/version.h"
#include "roam/numa/topology.h"

namespace roam::launch {

Result<NodeReport> BuildNodeReport() {
  NodeReport report;
  report.roam_version = fmt::format("{} (git {})", ROAM_VERSION_STRING, ROAM_GIT_DESCRIBE);

  struct utsname uts {};
  if (uname(&uts) != 0) return ErrnoError(errno, "uname");
  report.hostname = uts.nodename;
  report.kernel = uts.release;
  report.machine = uts.machine;

  ROAM_ASSIGN_OR_RETURN(const numa::Topology topology, numa::Topology::FromSystem());
  report.packages = topology.packages();
  report.numa_nodes = topology.numa_nodes();
  report.cores = topology.cores();
  report.pus = topology.pus();
  report.topology = topology.Summary();

  ROAM_ASSIGN_OR_RETURN(report.ucx, transport::ProbeUcx());
  report.pmix_version = PMIx_Get_version();
  report.verbs_headers = ROAM_HAVE_VERBS;
  return report;
}

nlohmann::json ToJson(const NodeReport& report) {
  nlohmann::json resources = nlohmann::json::array();
  for (const auto& r : report.ucx.resources) {
    resources.push_back({{"component", r.component},
                         {"transport", r.transport},
                         {"device", r.device},
                         {"kind", transport::DeviceKindName(r.kind)}});
  }
  return {
      {"roam_version", report.roam_version},
      {"hostname", report.hostname},
      {"kernel", report.kernel},
      {"machine", report.machine},
      {"topology",
       {{"packages", report.packages},
        {"numa_nodes", report.numa_nodes},
        {"cores", report.cores},
        {"pus", report.pus},
        {"summary", report.topology}}},
      {"ucx",
       {{"version", report.ucx.version},
        {"rdma", report.ucx.HasRdma()},
        {"resources", std::move(resources)}}},
      {"pmix_version", report.pmix_version},
      {"verbs_headers", report.verbs_headers},
  };
}

std::string ToText(const NodeReport& report) {
  std::string transports;
  for (const auto& r : report.ucx.resources) {
    if (!transports.empty()) transports += ", ";
    transports += fmt::format("{}/{}", r.transport, r.device);
  }
  std::string out;
  const auto line = [&out](std::string_view key, std::string_view value) {
    out += fmt::format("{:<10} {}\n", key, value);
  };
  line("roam", report.roam_version);
  line("node", fmt::format("{} (Linux {} {})", report.hostname, report.kernel, report.machine));
  line("topology", report.topology);
  line("ucx", fmt::format("{}: {}", report.ucx.version, transports));
  line("rdma", report.ucx.HasRdma() ? "yes: UCX found a verbs device"
                                    : "no: UCX found no verbs device (tcp and shared memory only)");
  line("pmix", report.pmix_version);
  return out;
}

}  // namespace roam::launch
