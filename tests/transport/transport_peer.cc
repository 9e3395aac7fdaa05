// The peer process of the cross-process conformance runs: serves
// PeerService on a UCX fabric until killed, after publishing its address as
// "ucx.address" of rank 1 of 2 through the bootstrap SPEC ("dir:PATH" or
// "tcp:HOST:PORT", roam/transport/bootstrap.h); the test is rank 0.
//
//   transport_peer --bootstrap SPEC
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <thread>

#include "roam/transport/bootstrap.h"
#include "roam/transport/transport.h"
#include "tests/transport/peer_service.h"

namespace {

int Fail(const roam::Error& error) {
  std::fprintf(stderr, "transport_peer: %s\n", error.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace roam::transport;
  if (argc != 3 || std::string(argv[1]) != "--bootstrap") {
    std::fprintf(stderr, "usage: transport_peer --bootstrap SPEC\n");
    return 2;
  }
  // The test that started us may die without cleaning up: go with it.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  auto boot = OpenBootstrap(argv[2], 1, 2, std::chrono::seconds(20));
  if (!boot.has_value()) return Fail(boot.error());

  auto fabric = OpenFabric("ucx", FabricOptions{.name = "peer"});
  if (!fabric.has_value()) return Fail(fabric.error());
  auto service =
      testing::PeerService::Start(**fabric, (std::size_t{64} << 20) + (std::size_t{1} << 20));
  if (!service.has_value()) return Fail(service.error());
  auto address = (*fabric)->Address();
  if (!address.has_value()) return Fail(address.error());
  if (auto put = (*boot)->Put("ucx.address", *address); !put.has_value()) return Fail(put.error());
  if (auto fence = (*boot)->Fence(std::chrono::seconds(20)); !fence.has_value()) {
    return Fail(fence.error());
  }

  Fabric& f = **fabric;
  testing::PeerService& peer = **service;
  while (true) {
    // A pause starts right after the handler that asked for it.
    if (std::chrono::steady_clock::now() < peer.paused_until()) {
      std::this_thread::sleep_until(peer.paused_until());
      continue;
    }
    const unsigned events = f.Progress();
    peer.Poll();
    if (events != 0 || peer.watching() || !f.Arm()) continue;
    pollfd pfd{f.event_fd(), POLLIN, 0};
    ::poll(&pfd, 1, 100);
  }
}
