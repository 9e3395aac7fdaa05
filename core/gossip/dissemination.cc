#include "roam/gossip/dissemination.h"

#include <algorithm>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "board_io.h"

namespace roam::gossip {
namespace {

// Buffers windows are put from (board_io.h).
constexpr std::size_t kBuffers = 4;

class DisseminatorImpl final : public Disseminator {
 public:
  DisseminatorImpl(std::uint32_t self, Options options, internal::BoardIo io)
      : self_(self),
        options_(options),
        io_(std::move(io)),
        view_(self, options.view_capacity),
        rng_(options.seed) {}

  Result<transport::Bytes> PackBoardKey() const override { return io_.PackBoardKey(); }

  Status Tick(const load::LoadVector& own, std::span<const BoardPeer> peers) override {
    ++counts_.ticks;
    Refresh();
    view_.SetOwn(own);
    const std::span<const BoardPeer* const> chosen = ChoosePeers(peers);
    if (chosen.empty()) return Ok();
    ROAM_ASSIGN_OR_RETURN(const std::optional<std::size_t> buffer,
                          io_.Seal(view_.Window(options_.shape.window)));
    if (!buffer) {
      ++counts_.busy_ticks;
      return Ok();
    }
    for (const BoardPeer* peer : chosen) {
      if (io_.Put(*buffer, *peer)) {
        ++counts_.puts;
      } else {
        ++counts_.put_failures;
      }
    }
    return Ok();
  }

  void Refresh() override {
    io_.Scan([this](std::uint32_t, std::span<const load::LoadVector> window) {
      for (const load::LoadVector& v : window) view_.Merge(v);
    });
  }

  const load::LoadView& view() const override { return view_; }
  DisseminationCounts counts() const override {
    DisseminationCounts c = counts_;
    c.board = io_.board_counts();
    c.put_failures += io_.failures();
    return c;
  }

 private:
  // `fanout` distinct peers, uniformly. Indices into `peers` are drawn at
  // random and a draw of this node, of a peer without an endpoint or key,
  // or of one already chosen is drawn again: O(fanout) expected in a pool
  // where most peers are usable, whatever its size. After a bounded number
  // of draws (a pool of mostly unusable peers, or barely more usable peers
  // than the fanout) the choice finishes with a partial Fisher-Yates
  // shuffle of the usable peers left, which is uniform too.
  std::span<const BoardPeer* const> ChoosePeers(std::span<const BoardPeer> peers) {
    candidates_.clear();
    if (peers.empty()) return {};
    auto usable = [this](const BoardPeer& p) {
      return p.node != self_ && p.endpoint != nullptr && p.board != nullptr;
    };
    auto taken = [this](const BoardPeer* p) {
      return std::find(candidates_.begin(), candidates_.end(), p) != candidates_.end();
    };
    std::uniform_int_distribution<std::size_t> any(0, peers.size() - 1);
    const std::size_t tries = 4 * std::size_t{options_.fanout} + 16;
    for (std::size_t t = 0; t < tries && candidates_.size() < options_.fanout; ++t) {
      const BoardPeer& p = peers[any(rng_)];
      if (usable(p) && !taken(&p)) candidates_.push_back(&p);
    }
    if (candidates_.size() < options_.fanout) {
      // The rest among the usable peers not chosen yet.
      const std::size_t chosen = candidates_.size();
      for (const BoardPeer& p : peers) {
        if (usable(p) && std::find(candidates_.begin(), candidates_.begin() + chosen, &p) ==
                             candidates_.begin() + chosen) {
          candidates_.push_back(&p);
        }
      }
      const std::size_t n = std::min<std::size_t>(options_.fanout, candidates_.size());
      for (std::size_t i = chosen; i < n; ++i) {
        std::uniform_int_distribution<std::size_t> pick(i, candidates_.size() - 1);
        std::swap(candidates_[i], candidates_[pick(rng_)]);
      }
      candidates_.resize(n);
    }
    return std::span(candidates_);
  }

  std::uint32_t self_;
  Options options_;
  internal::BoardIo io_;
  load::LoadView view_;
  std::mt19937_64 rng_;
  std::vector<const BoardPeer*> candidates_;
  DisseminationCounts counts_;
};

}  // namespace

Result<std::unique_ptr<Disseminator>> Disseminator::Create(transport::Fabric& fabric,
                                                           std::uint32_t self, Options options) {
  if (options.fanout == 0) {
    return MakeError(Errc::kInvalidArgument, "gossip: a fanout of 0 spreads nothing");
  }
  ROAM_ASSIGN_OR_RETURN(auto io, internal::BoardIo::Create(fabric, options.shape, kBuffers, self));
  return std::unique_ptr<Disseminator>(
      std::make_unique<DisseminatorImpl>(self, options, std::move(io)));
}

}  // namespace roam::gossip
