// Lau et al.'s anti-tasks with load state vectors, the alternative to MOSIX
// dissemination (a pool runs one or the other). A light node sends out an
// anti-task: a request for work that travels from node to node toward the
// heavy ones, carrying a trajectory: the load vector of its origin, then
// that of every node it passed. Each node it reaches merges the trajectory
// into its view (its load state vector: the newest state of each node it
// knows), and so do the nodes that light ones meet; then a heavy node keeps
// it (a pull: the caller moves a process to the origin), any other passes
// it on with its own vector appended, to the heaviest peer its view knows
// that the trajectory has not visited (a heavy node that keeps an anti-task
// tells its origin so), or to a random unvisited one. An
// anti-task whose trajectory is full ends. Information goes where it is
// needed, from light nodes to heavy ones, and only while some node is light.
//
// The states: light below `light_below` runnable tasks per CPU, heavy
// above `heavy_above`, normal between.
//
// Transport: an anti-task is a window of the load board (load_board.h),
// written by whoever passes it on, with one-sided puts into the next node's
// board at the passer's slot; the origin is its first vector. Two anti-
// tasks passed by one node to the same next node before it scans (or two
// passers sharing a slot) overwrite each other: the later one travels on.
//
// Thread-safety: one thread, the fabric's. Lifetime: as Disseminator's.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "roam/base/error.h"
#include "roam/gossip/dissemination.h"
#include "roam/load/load_board.h"
#include "roam/load/load_vector.h"
#include "roam/load/load_view.h"
#include "roam/transport/transport.h"

namespace roam::gossip {

enum class LoadState { kLight, kNormal, kHeavy };

struct AntiTaskThresholds {
  double light_below = 0.5;  // runnable tasks per CPU
  double heavy_above = 1.0;
};

// A node's state by its vector (a node that accepts no guests is never
// light: it wants no work).
LoadState StateOf(const load::LoadVector& v, const AntiTaskThresholds& thresholds);

// An anti-task that reached a heavy node: its origin wants work.
struct Pull {
  load::LoadVector origin;  // as the anti-task carried it (its state at launch)
  std::uint32_t hops = 0;   // nodes it passed before this one
};

struct AntiTaskCounts {
  std::uint64_t ticks = 0;
  std::uint64_t launched = 0;   // sent out by this node, light
  std::uint64_t forwarded = 0;  // passed on
  std::uint64_t pulled = 0;     // kept here, heavy
  std::uint64_t answered = 0;   // the origins of those told where work is
  std::uint64_t ended = 0;      // trajectory full, or no unvisited peer
  std::uint64_t puts = 0;       // launched + forwarded + answered
  std::uint64_t put_failures = 0;
  std::uint64_t busy = 0;  // not sent: every buffer still read by a put
  load::BoardCounts board;
};

// The nodes anti-tasks may go to, resolved one at a time as they are
// needed: a pool of 100,000 (roam-sim) need not hold an endpoint to every
// node. A pointer returned is used before the next call and not kept.
class AntiTaskPeers {
 public:
  virtual ~AntiTaskPeers() = default;
  // The candidates for a random hop are At(0) to At(size() - 1).
  virtual std::size_t size() const = 0;
  virtual const BoardPeer* At(std::size_t index) = 0;
  // The peer that is node `node`; nullptr when there is none.
  virtual const BoardPeer* Find(std::uint32_t node) = 0;
};

// A pool small enough to hold an endpoint to every member (roamd): the
// peers as a list.
class AntiTaskPeerList final : public AntiTaskPeers {
 public:
  explicit AntiTaskPeerList(std::span<const BoardPeer> peers) : peers_(peers) {}
  std::size_t size() const override { return peers_.size(); }
  const BoardPeer* At(std::size_t index) override { return &peers_[index]; }
  const BoardPeer* Find(std::uint32_t node) override;

 private:
  std::span<const BoardPeer> peers_;
};

class AntiTasks {
 public:
  struct Options {
    load::BoardShape shape;  // window: the longest trajectory, origin included
    AntiTaskThresholds thresholds;
    std::size_t view_capacity = 16;
    // A node known heavy from information older than this (against this
    // node's own sample time) is not steered to.
    std::chrono::nanoseconds max_info_age = std::chrono::seconds(10);
    std::uint64_t seed = 1;
  };

  // Allocates the board (zeroed) and the buffers anti-tasks are put from.
  // Refuses a bad shape, a window under 2, or thresholds out of order
  // (kInvalidArgument, one line).
  static Result<std::unique_ptr<AntiTasks>> Create(transport::Fabric& fabric, std::uint32_t self,
                                                   Options options);
  virtual ~AntiTasks() = default;

  virtual Result<transport::Bytes> PackBoardKey() const = 0;

  // One tick: reads the anti-tasks peers put into this node's board, sets
  // `own` as this node's vector, keeps (heavy) or passes on each, and sends
  // a new one when this node is light. `peers`: the nodes it may send to
  // (a peer without an endpoint or board is passed over).
  virtual Status Tick(const load::LoadVector& own, AntiTaskPeers& peers) = 0;
  Status Tick(const load::LoadVector& own, std::span<const BoardPeer> peers) {
    AntiTaskPeerList list(peers);
    return Tick(own, list);
  }

  // The anti-tasks this node kept in its last tick.
  virtual std::span<const Pull> pulls() const = 0;
  // Their origins, each once, as freshly as this node knows them: where
  // the caller may move processes.
  virtual std::span<const load::LoadVector> origins() const = 0;
  virtual const load::LoadView& view() const = 0;
  virtual AntiTaskCounts counts() const = 0;
};

}  // namespace roam::gossip
