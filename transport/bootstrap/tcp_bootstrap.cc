// The TCP rendezvous (roam/transport/bootstrap.h OpenTcpBootstrap).
//
// Rank 0 listens; every other rank connects once and introduces itself with
// a Hello frame. At each Fence a rank sends rank 0 an Arrive frame with its
// puts since the last round; rank 0 waits, in one poll loop over its
// listener and every connection, until all ranks have arrived, merges their
// puts into its table and sends every rank the whole table. A failed round
// at rank 0 is sent to every rank as an Error frame, so that their errors
// name the rank at fault too.
//
// Connections that have not introduced themselves are held to tiny frames
// and dropped at their first fault; only a rank of this job can fail a round.
#include <poll.h>

#include <algorithm>
#include <utility>

#include "roam/base/deadline.h"
#include "roam/base/error_wire.h"
#include "roam/transport/bootstrap.h"
#include "transport/bootstrap/bootstrap.pb.h"
#include "transport/bootstrap/entries.h"
#include "transport/bootstrap/socket.h"

namespace roam::transport {
namespace {

constexpr std::uint32_t kWireVersion = 1;
// A Hello is a few bytes; an unknown connection gets no more than this.
constexpr std::size_t kMaxHelloFrameBytes = 1024;
// A connection must say which rank it is this soon after it is accepted, and
// at most this many may be waiting to: rank 0 holds a descriptor for each.
constexpr std::chrono::milliseconds kHelloTimeout{2000};
constexpr std::size_t kMaxUnidentified = 64;
// The whole table of a round: every rank's entries.
constexpr std::size_t kMaxFrameBytes = std::size_t{256} << 20;

std::string RankName(int rank) { return fmt::format("rank {}", rank); }

void AddEntries(const EntryMap& entries,
                google::protobuf::RepeatedPtrField<bootstrap::Entry>& out) {
  for (const auto& [key, value] : entries) {
    bootstrap::Entry* e = out.Add();
    e->set_key(key);
    e->set_value(std::string(AsText(value)));
  }
}

// The entries of a frame from `from`, checked as Put checks them.
Result<EntryMap> TakeEntries(const google::protobuf::RepeatedPtrField<bootstrap::Entry>& in,
                             std::string_view from) {
  EntryMap out;
  for (const bootstrap::Entry& e : in) {
    const auto value = std::as_bytes(std::span(e.value()));
    if (auto ok = CheckEntry(e.key(), value); !ok) {
      return MakeError(Errc::kProtocol, "{} sent an entry that Put refuses: {}", from,
                       ok.error().message());
    }
    out.insert_or_assign(e.key(), std::vector<std::byte>(value.begin(), value.end()));
  }
  return out;
}

Result<bootstrap::Frame> ParseFrame(std::string_view bytes, std::string_view from) {
  bootstrap::Frame frame;
  if (!frame.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return MakeError(Errc::kCorrupt, "malformed frame of {} bytes from {}", bytes.size(), from);
  }
  if (frame.version() != kWireVersion) {
    return MakeError(Errc::kIncompatible,
                     "{} speaks bootstrap protocol version {}, this build version {}", from,
                     frame.version(), kWireVersion);
  }
  return frame;
}

std::string ErrorFrame(const Error& error) {
  bootstrap::Frame frame;
  frame.set_version(kWireVersion);
  frame.set_error(EncodeError(error));
  return frame.SerializeAsString();
}

std::string_view BodyName(const bootstrap::Frame& frame) {
  switch (frame.body_case()) {
    case bootstrap::Frame::kHello:
      return "hello";
    case bootstrap::Frame::kArrive:
      return "arrive";
    case bootstrap::Frame::kTable:
      return "table";
    case bootstrap::Frame::kError:
      return "error";
    case bootstrap::Frame::BODY_NOT_SET:
      break;
  }
  return "empty";
}

// A connection at rank 0: a rank of the job once its Hello arrived.
struct Peer {
  UniqueFd fd;
  FrameReader reader{kMaxHelloFrameBytes};
  int rank = -1;
  Deadline hello_by{};              // while rank < 0: when it is dropped
  bool evicted = false;             // closed to make room; erased after this poll
  std::optional<EntryMap> arrived;  // its puts, once it arrived at this round
  std::optional<Error> lost;        // why it is gone, when it left between rounds
};

class TcpRendezvous final : public TcpBootstrap {
 public:
  TcpRendezvous(int rank, int size, HostPort where)
      : rank_(rank), size_(size), where_(std::move(where)), table_(size) {}

