#include "launch/daemon/launcher.h"

#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <span>

namespace roam::daemon {
namespace {

constexpr std::string_view kJobKey = "roamd.job_key";

std::string Environment(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? std::string() : std::string(value);
}

}  // namespace

bool StartedByPmixLauncher() { return !Environment("PMIX_NAMESPACE").empty(); }

std::string HostName() {
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) return {};
  return host;
}

std::string TaskNodeName() {
  std::string node = Environment("SLURMD_NODENAME");
  return node.empty() ? HostName() : node;
}

LauncherPlace PlaceOf(const transport::PmixBootstrap& boot) {
  LauncherPlace place;
  place.slurm_node = Environment("SLURMD_NODENAME");
  place.launcher_host = boot.hostname();
  place.host = HostName();
  place.local_rank = boot.local_rank();
  place.local_size = boot.local_size();
  return place;
}

std::string LauncherNodeName(const LauncherPlace& place) {
  std::string name = !place.slurm_node.empty()      ? place.slurm_node
                     : !place.launcher_host.empty() ? place.launcher_host
                     : !place.host.empty()          ? place.host
                                                    : "node";
  if (place.local_size > 1) name += "." + std::to_string(place.local_rank);
  return name;
}

Result<pool::PoolKey> ShareJobKey(transport::Bootstrap& boot, std::chrono::milliseconds timeout) {
  if (boot.rank() == 0) {
    ROAM_ASSIGN_OR_RETURN(pool::PoolKey key, pool::PoolKey::Random());
    const std::string_view secret = key.secret();
    ROAM_TRY(boot.Put(kJobKey, std::as_bytes(std::span(secret.data(), secret.size()))));
  }
  ROAM_TRY(boot.Fence(timeout));
  ROAM_ASSIGN_OR_RETURN(const auto bytes, boot.Get(0, kJobKey));
  return pool::PoolKey::FromBytes(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

}  // namespace roam::daemon
