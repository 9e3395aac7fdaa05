// For the gossip tests: every node of a fake network able to write to every
// other's board (an endpoint from each to each, the board's key unpacked on
// it), as roamd's small pools are.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "roam/gossip/dissemination.h"
#include "roam/transport/transport.h"

namespace roam::gossip {

struct BoardMesh {
  // `nodes[j]` (a Disseminator or AntiTasks) has its board on
  // `fabrics[j]`. Fails the test on an error.
  template <typename Node>
  void Connect(const std::vector<std::unique_ptr<transport::Fabric>>& fabrics,
               const std::vector<std::unique_ptr<Node>>& nodes) {
    std::vector<transport::Bytes> boards;
    for (const auto& node : nodes) {
      auto packed = node->PackBoardKey();
      ASSERT_TRUE(packed.has_value());
      boards.push_back(std::move(*packed));
    }
    const auto count = static_cast<std::uint32_t>(fabrics.size());
    peers.resize(count);
    for (std::uint32_t i = 0; i < count; ++i) {
      for (std::uint32_t j = 0; j < count; ++j) {
        if (i == j) continue;
        auto address = fabrics[j]->Address();
        ASSERT_TRUE(address.has_value());
        auto ep = fabrics[i]->Connect(*address);
        ASSERT_TRUE(ep.has_value()) << ep.error().ToString();
        auto key = (*ep)->UnpackKey(boards[j]);
        ASSERT_TRUE(key.has_value()) << key.error().ToString();
        peers[i].push_back(BoardPeer{j, ep->get(), key->get()});
        endpoints.push_back(std::move(*ep));
        keys.push_back(std::move(*key));
      }
    }
  }

  // Destroyed keys first, then endpoints (members in reverse).
  std::vector<std::unique_ptr<transport::Endpoint>> endpoints;
  std::vector<std::unique_ptr<transport::RemoteKey>> keys;
  std::vector<std::vector<BoardPeer>> peers;  // by node: the others
};

}  // namespace roam::gossip
