// The fake transport: many nodes inside one process, for unit tests and the
// simulator. Deterministic (one seed, one clock, FIFO delivery per link) and
// with fault injection: drop, delay, disconnect, kill.
//
// It keeps the progress model of the real thing: a put, get or request from
// node A to node B takes effect only when B calls Progress() (as over UCX
// tcp), and A sees the completion, ack or reply in its own next Progress().
// Operations between one pair of nodes are delivered in the order issued
// (so Fence holds trivially); a delay applies to whole links and keeps that
// order.
//
// Faults, set per directed link (from, to):
//   - drop: each message or operation on the link is lost with probability
//     `drop` (drawn from the network's seeded generator). A lost put never
//     lands and the flush after it never completes (the caller's deadline
//     answers); a lost request or reply ends in kTimeout.
//   - delay: delivery no earlier than `delay` after issue (on the network's
//     clock).
//   - Disconnect(a, b): both directions break; endpoints between a and b
//     fail with kUnavailable at their next Progress(), with everything
//     pending on them. Kill(node): the node vanishes: every endpoint to it
//     fails so, and its own fabric's endpoints fail too.
//
// FabricOptions::peer_timeout holds as on UCX, on the network's clock: an
// endpoint that waits that long without any answer (its peer not
// progressing, or everything on the link dropped) fails with kUnavailable.
//
// Thread-safety: a FakeNetwork and all its fabrics belong to one thread.
// Lifetime: the network must outlive its fabrics.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "roam/base/error.h"
#include "roam/transport/transport.h"

namespace roam::transport {

class FakeNetwork final {
 public:
  using Clock = std::chrono::steady_clock;

  // When a put reads its source, and so when its local completion runs.
  enum class PutSource : std::uint8_t {
    // Copied when the put is issued; the local completion runs at the
    // initiator's next Progress, whether or not the target progresses (as
    // UCX's eager protocols).
    kCopiedAtIssue,
    // Read when the put lands, straight into the target's memory; the local
    // completion runs with the ack, in the initiator's first Progress after
    // the target's (as a rendezvous over UCX tcp): `src` stays the
    // caller's until then. One copy of the data instead of two, and no
    // completion of its own: the simulator's choice. A put still on the
    // wire when its endpoint fails or is destroyed is copied then, and
    // lands as it would have.
    kReadAtLanding,
  };

  struct Options {
    std::uint64_t seed = 1;
    // The clock delays and request deadlines are measured on; the simulator
    // passes its virtual clock. Default: steady_clock.
    std::function<Clock::time_point()> now;
    PutSource put_source = PutSource::kCopiedAtIssue;
  };

  struct LinkFaults {
    double drop = 0.0;  // probability in [0, 1]
    std::chrono::microseconds delay{0};
  };

  explicit FakeNetwork(Options options);
  FakeNetwork() : FakeNetwork(Options{}) {}
  ~FakeNetwork();
  FakeNetwork(const FakeNetwork&) = delete;
  FakeNetwork& operator=(const FakeNetwork&) = delete;

  // A new node named options.name (unique in this network: kAlreadyExists
  // otherwise). Its address connects only within this network.
  Result<std::unique_ptr<Fabric>> AddNode(const FabricOptions& options);

  // Faults on the directed link from -> to (node names). kNotFound for an
  // unknown node, kInvalidArgument for drop outside [0, 1].
  Status SetFaults(std::string_view from, std::string_view to, LinkFaults faults);
  Status Disconnect(std::string_view a, std::string_view b);
  Status Kill(std::string_view node);

  // Operations and messages issued and not yet delivered, network-wide.
  std::size_t in_flight() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace roam::transport
