#include "tests/transport/harness.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "roam/launch/local_nodes.h"
#include "roam/transport/bootstrap.h"
#include "roam/transport/fake.h"
#include "tests/support/test_util.h"
#include "tests/transport/peer_service.h"

namespace roam::transport::testing {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kPeerRegionBytes = (std::size_t{64} << 20) + (std::size_t{1} << 20);

// Both fabrics live here; the peer's is progressed by Wait, except while the
// service asked to pause.
class InProcessHarness final : public Harness {
 public:
  Status Open(const std::string& backend) {
    FabricOptions local_options{.name = "local", .peer_timeout = kHarnessPeerTimeout};
    FabricOptions peer_options{.name = "peer"};
    if (backend == "fake") {
      network_ = std::make_unique<FakeNetwork>();
      ROAM_ASSIGN_OR_RETURN(local_, network_->AddNode(local_options));
      ROAM_ASSIGN_OR_RETURN(peer_, network_->AddNode(peer_options));
    } else {
      ROAM_ASSIGN_OR_RETURN(local_, OpenFabric(backend, local_options));
      ROAM_ASSIGN_OR_RETURN(peer_, OpenFabric(backend, peer_options));
    }
    ROAM_ASSIGN_OR_RETURN(service_, PeerService::Start(*peer_, kPeerRegionBytes));
    ROAM_ASSIGN_OR_RETURN(peer_address_, peer_->Address());
    return Ok();
  }

  ~InProcessHarness() override {
    service_.reset();
    peer_.reset();
  }

  Fabric& local() override { return *local_; }
  Capabilities capabilities() const override { return local_->capabilities(); }

  Result<std::unique_ptr<Endpoint>> ConnectToPeer() override {
    return local_->Connect(peer_address_);
  }

