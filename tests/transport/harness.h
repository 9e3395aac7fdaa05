// How the transport conformance suite reaches a peer: the same tests run
// over every backend and placement through this seam.
//
//   fake          two nodes of one FakeNetwork, in this process
//   ucx_tcp       two UCX workers in this process, UCX_TLS=tcp (loopback)
//   ucx_tcp_process  a peer process on this host, UCX_TLS=tcp
//   ucx_shm       a peer process on this host, UCX_TLS=posix,cma,self,
//                 without peer-failure detection (UCX 1.13 has none on shm)
//   ucx_netns     a peer process in another network namespace (veth),
//                 UCX_TLS=tcp; needs root
//
// Thread-safety: one harness per test, on the test's thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "roam/transport/transport.h"

namespace roam::transport::testing {

class Harness {
 public:
  virtual ~Harness() = default;

  virtual Fabric& local() = 0;
  virtual Capabilities capabilities() const = 0;
  // A new endpoint from the local fabric to the peer's service.
  virtual Result<std::unique_ptr<Endpoint>> ConnectToPeer() = 0;
  // Progresses the local fabric (and an in-process peer) until `done()`.
  virtual Status Wait(const std::function<bool()>& done, std::chrono::milliseconds timeout) = 0;
  // The peer dies at once (process killed, or its fabric gone). Empty if
  // this placement cannot do that.
  virtual std::function<Status()> killer() = 0;
  // The peer stops answering but its connections stay open (process
  // stopped, or no longer progressed). Empty if this placement cannot.
  virtual std::function<Status()> silencer() = 0;
};

// The local fabric's peer_timeout in every placement: short, so that the
// liveness tests finish quickly.
inline constexpr std::chrono::milliseconds kHarnessPeerTimeout{2000};

// The placements this build and user can run, by name.
std::vector<std::string> HarnessNames();
// Creates one; skips (returns an error with kUnsupported) when the placement
// needs what this machine or user lacks.
Result<std::unique_ptr<Harness>> MakeHarness(const std::string& name);

}  // namespace roam::transport::testing
