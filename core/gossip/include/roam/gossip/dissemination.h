// MOSIX dissemination of load vectors: every tick a node seals its window
// (its own vector and the freshest few it knows) and writes it with
// one-sided puts into the load boards of `fanout` peers drawn at random,
// then scans its own board and merges what peers wrote there into its view.
// No broadcast and no central server: information spreads epidemically and
// ages gracefully; a node's puts per tick are `fanout` whatever the pool's
// size.
//
// The board is registered memory of this node's fabric (Fabric::Allocate),
// so that peers' puts land without this node's CPU where the transport
// allows; its packed key travels with the node's address at bootstrap.
//
// Thread-safety: one thread, the fabric's. Lifetime: the fabric outlives
// the disseminator; the endpoints and keys of BoardPeer outlive each Tick
// (their puts may complete later; a put that fails only counts).
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "roam/base/error.h"
#include "roam/load/load_board.h"
#include "roam/load/load_view.h"
#include "roam/transport/transport.h"

namespace roam::gossip {

// A peer this node may write to: its id, an endpoint to it, and its board's
// key as unpacked by that endpoint.
struct BoardPeer {
  std::uint32_t node = 0;
  transport::Endpoint* endpoint = nullptr;
  const transport::RemoteKey* board = nullptr;
};

struct DisseminationCounts {
  std::uint64_t ticks = 0;
  std::uint64_t puts = 0;          // windows put into peers' boards
  std::uint64_t put_failures = 0;  // refused at issue, or completed with an error
  std::uint64_t busy_ticks = 0;    // no window written: every buffer still in flight
  load::BoardCounts board;         // what scans of its own board found
};

class Disseminator {
 public:
  struct Options {
    load::BoardShape shape;
    // Peers written each tick (MOSIX's k), and the nodes it remembers: with
    // the board's window of 4, what the policy reads is 2 ticks old at the
    // median (roam-sim at 1,000 nodes, docs/policy.md), for 4 puts a second.
    std::uint32_t fanout = 4;
    std::size_t view_capacity = 16;
    std::uint64_t seed = 1;  // for the choice of peers
  };

  // Allocates the board (zeroed) and the buffers windows are put from.
  // Refuses a bad shape or a fanout of 0 (kInvalidArgument).
  static Result<std::unique_ptr<Disseminator>> Create(transport::Fabric& fabric, std::uint32_t self,
                                                      Options options);
  virtual ~Disseminator() = default;

  // The board's packed key, for peers' UnpackKey.
  virtual Result<transport::Bytes> PackBoardKey() const = 0;

  // One tick: scans the board, sets `own` as this node's vector, and puts
  // the window into `fanout` distinct peers of `peers` drawn at random
  // (peers with this node's id are skipped). Puts complete in later
  // Progress calls; a window is sealed into a buffer no put still reads,
  // and while every buffer is read (peers that do not progress) the tick
  // writes nothing (counted as busy).
  virtual Status Tick(const load::LoadVector& own, std::span<const BoardPeer> peers) = 0;

  // Scans the board now, between ticks, and merges what peers put since
  // the last scan into the view; writes nothing. Peers' puts land whenever
  // they come, so a reader between ticks (a placement) reads the board as
  // it is rather than as it was at this node's last tick.
  virtual void Refresh() = 0;

  virtual const load::LoadView& view() const = 0;
  virtual DisseminationCounts counts() const = 0;
};

}  // namespace roam::gossip
