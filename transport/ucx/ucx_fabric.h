// The UCX backend of the transport (transport.h): one UCX context and worker
// per Fabric, endpoints created from worker addresses with peer error
// handling, puts and gets with ucp_put_nbx/ucp_get_nbx on unpacked rkeys,
// control messages as UCX active messages.
//
// Thread-safety: as for every Fabric, one thread (UCS_THREAD_MODE_SINGLE).
#pragma once

#include <memory>

#include "roam/base/error.h"
#include "roam/transport/transport.h"

namespace roam::transport {

Result<std::unique_ptr<Fabric>> OpenUcxFabric(const FabricOptions& options);

}  // namespace roam::transport