  Status Wait(const std::function<bool()>& done, std::chrono::milliseconds timeout) override {
    const Clock::time_point deadline = Clock::now() + timeout;
    while (true) {
      unsigned events = local_->Progress();
      if (peer_ && !silenced_ && Clock::now() >= service_->paused_until()) {
        events += peer_->Progress();
        service_->Poll();
      }
      if (done()) return Ok();
      if (Clock::now() >= deadline) {
        return MakeError(Errc::kTimeout, "not done within {} ms", timeout.count());
      }
      if (events == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  std::function<Status()> killer() override {
    if (network_) return [this] { return network_->Kill("peer"); };
    // A UCX peer in this process dies by closing its worker: its sockets
    // close as a killed process's would.
    return [this]() -> Status {
      service_.reset();
      peer_.reset();
      return Ok();
    };
  }

  std::function<Status()> silencer() override {
    return [this]() -> Status {
      silenced_ = true;
      return Ok();
    };
  }

 private:
  std::unique_ptr<FakeNetwork> network_;
  std::unique_ptr<Fabric> local_;
  std::unique_ptr<Fabric> peer_;
  std::unique_ptr<PeerService> service_;
  Bytes peer_address_;
  bool silenced_ = false;
};

// The peer is tests/transport/transport_peer, a process of its own; the
// local fabric is the only one this process progresses.
class CrossProcessHarness final : public Harness {
 public:
  // `detect_peer_failure` false: shared memory, which UCX 1.13 cannot watch
  // for a dead peer (no killer then).
  CrossProcessHarness(std::string tls, bool detect_peer_failure)
      : tls_(std::move(tls)), detect_peer_failure_(detect_peer_failure) {}

  // `across_namespaces`: this thread in node 0, the peer in node 1 of a
  // fresh pair of network namespaces (needs root).
  Status Open(bool across_namespaces) {
    ::setenv("UCX_TLS", tls_.c_str(), 1);
    // The peer publishes its address through the bootstrap, as a pool's
    // ranks do: a TCP rendezvous across namespaces, a directory on one host.
    std::unique_ptr<Bootstrap> boot;
    std::string spec;
    if (across_namespaces) {
      // The veth link only: each namespace's loopback looks reachable to
      // UCX but leads nowhere.
      ::setenv("UCX_NET_DEVICES", std::string(launch::LocalNodes::kInterface).c_str(), 1);
      launch::LocalNodesOptions options;
      options.nodes = 2;
      ROAM_ASSIGN_OR_RETURN(nodes_, launch::LocalNodes::Create(options));
      ROAM_TRY(nodes_->Enter(0));
      entered_ = true;
      ROAM_ASSIGN_OR_RETURN(std::unique_ptr<TcpBootstrap> tcp,
                            OpenTcpBootstrap(fmt::format("{}:0", nodes_->address(0)), 0, 2,
                                             std::chrono::seconds(20)));
      spec = fmt::format("tcp:{}:{}", nodes_->address(0), tcp->port());
      boot = std::move(tcp);
      ROAM_ASSIGN_OR_RETURN(pid_, nodes_->Spawn(1, PeerArgv(spec)));
    } else {
      spec = "dir:" + dir_.path().string();
      ROAM_ASSIGN_OR_RETURN(boot, OpenDirectoryBootstrap(dir_.path(), 0, 2));
      ROAM_TRY(SpawnPeer(spec));
    }
    if (Status fence = boot->Fence(std::chrono::seconds(20)); !fence.has_value()) {
      return fence.error().WithContext("transport_peer did not publish its address");
    }
    ROAM_ASSIGN_OR_RETURN(peer_address_, boot->Get(1, "ucx.address"));
    ROAM_ASSIGN_OR_RETURN(
        local_, OpenFabric("ucx", FabricOptions{.name = "local",
                                                .peer_timeout = kHarnessPeerTimeout,
                                                .detect_peer_failure = detect_peer_failure_}));
    return Ok();
  }

  ~CrossProcessHarness() override {
    local_.reset();
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);  // a stopped process dies of it too
      ::waitpid(pid_, nullptr, 0);
    }
    if (entered_) (void)nodes_->Leave();
  }

  Fabric& local() override { return *local_; }
  Capabilities capabilities() const override { return local_->capabilities(); }
  Result<std::unique_ptr<Endpoint>> ConnectToPeer() override {
    return local_->Connect(peer_address_);
  }
  Status Wait(const std::function<bool()>& done, std::chrono::milliseconds timeout) override {
    return ProgressUntil(*local_, done, timeout);
  }
  std::function<Status()> silencer() override {
    return [this]() -> Status {
      if (::kill(pid_, SIGSTOP) != 0) return ErrnoError(errno, "stop peer {}", pid_);
      return Ok();
    };
  }

  std::function<Status()> killer() override {
    // One-sided puts into a dead peer's shared memory still succeed; only
    // requests notice (PeerStopsAnswering covers that).
    if (!detect_peer_failure_) return {};
    return [this]() -> Status {
      if (::kill(pid_, SIGKILL) != 0) return ErrnoError(errno, "kill peer {}", pid_);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
      return Ok();
    };
  }

 private:
  static std::vector<std::string> PeerArgv(const std::string& bootstrap_spec) {
    return {(roam::testing::BuildDir() / "tests" / "transport_peer").string(), "--bootstrap",
            bootstrap_spec};
  }

  Status SpawnPeer(const std::string& bootstrap_spec) {
    std::vector<std::string> args = PeerArgv(bootstrap_spec);
    const std::string& program = args[0];
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // The test harness may leak descriptors; the peer gets none of them.
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    const int rc = ::posix_spawn(&pid_, program.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) return ErrnoError(rc, "spawn {}", program);
    return Ok();
  }

  std::string tls_;
  bool detect_peer_failure_;
  std::unique_ptr<launch::LocalNodes> nodes_;
  bool entered_ = false;
  roam::testing::TempDir dir_;
  pid_t pid_ = -1;
  Bytes peer_address_;
  std::unique_ptr<Fabric> local_;
};

}  // namespace

std::vector<std::string> HarnessNames() {
  return {"fake", "ucx_tcp", "ucx_tcp_process", "ucx_shm", "ucx_netns"};
}

Result<std::unique_ptr<Harness>> MakeHarness(const std::string& name) {
  if (name == "fake") {
    auto h = std::make_unique<InProcessHarness>();
    ROAM_TRY(h->Open("fake"));
    return std::unique_ptr<Harness>(std::move(h));
  }
  if (name == "ucx_tcp") {
    // Two workers of one process would otherwise talk over shared memory.
    ::setenv("UCX_TLS", "tcp", 1);
    auto h = std::make_unique<InProcessHarness>();
    ROAM_TRY(h->Open("ucx"));
    return std::unique_ptr<Harness>(std::move(h));
  }
  if (name == "ucx_tcp_process") {
    auto h = std::make_unique<CrossProcessHarness>("tcp", true);
    ROAM_TRY(h->Open(false));
    return std::unique_ptr<Harness>(std::move(h));
  }
  if (name == "ucx_shm") {
    auto h = std::make_unique<CrossProcessHarness>("posix,cma,self", false);
    ROAM_TRY(h->Open(false));
    return std::unique_ptr<Harness>(std::move(h));
  }
  if (name == "ucx_netns") {
    if (!roam::testing::IsRoot()) {
      return MakeError(Errc::kUnsupported, "needs root: network namespaces as nodes");
    }
    // Across namespaces only tcp is honest: UCX would use /dev/shm, which
    // every namespace here shares.
    auto h = std::make_unique<CrossProcessHarness>("tcp", true);
    ROAM_TRY(h->Open(true));
    return std::unique_ptr<Harness>(std::move(h));
  }
  return MakeError(Errc::kNotFound, "no harness '{}'", name);
}

}  // namespace roam::transport::testing