  Status ListenAsRoot() {
    ROAM_ASSIGN_OR_RETURN(listener_, ListenTcp(where_));
    port_ = listener_.port;
    by_rank_.assign(size_, nullptr);
    return Ok();
  }

  Status ConnectToRoot(std::chrono::milliseconds connect_timeout) {
    port_ = where_.port;
    const Deadline deadline = DeadlineAfter(connect_timeout);
    auto fd = ConnectTcp(where_, deadline);
    if (!fd) {
      return fd.error().WithContext(
          fmt::format("rank {}: rank 0 unreachable within {} ms", rank_, connect_timeout.count()));
    }
    fd_ = std::move(*fd);
    bootstrap::Frame hello;
    hello.set_version(kWireVersion);
    hello.mutable_hello()->set_rank(static_cast<std::uint32_t>(rank_));
    hello.mutable_hello()->set_size(static_cast<std::uint32_t>(size_));
    if (auto sent = SendFrame(fd_.get(), hello.SerializeAsString(), deadline, "rank 0"); !sent) {
      return sent.error().WithContext(fmt::format("rank {}", rank_));
    }
    return Ok();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::uint16_t port() const override { return port_; }

  Status Put(std::string_view key, std::span<const std::byte> value) override {
    if (failed_) return tl::unexpected(*failed_);
    ROAM_TRY(CheckEntry(key, value));
    pending_.insert_or_assign(std::string(key), std::vector<std::byte>(value.begin(), value.end()));
    return Ok();
  }

  Status Fence(std::chrono::milliseconds timeout) override {
    if (failed_) return tl::unexpected(*failed_);
    const Deadline deadline = DeadlineAfter(timeout);
    Status done = rank_ == 0 ? RootFence(deadline, timeout) : MemberFence(deadline, timeout);
    if (!done) failed_ = done.error();
    return done;
  }

  Result<std::vector<std::byte>> Get(int rank, std::string_view key) const override {
    ROAM_TRY(CheckPeerRank(rank, size_));
    return FindEntry(table_[rank], rank, key, round_);
  }

 private:
  // ---- a rank other than 0

  Status MemberFence(Deadline deadline, std::chrono::milliseconds timeout) {
    bootstrap::Frame arrive;
    arrive.set_version(kWireVersion);
    arrive.mutable_arrive()->set_round(round_);
    AddEntries(pending_, *arrive.mutable_arrive()->mutable_entries());
    const std::string bytes = arrive.SerializeAsString();
    if (bytes.size() > kMaxFrameBytes) {
      return MakeError(Errc::kResourceExhausted,
                       "fence round {}: puts of {} bytes exceed the frame limit of {}", round_,
                       bytes.size(), kMaxFrameBytes);
    }
    if (auto sent = SendFrame(fd_.get(), bytes, deadline, "rank 0"); !sent) {
      // Rank 0 may have refused this rank (and said why) before closing.
      if (auto why = ReceiveFrame(fd_.get(), reader_, Clock::now(), "rank 0"); why) {
        return TakeTable(*why);
      }
      return sent.error().WithContext(fmt::format("fence round {}", round_));
    }
    // Rank 0 names the missing ranks when the round fails; give its verdict
    // a moment to arrive after our own deadline.
    auto received = ReceiveFrame(fd_.get(), reader_, deadline + kBootstrapVerdictGrace, "rank 0");
    if (!received) {
      if (received.error().code() == Errc::kTimeout) {
        return MakeError(Errc::kTimeout, "fence round {}: rank 0 did not complete it within {} ms",
                         round_, timeout.count());
      }
      return received.error().WithContext(fmt::format("fence round {}", round_));
    }
    return TakeTable(*received);
  }

  // The table of this round from rank 0, or its verdict on the round.
  Status TakeTable(std::string_view bytes) {
    auto parsed = ParseFrame(bytes, "rank 0");
    if (!parsed) return parsed.error().WithContext(fmt::format("fence round {}", round_));
    const bootstrap::Frame& frame = *parsed;
    if (frame.has_error()) {
      auto error = DecodeError(frame.error());
      if (!error) return error.error().WithContext("error frame from rank 0");
      return Error(error->code(), error->sys_errno(),
                   fmt::format("rank 0 reports: {}", error->message()));
    }
    if (!frame.has_table()) {
      return MakeError(Errc::kProtocol, "fence round {}: rank 0 sent a {} frame, not the table",
                       round_, BodyName(frame));
    }
    if (frame.table().round() != round_) {
      return MakeError(Errc::kProtocol, "fence round {}: rank 0 sent the table of round {}", round_,
                       frame.table().round());
    }
    std::vector<EntryMap> table(size_);
    for (const bootstrap::RankEntries& ranked : frame.table().ranks()) {
      if (ranked.rank() >= static_cast<std::uint32_t>(size_)) {
        return MakeError(Errc::kCorrupt, "fence round {}: rank 0 sent entries of rank {} (size {})",
                         round_, ranked.rank(), size_);
      }
      ROAM_ASSIGN_OR_RETURN(table[ranked.rank()], TakeEntries(ranked.entries(), "rank 0"));
    }
    table_ = std::move(table);
    pending_.clear();
    ++round_;
    return Ok();
  }

  // ---- rank 0

  Status RootFence(Deadline deadline, std::chrono::milliseconds timeout) {
    for (const auto& peer : peers_) {
      if (peer->lost) return Abort(*peer->lost);
    }
    while (!AllArrived()) {
      if (Clock::now() >= deadline) {
        std::vector<int> missing;
        std::vector<int> unconnected;
        for (int r = 1; r < size_; ++r) {
          if (by_rank_[r] == nullptr) unconnected.push_back(r);
          if (by_rank_[r] == nullptr || !by_rank_[r]->arrived) missing.push_back(r);
        }
        std::string message = fmt::format("fence round {}: {} did not arrive within {} ms", round_,
                                          DescribeRanks(missing), timeout.count());
        if (!unconnected.empty()) {
          message += fmt::format(" ({} never connected)", DescribeRanks(unconnected));
        }
        if (dropped_ > 0) {
          message += fmt::format(" (dropped {} connection(s) that were no rank of this job: {})",
                                 dropped_, last_drop_);
        }
        return Abort(Error(Errc::kTimeout, std::move(message)));
      }
      if (auto served = ServeOnce(deadline); !served) return Abort(served.error());
    }

    for (int r = 1; r < size_; ++r) {
      for (auto& [key, value] : *by_rank_[r]->arrived) table_[r].insert_or_assign(key, value);
    }
    for (auto& [key, value] : pending_) table_[0].insert_or_assign(key, value);
    bootstrap::Frame frame;
    frame.set_version(kWireVersion);
    frame.mutable_table()->set_round(round_);
    for (int r = 0; r < size_; ++r) {
      bootstrap::RankEntries* ranked = frame.mutable_table()->add_ranks();
      ranked->set_rank(static_cast<std::uint32_t>(r));
      ranked->set_round(round_);
      AddEntries(table_[r], *ranked->mutable_entries());
    }
    const std::string bytes = frame.SerializeAsString();
    if (bytes.size() > kMaxFrameBytes) {
      return Abort(MakeError(Errc::kResourceExhausted,
                             "fence round {}: the table of {} bytes exceeds the frame limit of {}",
                             round_, bytes.size(), kMaxFrameBytes));
    }
    // Every rank has arrived, so the round is complete whatever happens to
    // one delivery: a rank that cannot take the table has gone, and the next
    // round fails naming it.
    for (int r = 1; r < size_; ++r) {
      Peer& peer = *by_rank_[r];
      peer.arrived.reset();
      auto sent = SendFrame(peer.fd.get(), bytes, deadline + kBootstrapVerdictGrace, RankName(r));
      if (!sent) {
        peer.lost = Error(Errc::kUnavailable, sent.error().sys_errno(),
                          fmt::format("rank {} left after fence round {}: {}", r, round_,
                                      sent.error().message()));
        peer.fd.reset();
      }
    }
    pending_.clear();
    ++round_;
    return Ok();
  }

  bool AllArrived() const {
    for (int r = 1; r < size_; ++r) {
      if (by_rank_[r] == nullptr || !by_rank_[r]->arrived) return false;
    }
    return true;
  }

  // One poll over the listener and every connection, and what it brings.
  Status ServeOnce(Deadline deadline) {
    std::vector<pollfd> fds;
    fds.reserve(peers_.size() + 1);
    fds.push_back({listener_.fd.get(), POLLIN, 0});
    for (const auto& peer : peers_) fds.push_back({peer->fd.get(), POLLIN, 0});
    // Wake for the first connection that owes a hello, too.
    Deadline wake = deadline;
    for (const auto& peer : peers_) {
      if (peer->rank < 0) wake = std::min(wake, peer->hello_by);
    }
    const int n = ::poll(fds.data(), fds.size(), MillisLeft(wake));
    if (n < 0) {
      if (errno == EINTR) return Ok();
      return ErrnoError(errno, "fence round {}: poll", round_);
    }
    // Peers accepted now are polled next time; fds[i + 1] is peers_[i].
    const std::size_t polled = peers_.size();
    if (n > 0 && (fds[0].revents & POLLIN) != 0) ROAM_TRY(AcceptAll());
    std::vector<bool> drop(peers_.size(), false);
    for (std::size_t i = 0; n > 0 && i < polled; ++i) {
      if (fds[i + 1].revents == 0 || peers_[i]->evicted) continue;
      ROAM_ASSIGN_OR_RETURN(drop[i], ServePeer(*peers_[i]));
    }
    const Deadline now = Clock::now();
    for (std::size_t i = 0; i < peers_.size(); ++i) {
      Peer& peer = *peers_[i];
      if (peer.evicted) {
        drop[i] = true;
      } else if (!drop[i] && peer.rank < 0 && now >= peer.hello_by) {
        drop[i] = Drop(peer, MakeError(Errc::kTimeout, "no hello within {} ms of connecting",
                                       kHelloTimeout.count()));
      }
    }
    for (std::size_t i = peers_.size(); i-- > 0;) {
      if (drop[i]) peers_.erase(peers_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    return Ok();
  }

  Status AcceptAll() {
    for (;;) {
      ROAM_ASSIGN_OR_RETURN(UniqueFd fd, AcceptTcp(listener_.fd.get()));
      if (!fd.valid()) return Ok();
      auto peer = std::make_unique<Peer>();
      peer->fd = std::move(fd);
      peer->hello_by = Clock::now() + kHelloTimeout;
      // Too many waiting: the oldest goes, closed without a word (telling
      // each why costs a drain). Not the newest: a rank says hello at once,
      // so a flood of silent connections cannot keep it out.
      Peer* oldest = nullptr;
      std::size_t waiting = 0;
      for (const auto& p : peers_) {
        if (p->rank >= 0 || p->evicted) continue;
        ++waiting;
        if (oldest == nullptr || p->hello_by < oldest->hello_by) oldest = p.get();
      }
      if (waiting >= kMaxUnidentified) {
        oldest->fd.reset();
        oldest->evicted = true;
        ++dropped_;
        last_drop_ = fmt::format("{} connections were waiting to say which rank they are", waiting);
      }
      peers_.push_back(std::move(peer));
    }
  }

  // Reads what `peer` sent. True: drop this connection (it was no rank of
  // the job). An error: a rank of the job broke the round.
  Result<bool> ServePeer(Peer& peer) {
    const std::string name =
        peer.rank >= 0 ? RankName(peer.rank) : std::string("an unidentified connection");
    auto open = peer.reader.ReadAvailable(peer.fd.get(), name);
    if (!open && peer.rank < 0) return Drop(peer, open.error());
    if (!open) {
      return Error(
          Errc::kUnavailable, open.error().sys_errno(),
          fmt::format("fence round {}: {} is gone: {}", round_, name, open.error().message()));
    }
    for (;;) {
      auto frame = peer.reader.Next(name);
      if (!frame && peer.rank < 0) return Drop(peer, frame.error());
      if (!frame) return frame.error().WithContext(fmt::format("fence round {}", round_));
      if (!*frame) break;
      if (peer.rank < 0) {
        if (auto hello = Introduce(peer, **frame); !hello) return Drop(peer, hello.error());
      } else {
        ROAM_TRY(TakeArrive(peer, **frame));
      }
    }
    if (!*open) {
      if (peer.rank < 0) return true;
      return MakeError(Errc::kUnavailable,
                       "fence round {}: rank {} closed its connection (it exited or died)", round_,
                       peer.rank);
    }
    return false;
  }

  Status Introduce(Peer& peer, std::string_view bytes) {
    ROAM_ASSIGN_OR_RETURN(const bootstrap::Frame frame,
                          ParseFrame(bytes, "an unidentified connection"));
    if (!frame.has_hello()) {
      return MakeError(Errc::kProtocol, "a connection began with a {} frame, not a hello",
                       BodyName(frame));
    }
    const std::uint32_t rank = frame.hello().rank();
    if (frame.hello().size() != static_cast<std::uint32_t>(size_)) {
      return MakeError(Errc::kInvalidArgument,
                       "a connection claiming rank {} of a job of size {} (this job: size {})",
                       rank, frame.hello().size(), size_);
    }
    if (rank == 0 || rank >= static_cast<std::uint32_t>(size_)) {
      return MakeError(Errc::kInvalidArgument, "a connection claiming rank {} (want 1 to {})", rank,
                       size_ - 1);
    }
    if (by_rank_[rank] != nullptr) {
      return MakeError(Errc::kAlreadyExists, "a second connection claiming rank {}", rank);
    }
    peer.rank = static_cast<int>(rank);
    peer.reader.set_max_frame(kMaxFrameBytes);
    by_rank_[rank] = &peer;
    return Ok();
  }

  Status TakeArrive(Peer& peer, std::string_view bytes) {
    const std::string name = RankName(peer.rank);
    auto frame = ParseFrame(bytes, name);
    if (!frame) return frame.error().WithContext(fmt::format("fence round {}", round_));
    if (!frame->has_arrive()) {
      return MakeError(Errc::kProtocol, "fence round {}: {} sent a {} frame, not arrive", round_,
                       name, BodyName(*frame));
    }
    if (frame->arrive().round() != round_ || peer.arrived) {
      return MakeError(Errc::kProtocol, "fence round {}: {} arrived at round {}{}", round_, name,
                       frame->arrive().round(), peer.arrived ? " a second time" : "");
    }
    ROAM_ASSIGN_OR_RETURN(peer.arrived, TakeEntries(frame->arrive().entries(), name));
    return Ok();
  }

  // Drops a connection that is no rank of this job, telling it why.
  bool Drop(Peer& peer, const Error& why) {
    TrySendFrame(peer.fd.get(), ErrorFrame(why));
    ++dropped_;
    last_drop_ = why.ToString();
    return true;
  }

  // Fails the round at rank 0 and tells every rank still connected.
  Error Abort(Error error) {
    const std::string frame = ErrorFrame(error);
    for (const auto& peer : peers_) {
      if (peer->rank > 0 && peer->fd.valid()) TrySendFrame(peer->fd.get(), frame);
    }
    return error;
  }

  const int rank_;
  const int size_;
  const HostPort where_;
  std::uint16_t port_ = 0;

  EntryMap pending_;             // puts since the last round
  std::vector<EntryMap> table_;  // every rank's entries as of the last round
  std::uint64_t round_ = 0;      // rounds completed, the number of the next
  std::optional<Error> failed_;

  // Rank 0.
  Listener listener_;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::vector<Peer*> by_rank_;
  int dropped_ = 0;
  std::string last_drop_;

  // Other ranks.
  UniqueFd fd_;
  FrameReader reader_{kMaxFrameBytes};
};

}  // namespace

Result<std::unique_ptr<TcpBootstrap>> OpenTcpBootstrap(std::string_view rendezvous, int rank,
                                                       int size,
                                                       std::chrono::milliseconds connect_timeout) {
  ROAM_TRY(CheckRankAndSize(rank, size));
  ROAM_ASSIGN_OR_RETURN(HostPort where, ParseHostPort(rendezvous));
  if (rank != 0 && where.port == 0) {
    return MakeError(Errc::kInvalidArgument,
                     "rendezvous '{}' names port 0, which only rank 0 may listen on", rendezvous);
  }
  auto boot = std::make_unique<TcpRendezvous>(rank, size, std::move(where));
  ROAM_TRY(rank == 0 ? boot->ListenAsRoot() : boot->ConnectToRoot(connect_timeout));
  return std::unique_ptr<TcpBootstrap>(std::move(boot));
}

}  // namespace roam::transport
