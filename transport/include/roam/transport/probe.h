// What a transport backend offers on this node: its library version and the
// transport/device pairs it can use (UCX: tcp on eth0, posix shared memory,
// rc_verbs on mlx5_0:1, ...). `roam info` prints it; a pool uses it to tell
// whether RDMA hardware is present.
//
// Thread-safety: ProbeUcx() opens and closes its own UCX handles and may be
// called from any thread.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::transport {

enum class DeviceKind {
  kNetwork,       // a NIC: tcp sockets or RDMA verbs
  kSharedMemory,  // same-host shared memory (posix, sysv, cma, knem, xpmem)
  kAccelerator,   // GPU memory domains
  kLoopback,      // "self": a process talking to itself
};

std::string_view DeviceKindName(DeviceKind kind);

struct TransportResource {
  std::string component;  // UCT component: "tcp", "ib", "posix", "self", ...
  std::string transport;  // "tcp", "rc_verbs", "ud_mlx5", "posix", ...
  std::string device;     // "eth0", "mlx5_0:1", "memory", ...
  DeviceKind kind;
};

struct BackendReport {
  std::string backend;  // "ucx"
  std::string version;  // the library's, e.g. "1.13.1"
  std::vector<TransportResource> resources;

  bool HasTransport(std::string_view transport) const;
  // True when some transport runs over RDMA verbs (InfiniBand or RoCE).
  bool HasRdma() const;
};

// Asks UCX for every component, memory domain and transport resource, as
// `ucx_info -d` does. Fails only if UCX itself cannot be queried.
Result<BackendReport> ProbeUcx();

}  // namespace roam::transport
