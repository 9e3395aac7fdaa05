#include "roam/gossip/dissemination.h"

#include <algorithm>
#include <array>
#include <random>
#include <vector>

namespace roam::gossip {
namespace {

// Window buffers: a peer that does not progress (over tcp a put completes
// only as its target progresses) holds one until its endpoint fails, and
// the others keep the node gossiping meanwhile.
constexpr std::size_t kBuffers = 4;

class DisseminatorImpl final : public Disseminator {
 public:
  DisseminatorImpl(std::uint32_t self, Options options,
                   std::unique_ptr<transport::MemoryRegion> board,
                   std::unique_ptr<transport::MemoryRegion> out)
      : self_(self),
        options_(options),
        board_(std::move(board)),
        out_(std::move(out)),
        reader_(options.shape),
        view_(self, options.view_capacity),
        rng_(options.seed) {}

  Result<transport::Bytes> PackBoardKey() const override { return board_->PackKey(); }

  Status Tick(const load::LoadVector& own, std::span<const BoardPeer> peers) override {
    ++counts_.ticks;
    reader_.Scan(std::span<const std::byte>(board_->data(), options_.shape.bytes()),
                 [this](const load::LoadVector& v) { view_.Merge(v); });
    view_.SetOwn(own);
    const auto free = std::find(shared_->in_flight.begin(), shared_->in_flight.end(), 0);
    if (free == shared_->in_flight.end()) {
      ++counts_.busy_ticks;
      return Ok();
    }
    const auto buffer = static_cast<std::size_t>(free - shared_->in_flight.begin());
    const std::span<const BoardPeer* const> chosen = ChoosePeers(peers);
    if (chosen.empty()) return Ok();
    const std::vector<load::LoadVector> window = view_.Window(options_.shape.window);
    const std::span<std::byte> slot(out_->data() + buffer * options_.shape.slot_bytes(),
                                    options_.shape.slot_bytes());
    ROAM_TRY(load::SealSlot(options_.shape, self_, ++sequence_, window, slot));
    const std::uint64_t offset = load::SlotOffset(options_.shape, self_);
    for (const BoardPeer* peer : chosen) {
      auto done = [shared = shared_, buffer](Status status) {
        --shared->in_flight[buffer];
        if (!status) ++shared->failures;
      };
      Status put = peer->endpoint->Put(slot, peer->board->base() + offset, *peer->board, done);
      if (put) {
        ++shared_->in_flight[buffer];
        ++counts_.puts;
      } else {
        ++counts_.put_failures;
      }
    }
    return Ok();
  }

  const load::LoadView& view() const override { return view_; }
  DisseminationCounts counts() const override {
    DisseminationCounts c = counts_;
    c.board = reader_.counts();
    c.put_failures += shared_->failures;
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
  std::unique_ptr<transport::MemoryRegion> board_;
  std::unique_ptr<transport::MemoryRegion> out_;  // kBuffers sealed windows puts read
  load::BoardReader reader_;
  load::LoadView view_;
  std::mt19937_64 rng_;
  std::uint64_t sequence_ = 0;
  // Shared with completions, which may run after the disseminator is gone.
  struct Shared {
    std::array<std::uint64_t, kBuffers> in_flight{};  // puts reading each buffer
    std::uint64_t failures = 0;                       // puts that completed with an error
  };
  std::shared_ptr<Shared> shared_ = std::make_shared<Shared>();
  std::vector<const BoardPeer*> candidates_;
  DisseminationCounts counts_;
};

}  // namespace

Result<std::unique_ptr<Disseminator>> Disseminator::Create(transport::Fabric& fabric,
                                                           std::uint32_t self, Options options) {
  ROAM_TRY(options.shape.Check());
  if (options.fanout == 0) {
    return MakeError(Errc::kInvalidArgument, "gossip: a fanout of 0 spreads nothing");
  }
  // Zero-filled: every slot reads as empty until a peer writes it.
  ROAM_ASSIGN_OR_RETURN(auto board, fabric.Allocate(options.shape.bytes()));
  ROAM_ASSIGN_OR_RETURN(auto out, fabric.Allocate(kBuffers * options.shape.slot_bytes()));
  return std::unique_ptr<Disseminator>(
      std::make_unique<DisseminatorImpl>(self, options, std::move(board), std::move(out)));
}

}  // namespace roam::gossip
