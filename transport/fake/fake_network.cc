// The fake backend (fake.h): every node of a FakeNetwork is a Fabric in this
// process, and the network is a set of per-node inboxes of messages ordered
// by (delivery time on the network's clock, sequence number). A node's
// Progress() takes the messages that are due, applies them (a put lands, a
// get is read, a request is served) and answers on the reverse link; the
// initiator sees the answer in its own Progress(). Nothing is delivered
// inside the call that sends it, so the progress model is that of UCX tcp.
//
// Lifetime. Messages name endpoints and regions by id, never by pointer: an
// answer for an endpoint that was destroyed, or a put into a region that was
// deregistered, finds no one and is dropped or refused. A node's state lives
// in the network until the network is destroyed, so an object that outlives
// its fabric against the contract still finds its node (closed) instead of
// freed memory. Endpoint state is shared between the Endpoint and whoever is
// running its completions, so a completion may destroy its own endpoint; the
// completions left after that are dropped, never run.
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <unordered_map>

#include <sys/mman.h>
#include <unistd.h>

#include "roam/base/check.h"
#include "roam/base/deadline.h"
#include "roam/transport/fake.h"
#include "transport/requests.h"
#include "transport/wire/wire.h"

namespace roam::transport {
namespace {

using NodeId = std::uint64_t;
using TimePoint = FakeNetwork::Clock::time_point;

constexpr std::string_view kBackend = "fake";
// Address: network id, node id. Key: network id, node id, region id.
constexpr std::size_t kAddressIdBytes = 16;
constexpr std::size_t kKeyIdBytes = 24;

// Distinguishes the networks of one process, so that an address or key from
// another FakeNetwork is refused instead of naming a stranger's node.
std::atomic<std::uint64_t> g_next_network_id{1};

// A vector read from index `head` on: once every element is read it is
// emptied; once the read front is at least `min_dead` elements and half of
// it, that front is erased, so that the vector neither grows without bound
// nor moves its live part on every read.
template <typename T>
void DropFront(std::vector<T>& items, std::size_t& head, std::size_t min_dead) {
  if (head == items.size()) {
    items.clear();
    head = 0;
  } else if (head >= min_dead && head * 2 >= items.size()) {
    items.erase(items.begin(), items.begin() + static_cast<std::ptrdiff_t>(head));
    head = 0;
  }
}

void AppendU64(Bytes& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>(v >> (8 * i)));
}

std::uint64_t ReadU64(ByteView in, std::size_t at) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= static_cast<std::uint64_t>(in[at + static_cast<std::size_t>(i)]) << (8 * i);
  }
  return v;
}

std::size_t PageSize() {
  static const std::size_t page = [] {
    const auto p = ::sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<std::size_t>(p) : std::size_t{4096};
  }();
  return page;
}

// Eight bytes, little-endian, `back` bytes before the end: where the cache
// of decoded addresses and keys looks first. The ids are the last field of
// a fake address and key, so an address this network encoded ends with its
// node id, and a key with its owner's node id and then its region id; the
// cache is a vector indexed by node id: no hash of the bytes, no bucket to
// miss. Any bytes may come here; a hit still compares them in full.
std::uint64_t IdBefore(ByteView bytes, std::size_t back) {
  return bytes.size() < back ? 0 : ReadU64(bytes, bytes.size() - back);
}

// What Connect and UnpackKey decoded and checked before about one node:
// its address (the first encoding seen) and the key of one of its regions
// (the last unpacked), kept in the record itself. A simulated pool of
// 100,000 nodes connects to a random peer and unpacks its board's key for
// every put, and both read one record of two cache lines. Longer
// addresses and keys are not kept.
struct alignas(64) PeerCard {
  static constexpr std::size_t kAddressMax = 45;
  static constexpr std::size_t kKeyMax = 55;

  std::uint8_t address_size = 0;  // 0: no address kept
  std::uint8_t name_at = 0;       // the node's name, within the address
  std::uint8_t name_size = 0;
  std::array<std::byte, kAddressMax> address{};
  std::uint64_t region = 0;  // the key's; 0: no key kept
  std::uint64_t base = 0;
  std::uint64_t length = 0;
  std::uint8_t key_size = 0;
  std::array<std::byte, kKeyMax> key{};

  bool HasAddress(ByteView b) const {
    return address_size != 0 && b.size() == address_size &&
           std::equal(b.begin(), b.end(), address.begin());
  }
  bool HasKey(std::uint64_t id, ByteView b) const {
    return region == id && region != 0 && b.size() == key_size &&
           std::equal(b.begin(), b.end(), key.begin());
  }
  std::string_view name() const {
    return {reinterpret_cast<const char*>(address.data()) + name_at, name_size};
  }
};
static_assert(sizeof(PeerCard) == 128);

// Memory for Fabric::Allocate: zero-filled, faulted in, and not inherited
// by a fork (MADV_DONTFORK). Regions up to kLargestCarved are carved, in
// whole pages, from mappings of kChunkBytes made once, and reused when
// freed: a simulated pool of 100,000 nodes allocates two small regions a
// node, and a mapping each (or a heap block each, which MADV_DONTFORK
// splits into a mapping of its own) would pass vm.max_map_count (65,530
// by default). Larger regions get a mapping each.
class RegionArena {
 public:
  RegionArena() = default;
  RegionArena(const RegionArena&) = delete;
  RegionArena& operator=(const RegionArena&) = delete;
  ~RegionArena() {
    for (const auto& [base, size] : chunks_) ::munmap(base, size);
  }

  // `rounded`: a whole number of pages, not 0.
  Result<std::byte*> Take(std::size_t rounded) {
    std::byte* p = nullptr;
    if (rounded > kLargestCarved) {
      ROAM_ASSIGN_OR_RETURN(p, Map(rounded));
    } else if (auto it = free_.find(rounded); it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
    } else {
      if (left_ < rounded) {
        ROAM_ASSIGN_OR_RETURN(next_, Map(kChunkBytes));
        chunks_.emplace_back(next_, kChunkBytes);
        left_ = kChunkBytes;
      }
      p = next_;
      next_ += rounded;
      left_ -= rounded;
    }
    // Zero (a reused block was written) and fault in, as Fabric::Allocate
    // promises.
    std::memset(p, 0, rounded);
    return p;
  }

  void Give(std::byte* p, std::size_t rounded) {
    if (rounded > kLargestCarved) {
      ::munmap(p, rounded);
    } else {
      free_[rounded].push_back(p);
    }
  }

 private:
  static constexpr std::size_t kChunkBytes = std::size_t{64} << 20;
  static constexpr std::size_t kLargestCarved = std::size_t{1} << 20;

  static Result<std::byte*> Map(std::size_t bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      return MakeError(Errc::kResourceExhausted, "cannot map {} bytes for fake regions: {}", bytes,
                       std::strerror(errno));
    }
    // A fork must not inherit them (Fabric::Allocate).
    (void)::madvise(p, bytes, MADV_DONTFORK);
    // Huge pages where the kernel gives them on request (THP `madvise`
    // mode): a simulated pool puts into boards all over its chunks, and
    // with 4 KiB pages nearly every put misses the TLB.
    (void)::madvise(p, bytes, MADV_HUGEPAGE);
    return static_cast<std::byte*>(p);
  }

  std::vector<std::pair<std::byte*, std::size_t>> chunks_;
  std::byte* next_ = nullptr;  // the current chunk's unused rest
  std::size_t left_ = 0;
  std::unordered_map<std::size_t, std::vector<std::byte*>> free_;  // by size
};

// A message between two nodes.
struct Event {
  enum class Kind : std::uint8_t {
    kPut,       // initiator -> target: `data` for `addr` in `region`
    kPutAck,    // target -> initiator: the put `op` landed, or `error`
    kGet,       // initiator -> target: `length` bytes at `addr` in `region`
    kGetReply,  // target -> initiator: `data` for get `op`, or `error`
    kRequest,   // initiator -> target: `header` and `data`
    kReply,     // target -> initiator: `header` and `data`
  };
  // What few messages carry (an error, a request's or reply's header):
  // apart, so that the puts and acks that make most of the traffic stay
  // small and allocate nothing.
  struct Rare {
    std::optional<Error> error;
    wire::MessageHeader header;
  };

  Kind kind = Kind::kPut;
  NodeId from = 0;
  NodeId to = 0;
  std::uint64_t endpoint = 0;  // the initiator's endpoint: answers go to it
  std::uint64_t op = 0;        // the put or get, in the endpoint's issue order
  std::uint64_t region = 0;
  std::uint64_t addr = 0;
  std::uint64_t length = 0;  // a get's, and a put's read at landing
  // A put's source, read at landing (PutSource::kReadAtLanding); null
  // when `data` holds it.
  const std::byte* src = nullptr;
  Bytes data;
  std::unique_ptr<Rare> rare;

  const std::optional<Error>& error() const {
    static const std::optional<Error> kNone;
    return rare ? rare->error : kNone;
  }
  Rare& MakeRare() {
    if (!rare) rare = std::make_unique<Rare>();
    return *rare;
  }
};

// A completion and the outcome it is to run with, collected while state is
// updated and run afterwards, so that a completion never sees half an update.
using PendingCall = std::pair<Completion, Status>;

// An endpoint's puts and gets, by op number. Numbers are handed out in
// order and an op leaves only from the front, once its completion ran and
// the peer answered: an op is found by subtraction, and an endpoint made for
// a single put (a simulated pool makes one per gossip peer) allocates once,
// not a map and a set node per put.
class OpLog {
 public:
  struct Op {
    std::uint64_t id = 0;
    bool is_get = false;
    bool pending = false;  // its completion (a put's: the local one) has not run
    bool unacked = false;  // not yet complete at the peer
    // Its completion runs when the peer's answer comes: a get's, and a put's
    // read at landing.
    bool completes_at_ack = false;
    Completion done;
    std::span<std::byte> dst;  // a get's
  };

  void Add(std::uint64_t id, bool is_get, bool completes_at_ack, Completion done,
           std::span<std::byte> dst = {}) {
    if (head_ == ops_.size()) {
      ops_.clear();
      head_ = 0;
    }
    ops_.push_back({id, is_get, true, true, completes_at_ack, std::move(done), dst});
    ++pending_;
    ++unacked_;
  }

  // The live op numbered `id`, or null.
  Op* Find(std::uint64_t id) {
    if (head_ == ops_.size() || id < ops_[head_].id) return nullptr;
    const std::uint64_t at = head_ + (id - ops_[head_].id);
    return at < ops_.size() ? &ops_[at] : nullptr;
  }

  // Takes the completion of pending op `op` (the caller runs it).
  Completion TakeDone(Op& op) {
    op.pending = false;
    --pending_;
    Completion done = std::move(op.done);
    op.done = nullptr;
    Trim();
    return done;
  }
  // Leaves `op` in place (Trim drops it once finished).
  void Ack(Op& op) {
    op.unacked = false;
    --unacked_;
  }

  // The lowest op number not yet complete at the peer.
  std::optional<std::uint64_t> FirstUnacked() const {
    if (unacked_ == 0) return std::nullopt;
    for (std::size_t i = head_; i < ops_.size(); ++i) {
      if (ops_[i].unacked) return ops_[i].id;
    }
    return std::nullopt;
  }

  // Every pending completion, the puts' before the gets' (each in issue
  // order); the log is left empty.
  void TakeAll(std::vector<Completion>& out) {
    for (bool gets : {false, true}) {
      for (std::size_t i = head_; i < ops_.size(); ++i) {
        if (ops_[i].pending && ops_[i].is_get == gets) out.push_back(std::move(ops_[i].done));
      }
    }
    Clear();
  }
  void Clear() {
    ops_.clear();
    head_ = 0;
    pending_ = 0;
    unacked_ = 0;
  }

  std::size_t pending() const { return pending_; }
  std::size_t unacked() const { return unacked_; }

  // Drops finished ops from the front; moves the rest down once the dead
  // front is most of the vector.
  void Trim() {
    while (head_ < ops_.size() && !ops_[head_].pending && !ops_[head_].unacked) ++head_;
    DropFront(ops_, head_, 64);
  }

 private:
  std::vector<Op> ops_;
  std::size_t head_ = 0;     // ops_[0, head_) are finished
  std::size_t pending_ = 0;  // ops whose completion has not run
  std::size_t unacked_ = 0;  // ops the peer has not answered
};

// One endpoint's operations, shared by the Endpoint object and the progress
// loop that completes them.
struct EndpointState {
  struct PendingFlush {
    std::uint64_t before = 0;  // waits for every op numbered below this
    Completion done;
    std::optional<Error> error;  // the first op before it that failed
  };

  std::uint64_t id = 0;
  NodeId node = 0;
  NodeId peer = 0;
  std::string peer_name;
  bool closed = false;   // the Endpoint was destroyed: run nothing more
  bool watched = false;  // its EndpointSlot's flag
  std::optional<Error> failure;

  std::uint64_t next_op = 1;
  OpLog ops;
  // Few and short-lived: a vector (a deque allocates when it is made, and
  // an endpoint is made for every gossip peer of a large simulated pool).
  std::vector<PendingFlush> flushes;
  PendingRequests requests;
  // Liveness (FabricOptions::peer_timeout), on the network's clock: answers
  // (acks, get replies, replies) are counted, and Progress notes since when
  // the count has not moved while something waited.
  std::uint64_t answers = 0;
  std::uint64_t answers_seen = 0;
  bool was_waiting = false;
  TimePoint silent_since{};
  bool waiting() const { return ops.unacked() != 0 || requests.size() != 0; }

  // What max_outstanding limits: operations whose completion has not run.
  std::size_t outstanding() const { return ops.pending() + requests.size(); }
};

using EndpointRef = std::shared_ptr<EndpointState>;

// Work a node's next Progress() does for one of its own endpoints, queued by
// the call that started it.
struct ReadyWork {
  enum class Kind : std::uint8_t { kPutDone, kFlushCheck };
  Kind kind = Kind::kPutDone;
  std::uint64_t endpoint = 0;
  std::uint64_t op = 0;
};

// A node's ReadyWork, in the order queued: a vector and the index of the
// first not yet taken (a deque allocates when it is made, and a simulated
// pool has a node's worth of them for each of its 100,000 nodes).
class ReadyQueue {
 public:
  bool empty() const { return head_ == items_.size(); }
  std::size_t size() const { return items_.size() - head_; }
  void push_back(const ReadyWork& work) { items_.push_back(work); }
  ReadyWork pop_front() {
    const ReadyWork work = items_[head_++];
    if (head_ == items_.size()) {
      clear();
    } else if (head_ >= 64 && head_ * 2 >= items_.size()) {
      items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
      head_ = 0;
    }
    return work;
  }
  void clear() {
    items_.clear();
    head_ = 0;
  }

 private:
  std::vector<ReadyWork> items_;
  std::size_t head_ = 0;
};

// A message on the wire to a node, due at `at`; ties in send order.
struct Queued {
  TimePoint at{};
  std::uint64_t seq = 0;
  Event ev;
};

// For a min-heap of Queued by (at, seq).
struct LaterFirst {
  bool operator()(const Queued& a, const Queued& b) const {
    return a.at != b.at ? a.at > b.at : a.seq > b.seq;
  }
};

// The messages to one node, taken in delivery order: by (due time,
// network-wide sequence number). Most come in that order (a link without a
// delay is due at once, on a clock that does not go back, and sequence
// numbers only grow), and those queue in a FIFO: no sifting through a heap,
// no look at an older message. One due before the last in the FIFO (sent on
// a delayed link, say) goes to a heap; the front is the earlier of the two
// fronts. Neither allocates per message once grown.
class Inbox {
 public:
  bool empty() const { return head_ == fifo_.size() && late_.empty(); }
  std::size_t size() const { return fifo_.size() - head_ + late_.size(); }

  void Push(TimePoint at, std::uint64_t seq, Event&& ev) {
    if (head_ == fifo_.size() || at >= last_at_) {
      if (head_ == fifo_.size()) {
        fifo_.clear();
        head_ = 0;
      }
      last_at_ = at;
      fifo_.push_back({at, seq, std::move(ev)});
    } else {
      late_.push_back({at, seq, std::move(ev)});
      std::push_heap(late_.begin(), late_.end(), LaterFirst{});
    }
  }

  // The next message; the inbox must not be empty.
  const Queued& Front() const { return *FrontPlace(); }

  Event PopFront() {
    const Queued* front = FrontPlace();
    if (head_ != fifo_.size() && front == &fifo_[head_]) {
      Event ev = std::move(fifo_[head_].ev);
      ++head_;
      DropFront(fifo_, head_, 1024);
      return ev;
    }
    std::pop_heap(late_.begin(), late_.end(), LaterFirst{});
    Event ev = std::move(late_.back().ev);
    late_.pop_back();
    return ev;
  }

  // Calls `visit` on every message, in no particular order.
  template <typename F>
  void ForEach(F visit) {
    for (std::size_t i = head_; i < fifo_.size(); ++i) visit(fifo_[i]);
    for (Queued& q : late_) visit(q);
  }

  // Drops the messages `lost` says; returns how many.
  template <typename Pred>
  std::size_t EraseIf(Pred lost) {
    fifo_.erase(fifo_.begin(), fifo_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
    std::size_t n = std::erase_if(fifo_, lost);
    if (const std::size_t m = std::erase_if(late_, lost); m != 0) {
      std::make_heap(late_.begin(), late_.end(), LaterFirst{});
      n += m;
    }
    return n;
  }

 private:
  const Queued* FrontPlace() const {
    const Queued* fifo = head_ != fifo_.size() ? &fifo_[head_] : nullptr;
    if (late_.empty()) return fifo;
    if (fifo == nullptr || LaterFirst{}(*fifo, late_.front())) return &late_.front();
    return fifo;
  }

  std::vector<Queued> fifo_;  // [head_, end) in delivery order
  std::size_t head_ = 0;
  TimePoint last_at_{};       // due time of fifo_.back()
  std::vector<Queued> late_;  // a heap by LaterFirst
};

// A node's endpoint, with what its Progress needs to know without touching
// the endpoint's state (one cache miss per endpoint per Progress, in a pool
// of 100,000 nodes that keeps 8 endpoints each).
struct EndpointSlot {
  std::uint64_t id = 0;
  EndpointRef ep;
  // The endpoint may wait on its peer or on a request deadline: Progress
  // checks its liveness. Clear only while !was_waiting, !waiting() and no
  // request is pending (EndpointState::watched mirrors it).
  bool watched = false;
};

struct Node {
  NodeId id = 0;
  std::string name;
  std::size_t max_outstanding = 0;
  std::chrono::milliseconds peer_timeout{0};
  bool killed = false;
  bool closed = false;  // its Fabric was destroyed

  RequestRouter router;
  // By id, ascending (ids are handed out in order): a node has a few.
  std::vector<std::pair<std::uint64_t, std::span<std::byte>>> regions;
  // By id, ascending (ids are handed out in order): a flat map, since a
  // node keeps few endpoints and a simulated pool makes and drops one per
  // gossip peer.
  std::vector<EndpointSlot> endpoints;
  ReadyQueue ready;
  // The network's fault epoch this node's endpoints were last checked at.
  std::uint64_t fault_epoch_seen = 0;
};

// A directed link's faults and the time its last message is due, which the
// next one may not precede (delivery stays FIFO when the delay shrinks).
struct Link {
  FakeNetwork::LinkFaults faults;
  TimePoint last_delivery{};
};

EndpointSlot* FindSlot(Node& n, std::uint64_t id) {
  auto it =
      std::lower_bound(n.endpoints.begin(), n.endpoints.end(), id,
                       [](const EndpointSlot& slot, std::uint64_t key) { return slot.id < key; });
  return it != n.endpoints.end() && it->id == id ? &*it : nullptr;
}

EndpointRef* FindEndpoint(Node& n, std::uint64_t id) {
  EndpointSlot* slot = FindSlot(n, id);
  return slot != nullptr ? &slot->ep : nullptr;
}

// Marks `ep` for Progress's liveness checks: it has just started to wait.
void Watch(Node& n, EndpointState& ep) {
  if (ep.watched) return;
  if (EndpointSlot* slot = FindSlot(n, ep.id)) {
    slot->watched = true;
    ep.watched = true;
  }
}

void RunCalls(const EndpointState& ep, std::vector<PendingCall>& calls) {
  for (auto& [done, status] : calls) {
    if (ep.closed) return;
    if (done) done(std::move(status));
  }
}

std::vector<EndpointRef> EndpointsOf(const Node& node) {
  std::vector<EndpointRef> out;
  out.reserve(node.endpoints.size());
  for (const EndpointSlot& slot : node.endpoints) out.push_back(slot.ep);
  return out;
}

// The bytes `ev` addresses in one of `n`'s regions. Checked again here: the
// key's bounds came from the peer, the region's are the truth.
Result<std::span<std::byte>> RegionRange(const Node& n, const Event& ev, std::uint64_t length) {
  auto it =
      std::lower_bound(n.regions.begin(), n.regions.end(), ev.region,
                       [](const auto& entry, std::uint64_t key) { return entry.first < key; });
  if (it == n.regions.end() || it->first != ev.region) {
    return MakeError(Errc::kInvalidArgument,
                     "region {} of node {} is gone (destroyed before the operation arrived)",
                     ev.region, n.name);
  }
  const std::span<std::byte> memory = it->second;
  const auto base = reinterpret_cast<std::uintptr_t>(memory.data());
  if (ev.addr < base || ev.addr - base > memory.size() ||
      length > memory.size() - (ev.addr - base)) {
    return MakeError(Errc::kInvalidArgument, "{} bytes at {:#x} lie outside region {} of node {}",
                     length, ev.addr, ev.region, n.name);
  }
  return memory.subspan(ev.addr - base, length);
}

Status WriteRegion(const Node& n, const Event& ev) {
  const std::byte* from = ev.src != nullptr ? ev.src : ev.data.data();
  const std::size_t size = ev.src != nullptr ? ev.length : ev.data.size();
  ROAM_ASSIGN_OR_RETURN(std::span<std::byte> target, RegionRange(n, ev, size));
  if (size != 0) std::memcpy(target.data(), from, size);
  return Ok();
}

Result<Bytes> ReadRegion(const Node& n, const Event& ev) {
  ROAM_ASSIGN_OR_RETURN(std::span<std::byte> source, RegionRange(n, ev, ev.length));
  return Bytes(source.begin(), source.end());
}

// Runs the flushes that no earlier put or get holds up any more, in order.
unsigned CompleteFlushes(const EndpointRef& ep) {
  std::vector<PendingCall> calls;
  const std::optional<std::uint64_t> first_unacked = ep->ops.FirstUnacked();
  while (!ep->flushes.empty()) {
    EndpointState::PendingFlush& flush = ep->flushes.front();
    if (first_unacked && *first_unacked < flush.before) break;
    Status status = Ok();
    if (flush.error) status = *flush.error;
    calls.emplace_back(std::move(flush.done), std::move(status));
    ep->flushes.erase(ep->flushes.begin());
  }
  RunCalls(*ep, calls);
  return static_cast<unsigned>(calls.size());
}

// Copies into their messages the sources of `ep`'s puts that are still on
// the wire and read at landing, before their completions hand the sources
// back: they land later as they would have (FakeNetwork::Impl).
void KeepPutsOnWire(FakeNetwork::Impl& net, const EndpointState& ep);

// Breaks `ep` for good: everything pending on it completes with `error`.
unsigned Fail(FakeNetwork::Impl& net, const EndpointRef& ep, const Error& error) {
  KeepPutsOnWire(net, *ep);
  ep->failure = error;
  std::vector<Completion> ops;
  ep->ops.TakeAll(ops);
  std::vector<PendingCall> calls;
  for (Completion& done : ops) calls.emplace_back(std::move(done), error);
  for (auto& flush : ep->flushes) calls.emplace_back(std::move(flush.done), error);
  ep->flushes.clear();
  RunCalls(*ep, calls);
  auto handled = static_cast<unsigned>(calls.size());
  if (!ep->closed) handled += ep->requests.FailAll(error);
  return handled;
}

// Fails `ep` if it has waited on its peer for `timeout` without an answer.
unsigned CheckLiveness(FakeNetwork::Impl& net, const EndpointRef& ep,
                       std::chrono::milliseconds timeout, TimePoint now) {
  if (ep->closed || ep->failure || !ep->waiting()) {
    ep->was_waiting = false;
    return 0;
  }
  if (!ep->was_waiting || ep->answers != ep->answers_seen) {
    ep->was_waiting = true;
    ep->answers_seen = ep->answers;
    ep->silent_since = now;
    return 0;
  }
  const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(now - ep->silent_since);
  if (silent < timeout) return 0;
  return Fail(net, ep,
              MakeError(Errc::kUnavailable, "lost peer {}: no answer for {} ms", ep->peer_name,
                        silent.count()));
}

// A put's local completion, or a flush that may have nothing to wait for.
unsigned RunReady(Node& n, const ReadyWork& work) {
  const EndpointRef* found = FindEndpoint(n, work.endpoint);
  if (found == nullptr) return 0;
  const EndpointRef ep = *found;  // a completion may destroy the Endpoint
  if (work.kind == ReadyWork::Kind::kFlushCheck) return CompleteFlushes(ep);
  OpLog::Op* put = ep->ops.Find(work.op);
  if (put == nullptr || !put->pending) return 0;  // failed meanwhile
  Completion done = ep->ops.TakeDone(*put);
  if (done) done(Ok());
  return 1;
}

// A put's ack or a get's data is back at the initiator.
void OpDone(Node& n, const Event& ev) {
  const EndpointRef* found = FindEndpoint(n, ev.endpoint);
  if (found == nullptr) return;  // the initiator is gone
  const EndpointRef ep = *found;
  OpLog::Op* op = ep->failure ? nullptr : ep->ops.Find(ev.op);
  if (op == nullptr || !op->unacked) return;  // already failed
  const bool is_get = op->is_get;
  const bool run_done = op->completes_at_ack && op->pending;
  std::span<std::byte> dst = op->dst;
  // An op whose completion runs now keeps its entry until it is taken below.
  if (!run_done) {
    ep->ops.Ack(*op);
    ep->ops.Trim();
  }
  ++ep->answers;
  const std::optional<Error>& error = ev.error();
  if (error) {
    for (EndpointState::PendingFlush& flush : ep->flushes) {
      if (flush.before > ev.op && !flush.error) flush.error = error;
    }
  }
  if (run_done) {
    Status status = Ok();
    if (error) {
      status = *error;
    } else if (!is_get) {
      // A put read at landing: done when it landed.
    } else if (ev.data.size() != dst.size()) {
      status =
          MakeError(Errc::kInternal, "get answered {} bytes for {}", ev.data.size(), dst.size());
    } else if (!ev.data.empty()) {
      std::memcpy(dst.data(), ev.data.data(), ev.data.size());
    }
    std::vector<PendingCall> calls;
    ep->ops.Ack(*op);
    calls.emplace_back(ep->ops.TakeDone(*op), std::move(status));
    RunCalls(*ep, calls);
    if (ep->closed) return;
  }
  CompleteFlushes(ep);
}

}  // namespace

class FakeNetwork::Impl {
 public:
  explicit Impl(Options options)
      : network_id_(g_next_network_id.fetch_add(1, std::memory_order_relaxed)),
        now_(options.now ? std::move(options.now) : [] { return Clock::now(); }),
        put_source_(options.put_source),
        rng_(options.seed) {}

  // FakeNetwork's operations.
  Result<std::unique_ptr<Fabric>> AddNode(const FabricOptions& options);
  Status SetFaults(std::string_view from, std::string_view to, LinkFaults faults);
  Status Disconnect(std::string_view a, std::string_view b);
  Status Kill(std::string_view name);
  std::size_t in_flight() const;

  // For the fabrics, endpoints and regions.
  TimePoint now() const { return now_(); }
  std::uint64_t network_id() const { return network_id_; }
  PutSource put_source() const { return put_source_; }
  void KeepPutsOnWire(const EndpointState& ep);
  Node& node(NodeId id) { return *nodes_.at(id); }
  // The node with `id`, or null for an id never handed out.
  const Node* Lookup(NodeId id) const { return id < nodes_.size() ? nodes_[id].get() : nullptr; }
  std::string NodeName(NodeId id) const;
  Bytes NodeAddress(NodeId id) const;
  Result<std::unique_ptr<Endpoint>> Connect(NodeId self, ByteView address);
  // A packed key's fields.
  struct KeyIds {
    std::uint64_t base = 0;
    std::uint64_t length = 0;
    std::uint64_t network = 0;
    NodeId owner = 0;
    std::uint64_t region = 0;
  };
  Result<KeyIds> DecodeKey(ByteView packed);
  std::unique_ptr<Endpoint> NewEndpoint(NodeId self, NodeId peer, std::string_view name);
  Result<std::unique_ptr<MemoryRegion>> AddRegion(NodeId node_id, std::span<std::byte> memory,
                                                  bool owned);
  void RemoveRegion(NodeId node_id, std::uint64_t region);
  RegionArena& arena() { return arena_; }
  // Buffers for the data of puts, kept when a put has landed: a put does
  // not allocate once a few are kept.
  Bytes TakeBuffer() {
    if (spare_buffers_.empty()) return {};
    Bytes b = std::move(spare_buffers_.back());
    spare_buffers_.pop_back();
    return b;
  }
  void KeepBuffer(Bytes b) {
    if (spare_buffers_.size() < kSpareBuffers && b.capacity() != 0) {
      b.clear();
      spare_buffers_.push_back(std::move(b));
    }
  }
  void CloseEndpoint(EndpointState& ep);
  void CloseNode(NodeId id);
  // Why `self` and `peer` cannot talk, or nullopt while they can.
  std::optional<std::string> BreakReason(NodeId self, NodeId peer) const;
  // Puts `ev` on the wire (or loses it: a broken link, a drop).
  void Send(Event&& ev);
  void QueueReady(NodeId node_id, ReadyWork work) { node(node_id).ready.push_back(work); }
  unsigned Progress(NodeId id);
  bool Arm(NodeId id);

 private:
  Result<NodeId> Find(std::string_view name) const;
  double Draw() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }
  void FaultsChanged();
  // Moves what was sent into the inboxes, in send order.
  void Distribute();
  unsigned FailBrokenEndpoints(Node& n);
  void Deliver(Node& n, Event& ev);

  const std::uint64_t network_id_;
  const std::function<TimePoint()> now_;
  const PutSource put_source_;
  std::mt19937_64 rng_;
  std::uint64_t next_node_id_ = 1;
  std::uint64_t next_endpoint_id_ = 1;
  std::uint64_t next_region_id_ = 1;
  std::uint64_t next_seq_ = 1;
  // Bumped by every Kill, Disconnect and closed fabric: nodes re-check their
  // endpoints in their next Progress.
  std::uint64_t fault_epoch_ = 0;
  // By id, which are handed out in order from 1 (slot 0 stays empty): a
  // lookup per message stays cheap in a network of 100,000 nodes.
  std::vector<std::unique_ptr<Node>> nodes_ = std::vector<std::unique_ptr<Node>>(1);
  std::map<std::string, NodeId, std::less<>> names_;  // nodes whose fabric is open
  std::map<std::pair<NodeId, NodeId>, Link> links_;
  std::set<std::pair<NodeId, NodeId>> disconnected_;  // (lower id, higher id)
  // Messages to each node, by id (as nodes_): apart from the nodes, so that
  // a send touches the target's inbox and not its node too.
  std::vector<Inbox> inboxes_ = std::vector<Inbox>(1);
  // Messages sent and not yet in their inboxes, in send order. Send only
  // appends here; Distribute moves them into their inboxes before anything
  // looks at one (Progress, Arm, faults; in_flight counts both). In a
  // large pool each inbox is a miss: pushed in a loop of their own, the
  // misses overlap, where a push at each send waited for its own.
  std::vector<Queued> sent_;
  std::size_t queued_ = 0;  // messages in all inboxes
  // By node id: killed or closed (BreakReason's common case without
  // touching either node).
  std::vector<std::uint8_t> down_ = std::vector<std::uint8_t>(1, 0);
  std::vector<PeerCard> cards_;  // by node id (IdBefore)
  // As many as a tick of a simulated pool of 100,000 nodes has in flight
  // (400,000 puts), so that its puts allocate nothing in steady state.
  static constexpr std::size_t kSpareBuffers = std::size_t{1} << 20;
  std::vector<Bytes> spare_buffers_;
  std::vector<std::uint64_t> endpoint_ids_;  // Progress's scratch
  RegionArena arena_;
};

namespace {

class FakeRemoteKey final : public RemoteKey {
 public:
  FakeRemoteKey(std::uint64_t base, std::uint64_t length, std::uint64_t region,
                std::uint64_t endpoint)
      : base_(base), length_(length), region_(region), endpoint_(endpoint) {}
  std::uint64_t base() const override { return base_; }
  std::uint64_t length() const override { return length_; }
  std::uint64_t region() const { return region_; }
  std::uint64_t endpoint() const { return endpoint_; }

 private:
  std::uint64_t base_;
  std::uint64_t length_;
  std::uint64_t region_;
  std::uint64_t endpoint_;  // the one that unpacked it: usable only there
};

class FakeRegion final : public MemoryRegion {
 public:
  FakeRegion(FakeNetwork::Impl& net, NodeId node, std::uint64_t id, std::span<std::byte> memory,
             bool owned)
      : net_(net), node_(node), id_(id), memory_(memory), owned_(owned) {}
  // Deregisters first: a put that arrives later is refused, never written.
  ~FakeRegion() override {
    net_.RemoveRegion(node_, id_);
    if (owned_) {
      const std::size_t page = PageSize();
      net_.arena().Give(memory_.data(), (memory_.size() + page - 1) / page * page);
    }
  }
  FakeRegion(const FakeRegion&) = delete;
  FakeRegion& operator=(const FakeRegion&) = delete;

  std::byte* data() const override { return memory_.data(); }
  std::size_t size() const override { return memory_.size(); }
  Result<Bytes> PackKey() const override {
    Bytes ids;
    AppendU64(ids, net_.network_id());
    AppendU64(ids, node_);
    AppendU64(ids, id_);
    return wire::EncodeKey(kBackend, reinterpret_cast<std::uintptr_t>(memory_.data()),
                           memory_.size(), ids);
  }

 private:
  FakeNetwork::Impl& net_;
  NodeId node_;
  std::uint64_t id_;
  std::span<std::byte> memory_;
  bool owned_;  // allocated from the network's arena, not registered
};

class FakeEndpoint final : public Endpoint {
 public:
  FakeEndpoint(FakeNetwork::Impl& net, EndpointRef state) : net_(net), state_(std::move(state)) {}
  ~FakeEndpoint() override { net_.CloseEndpoint(*state_); }
  FakeEndpoint(const FakeEndpoint&) = delete;
  FakeEndpoint& operator=(const FakeEndpoint&) = delete;

  const std::string& peer() const override { return state_->peer_name; }
  Status status() const override {
    if (state_->failure) return *state_->failure;
    return Ok();
  }

  Result<std::unique_ptr<RemoteKey>> UnpackKey(ByteView packed) override {
    ROAM_ASSIGN_OR_RETURN(const FakeNetwork::Impl::KeyIds ids, net_.DecodeKey(packed));
    const FakeNetwork::Impl::KeyIds* key = &ids;
    if (key->network != net_.network_id()) {
      return MakeError(Errc::kInvalidArgument, "key belongs to another fake network, not to {}'s",
                       state_->peer_name);
    }
    if (key->owner != state_->peer) {
      return MakeError(Errc::kInvalidArgument, "key belongs to node {}, not {}",
                       net_.NodeName(key->owner), state_->peer_name);
    }
    return std::make_unique<FakeRemoteKey>(key->base, key->length, key->region, state_->id);
  }

  Status Put(ByteView src, std::uint64_t remote_addr, const RemoteKey& key,
             Completion done) override {
    if (src.data() == nullptr && !src.empty()) {
      return MakeError(Errc::kInvalidArgument, "put of {} bytes from a null buffer", src.size());
    }
    ROAM_ASSIGN_OR_RETURN(const FakeRemoteKey* fake_key, CheckOp(key, remote_addr, src.size()));
    const std::uint64_t op = state_->next_op++;
    const bool at_landing = net_.put_source() == FakeNetwork::PutSource::kReadAtLanding;
    state_->ops.Add(op, /*is_get=*/false, /*completes_at_ack=*/at_landing, std::move(done));
    Watch(net_.node(state_->node), *state_);
    Event ev = NewEvent(Event::Kind::kPut, op);
    ev.region = fake_key->region();
    ev.addr = remote_addr;
    if (at_landing) {
      // Read where it lands; the completion comes with the ack.
      ev.src = src.data();
      ev.length = src.size();
      net_.Send(std::move(ev));
      return Ok();
    }
    // Copied now: `src` is the caller's again as soon as this returns, and
    // the local completion says so at the next Progress.
    ev.data = net_.TakeBuffer();
    ev.data.assign(src.begin(), src.end());
    net_.Send(std::move(ev));
    net_.QueueReady(state_->node, {ReadyWork::Kind::kPutDone, state_->id, op});
    return Ok();
  }

  Status Get(std::span<std::byte> dst, std::uint64_t remote_addr, const RemoteKey& key,
             Completion done) override {
    if (dst.data() == nullptr && !dst.empty()) {
      return MakeError(Errc::kInvalidArgument, "get of {} bytes into a null buffer", dst.size());
    }
    ROAM_ASSIGN_OR_RETURN(const FakeRemoteKey* fake_key, CheckOp(key, remote_addr, dst.size()));
    const std::uint64_t op = state_->next_op++;
    state_->ops.Add(op, /*is_get=*/true, /*completes_at_ack=*/true, std::move(done), dst);
    Watch(net_.node(state_->node), *state_);
    Event ev = NewEvent(Event::Kind::kGet, op);
    ev.region = fake_key->region();
    ev.addr = remote_addr;
    ev.length = dst.size();
    net_.Send(std::move(ev));
    return Ok();
  }

  // Delivery is FIFO per link, so every fence holds already.
  Status Fence() override { return Usable(); }

  Status Flush(Completion done) override {
    ROAM_TRY(Usable());
    state_->flushes.push_back({state_->next_op, std::move(done), std::nullopt});
    // With nothing before it in flight it completes at the next Progress.
    net_.QueueReady(state_->node, {ReadyWork::Kind::kFlushCheck, state_->id, 0});
    return Ok();
  }

  Status Request(std::uint16_t tag, ByteView payload, std::chrono::milliseconds timeout,
                 ReplyHandler on_reply) override {
    ROAM_TRY(CheckMessageSize(payload.size()));
    ROAM_TRY(Usable());
    ROAM_TRY(CheckOutstanding());
    // The handler lives inside the state's PendingRequests, so the raw
    // pointer cannot outlive the state; `closed` stops a reply, a timeout or
    // a failure from reaching a caller who destroyed the endpoint.
    const EndpointState* state = state_.get();
    const std::uint64_t id =
        state_->requests.Add(DeadlineAfter<FakeNetwork::Clock>(net_.now(), timeout),
                             [state, on_reply = std::move(on_reply)](Result<Bytes> reply) {
                               if (!state->closed && on_reply) on_reply(std::move(reply));
                             });
    Watch(net_.node(state_->node), *state_);
    Event ev = NewEvent(Event::Kind::kRequest, 0);
    ev.MakeRare().header = {wire::MessageKind::kRequest, tag, id};
    ev.data.assign(payload.begin(), payload.end());
    net_.Send(std::move(ev));
    return Ok();
  }

 private:
  Event NewEvent(Event::Kind kind, std::uint64_t op) const {
    Event ev;
    ev.kind = kind;
    ev.from = state_->node;
    ev.to = state_->peer;
    ev.endpoint = state_->id;
    ev.op = op;
    return ev;
  }

  Status Usable() const {
    if (state_->failure) return *state_->failure;
    if (net_.node(state_->node).closed) {
      return MakeError(Errc::kUnavailable, "endpoint to {} outlived its fabric", state_->peer_name);
    }
    return Ok();
  }

  Status CheckOutstanding() const {
    const std::size_t limit = net_.node(state_->node).max_outstanding;
    if (state_->outstanding() >= limit) {
      return MakeError(Errc::kResourceExhausted,
                       "{} operations in flight to {} (the limit): progress, then retry",
                       state_->outstanding(), state_->peer_name);
    }
    return Ok();
  }

  Result<const FakeRemoteKey*> CheckOp(const RemoteKey& key, std::uint64_t addr,
                                       std::size_t len) const {
    const auto* fake_key = dynamic_cast<const FakeRemoteKey*>(&key);
    if (fake_key == nullptr || fake_key->endpoint() != state_->id) {
      return MakeError(Errc::kInvalidArgument,
                       "foreign key: it was not unpacked on this endpoint to {}",
                       state_->peer_name);
    }
    ROAM_TRY(wire::CheckRange(key, addr, len, state_->peer_name));
    ROAM_TRY(Usable());
    ROAM_TRY(CheckOutstanding());
    return fake_key;
  }

  FakeNetwork::Impl& net_;
  EndpointRef state_;
};

class FakeFabric final : public Fabric {
 public:
  FakeFabric(FakeNetwork::Impl& net, NodeId id, std::string name)
      : net_(net), id_(id), name_(std::move(name)) {}
  ~FakeFabric() override { net_.CloseNode(id_); }
  FakeFabric(const FakeFabric&) = delete;
  FakeFabric& operator=(const FakeFabric&) = delete;

  std::string_view backend() const override { return kBackend; }
  Capabilities capabilities() const override {
    return {Capability::kFaultInjection, Capability::kDeterministic};
  }
  const std::string& name() const override { return name_; }

  Result<Bytes> Address() const override {
    return wire::EncodeAddress(kBackend, name_, net_.NodeAddress(id_));
  }
  Result<std::unique_ptr<Endpoint>> Connect(ByteView peer_address) override {
    return net_.Connect(id_, peer_address);
  }

  Result<std::unique_ptr<MemoryRegion>> Allocate(std::size_t bytes) override {
    if (bytes == 0) return MakeError(Errc::kInvalidArgument, "cannot allocate an empty region");
    const std::size_t page = PageSize();
    if (bytes > std::numeric_limits<std::size_t>::max() - page) {
      return MakeError(Errc::kResourceExhausted, "cannot allocate a region of {} bytes", bytes);
    }
    // Whole pages, as UCX and verbs register them.
    const std::size_t rounded = (bytes + page - 1) / page * page;
    ROAM_ASSIGN_OR_RETURN(std::byte * memory, net_.arena().Take(rounded));
    return net_.AddRegion(id_, std::span<std::byte>(memory, bytes), /*owned=*/true);
  }

  Result<std::unique_ptr<MemoryRegion>> Register(std::span<std::byte> memory) override {
    if (memory.empty() || memory.data() == nullptr) {
      return MakeError(Errc::kInvalidArgument, "cannot register an empty region");
    }
    return net_.AddRegion(id_, memory, /*owned=*/false);
  }

  void Handle(std::uint16_t tag, RequestHandler handler) override {
    net_.node(id_).router.Handle(tag, std::move(handler));
  }

  unsigned Progress() override { return net_.Progress(id_); }
  int event_fd() const override { return -1; }
  bool Arm() override { return net_.Arm(id_); }

 private:
  FakeNetwork::Impl& net_;
  NodeId id_;
  std::string name_;
};

}  // namespace

Result<std::unique_ptr<Fabric>> FakeNetwork::Impl::AddNode(const FabricOptions& options) {
  if (options.name.empty()) return MakeError(Errc::kInvalidArgument, "a fake node needs a name");
  if (options.max_outstanding == 0) {
    return MakeError(Errc::kInvalidArgument, "node {}: max_outstanding must be at least 1",
                     options.name);
  }
  if (names_.contains(options.name)) {
    return MakeError(Errc::kAlreadyExists, "a node named {} is already in this fake network",
                     options.name);
  }
  const NodeId id = next_node_id_++;
  auto n = std::make_unique<Node>();
  n->id = id;
  n->name = options.name;
  n->max_outstanding = options.max_outstanding;
  n->peer_timeout = options.peer_timeout;
  n->fault_epoch_seen = fault_epoch_;
  nodes_.push_back(std::move(n));
  inboxes_.emplace_back();
  down_.push_back(0);
  names_.emplace(options.name, id);
  return std::make_unique<FakeFabric>(*this, id, options.name);
}

Result<NodeId> FakeNetwork::Impl::Find(std::string_view name) const {
  auto it = names_.find(name);
  if (it == names_.end()) {
    return MakeError(Errc::kNotFound, "no node {} in this fake network", name);
  }
  return it->second;
}

Status FakeNetwork::Impl::SetFaults(std::string_view from, std::string_view to, LinkFaults faults) {
  ROAM_ASSIGN_OR_RETURN(const NodeId a, Find(from));
  ROAM_ASSIGN_OR_RETURN(const NodeId b, Find(to));
  if (!(faults.drop >= 0.0 && faults.drop <= 1.0)) {  // NaN fails both
    return MakeError(Errc::kInvalidArgument, "drop probability {} is outside [0, 1]", faults.drop);
  }
  if (faults.delay.count() < 0) {
    return MakeError(Errc::kInvalidArgument, "negative delay {} us", faults.delay.count());
  }
  links_[{a, b}].faults = faults;
  return Ok();
}

Status FakeNetwork::Impl::Disconnect(std::string_view a, std::string_view b) {
  ROAM_ASSIGN_OR_RETURN(const NodeId x, Find(a));
  ROAM_ASSIGN_OR_RETURN(const NodeId y, Find(b));
  disconnected_.insert(std::minmax(x, y));
  FaultsChanged();
  return Ok();
}

Status FakeNetwork::Impl::Kill(std::string_view name) {
  ROAM_ASSIGN_OR_RETURN(const NodeId id, Find(name));
  Node& n = node(id);
  n.killed = true;
  down_[id] = 1;
  FaultsChanged();
  return Ok();
}

void FakeNetwork::Impl::FaultsChanged() {
  ++fault_epoch_;
  // What is on a broken link is lost with it (Deliver would drop it anyway;
  // dropping it now keeps in_flight() honest). With nothing on the wire
  // there is nothing to look at: closing every fabric of a large network
  // after a quiet moment stays linear in its size.
  if (queued_ == 0) return;
  Distribute();
  for (Inbox& inbox : inboxes_) {
    if (inbox.empty()) continue;
    queued_ -= inbox.EraseIf(
        [this](const Queued& q) { return BreakReason(q.ev.from, q.ev.to).has_value(); });
  }
}

std::size_t FakeNetwork::Impl::in_flight() const {
  std::size_t total = sent_.size();
  for (const Inbox& inbox : inboxes_) total += inbox.size();
  return total;
}

std::string FakeNetwork::Impl::NodeName(NodeId id) const {
  const Node* n = Lookup(id);
  if (n == nullptr) return fmt::format("#{}", id);
  return n->name;
}

Bytes FakeNetwork::Impl::NodeAddress(NodeId id) const {
  Bytes out;
  AppendU64(out, network_id_);
  AppendU64(out, id);
  return out;
}

std::optional<std::string> FakeNetwork::Impl::BreakReason(NodeId self, NodeId peer) const {
  if (down_.at(self) == 0 && down_.at(peer) == 0 && disconnected_.empty()) return std::nullopt;
  const Node& s = *nodes_.at(self);
  const Node& p = *nodes_.at(peer);
  if (p.killed) return "killed";
  if (s.killed) return fmt::format("{} was killed", s.name);
  if (!disconnected_.empty() && disconnected_.contains(std::minmax(self, peer))) {
    return "disconnected";
  }
  if (p.closed) return "its fabric was closed";
  if (s.closed) return fmt::format("the fabric of {} was closed", s.name);
  return std::nullopt;
}

Result<std::unique_ptr<Endpoint>> FakeNetwork::Impl::Connect(NodeId self, ByteView address) {
  const std::uint64_t tail = IdBefore(address, 8);
  if (tail != 0 && tail < cards_.size() && cards_[tail].HasAddress(address)) {
    const PeerCard& card = cards_[tail];
    if (auto reason = BreakReason(self, tail)) {
      return MakeError(Errc::kUnavailable, "node {} is unreachable: {}", card.name(), *reason);
    }
    return NewEndpoint(self, tail, card.name());
  }
  ROAM_ASSIGN_OR_RETURN(wire::DecodedAddress decoded, wire::DecodeAddress(address, kBackend));
  if (decoded.backend_address.size() != kAddressIdBytes) {
    return MakeError(Errc::kCorrupt, "fake address of {} holds {} bytes of ids, not {}",
                     decoded.name, decoded.backend_address.size(), kAddressIdBytes);
  }
  if (ReadU64(decoded.backend_address, 0) != network_id_) {
    return MakeError(Errc::kNotFound, "{} is a node of another fake network", decoded.name);
  }
  const NodeId peer = ReadU64(decoded.backend_address, 8);
  const Node* found = Lookup(peer);
  if (found == nullptr) {
    return MakeError(Errc::kNotFound, "no node {} (id {}) in this fake network", decoded.name,
                     peer);
  }
  if (found->name != decoded.name) {
    return MakeError(Errc::kCorrupt, "fake address names {}, but node id {} is {}", decoded.name,
                     peer, found->name);
  }
  // Checked: later Connects to it skip the decoding. Kept: an address that
  // ends with its id, as one this network encoded does, and holds the name
  // as it is; the first encoding seen of a node.
  const auto name_bytes = std::as_bytes(std::span(decoded.name));
  const auto name_at =
      std::search(address.begin(), address.end(), name_bytes.begin(), name_bytes.end());
  if (address.size() <= PeerCard::kAddressMax && tail == peer && name_at != address.end()) {
    if (cards_.size() <= peer) cards_.resize(nodes_.size());
    PeerCard& card = cards_[peer];
    if (card.address_size == 0) {
      std::copy(address.begin(), address.end(), card.address.begin());
      card.address_size = static_cast<std::uint8_t>(address.size());
      card.name_at = static_cast<std::uint8_t>(name_at - address.begin());
      card.name_size = static_cast<std::uint8_t>(name_bytes.size());
    }
  }
  if (auto reason = BreakReason(self, peer)) {
    return MakeError(Errc::kUnavailable, "node {} is unreachable: {}", decoded.name, *reason);
  }
  return NewEndpoint(self, peer, decoded.name);
}

std::unique_ptr<Endpoint> FakeNetwork::Impl::NewEndpoint(NodeId self, NodeId peer,
                                                         std::string_view name) {
  auto state = std::make_shared<EndpointState>();
  state->id = next_endpoint_id_++;
  state->node = self;
  state->peer = peer;
  state->peer_name = name;
  node(self).endpoints.push_back({state->id, state, false});
  return std::make_unique<FakeEndpoint>(*this, std::move(state));
}

Result<FakeNetwork::Impl::KeyIds> FakeNetwork::Impl::DecodeKey(ByteView packed) {
  const std::uint64_t region = IdBefore(packed, 8);
  const std::uint64_t owner = IdBefore(packed, 16);
  if (owner != 0 && owner < cards_.size() && cards_[owner].HasKey(region, packed)) {
    const PeerCard& card = cards_[owner];
    return KeyIds{card.base, card.length, network_id_, owner, region};
  }
  ROAM_ASSIGN_OR_RETURN(wire::DecodedKey key, wire::DecodeKey(packed, kBackend));
  if (key.backend_key.size() != kKeyIdBytes) {
    return MakeError(Errc::kCorrupt, "fake memory key holds {} bytes of ids, not {}",
                     key.backend_key.size(), kKeyIdBytes);
  }
  const KeyIds ids{key.base, key.length, ReadU64(key.backend_key, 0), ReadU64(key.backend_key, 8),
                   ReadU64(key.backend_key, 16)};
  // Kept: a key of this network's regions that ends with its owner's and
  // its region's ids (as PackKey's do), in place of the owner's last.
  if (packed.size() <= PeerCard::kKeyMax && ids.network == network_id_ && ids.region == region &&
      ids.owner == owner && region != 0 && region < next_region_id_ && Lookup(owner) != nullptr) {
    if (cards_.size() <= owner) cards_.resize(nodes_.size());
    PeerCard& card = cards_[owner];
    std::copy(packed.begin(), packed.end(), card.key.begin());
    card.key_size = static_cast<std::uint8_t>(packed.size());
    card.region = region;
    card.base = ids.base;
    card.length = ids.length;
  }
  return ids;
}

Result<std::unique_ptr<MemoryRegion>> FakeNetwork::Impl::AddRegion(NodeId node_id,
                                                                   std::span<std::byte> memory,
                                                                   bool owned) {
  const std::uint64_t id = next_region_id_++;
  node(node_id).regions.emplace_back(id, memory);
  return std::make_unique<FakeRegion>(*this, node_id, id, memory, owned);
}

void FakeNetwork::Impl::RemoveRegion(NodeId node_id, std::uint64_t region) {
  auto& regions = node(node_id).regions;
  auto it =
      std::lower_bound(regions.begin(), regions.end(), region,
                       [](const auto& entry, std::uint64_t key) { return entry.first < key; });
  if (it != regions.end() && it->first == region) regions.erase(it);
}

void FakeNetwork::Impl::CloseEndpoint(EndpointState& ep) {
  KeepPutsOnWire(ep);
  ep.closed = true;
  Node& n = node(ep.node);
  auto it =
      std::lower_bound(n.endpoints.begin(), n.endpoints.end(), ep.id,
                       [](const EndpointSlot& slot, std::uint64_t key) { return slot.id < key; });
  if (it != n.endpoints.end() && it->id == ep.id) n.endpoints.erase(it);
  // The caller's completions are dropped, never run; answers still on the
  // wire find no endpoint and are dropped too. Pending requests keep their
  // (now silent) handlers until the state goes.
  ep.ops.Clear();
  ep.flushes.clear();
}

void FakeNetwork::Impl::KeepPutsOnWire(const EndpointState& ep) {
  // Only a put not yet answered can be on the wire still.
  if (put_source_ != PutSource::kReadAtLanding || ep.ops.unacked() == 0) return;
  Distribute();
  inboxes_.at(ep.peer).ForEach([&ep](Queued& q) {
    Event& ev = q.ev;
    if (ev.kind != Event::Kind::kPut || ev.src == nullptr || ev.endpoint != ep.id) return;
    ev.data.assign(ev.src, ev.src + ev.length);
    ev.src = nullptr;
  });
}

namespace {
void KeepPutsOnWire(FakeNetwork::Impl& net, const EndpointState& ep) { net.KeepPutsOnWire(ep); }
}  // namespace

void FakeNetwork::Impl::CloseNode(NodeId id) {
  Node& n = node(id);
  n.closed = true;
  down_[id] = 1;
  n.ready.clear();
  n.router = RequestRouter();
  if (auto it = names_.find(n.name); it != names_.end() && it->second == id) names_.erase(it);
  // Its peers' endpoints fail at their next Progress, as over a real network
  // when a daemon goes away.
  FaultsChanged();
}

void FakeNetwork::Impl::Send(Event&& ev) {
  if (BreakReason(ev.from, ev.to)) return;  // the endpoint fails at its next Progress
  // Only links that were given faults are kept: a link without is due at
  // once, in issue order, and a pool that talks along many links (the
  // simulator's random gossip: every pair, in time) keeps no entry per
  // pair.
  TimePoint at = now();
  if (auto it = links_.empty() ? links_.end() : links_.find({ev.from, ev.to}); it != links_.end()) {
    Link& link = it->second;
    if (link.faults.drop > 0.0 && Draw() < link.faults.drop) return;
    at = std::max<TimePoint>(at + link.faults.delay, link.last_delivery);
    link.last_delivery = at;
  }
  ROAM_CHECK(ev.to < inboxes_.size(), "a message to node {}, which never was", ev.to);
  sent_.push_back({at, next_seq_++, std::move(ev)});
  ++queued_;
}

void FakeNetwork::Impl::Distribute() {
  // Ahead of each push, the inbox a few messages on: in a large pool its
  // header is a miss, and the pushes do not wait on one another, so the
  // misses overlap.
  constexpr std::size_t kAhead = 8;
  for (std::size_t i = 0; i < sent_.size(); ++i) {
    if (i + kAhead < sent_.size()) __builtin_prefetch(&inboxes_[sent_[i + kAhead].ev.to]);
    Queued& q = sent_[i];
    inboxes_[q.ev.to].Push(q.at, q.seq, std::move(q.ev));
  }
  sent_.clear();
}

unsigned FakeNetwork::Impl::Progress(NodeId id) {
  Node& n = node(id);
  if (n.closed) return 0;
  const TimePoint t = now();
  unsigned handled = 0;
  if (n.fault_epoch_seen != fault_epoch_) {
    n.fault_epoch_seen = fault_epoch_;
    handled += FailBrokenEndpoints(n);
  }
  // Work queued by calls before this Progress; what completions queue now
  // waits for the next one, so a completion that issues an operation cannot
  // keep this call busy forever.
  for (std::size_t count = n.ready.size(); count > 0 && !n.ready.empty(); --count) {
    const ReadyWork work = n.ready.pop_front();
    handled += RunReady(n, work);
  }
  // Messages due by now and sent before this call (the same reasoning).
  const std::uint64_t limit = next_seq_;
  Distribute();
  Inbox& inbox = inboxes_[id];
  while (!inbox.empty() && !n.closed) {
    const Queued& first = inbox.Front();
    if (first.at > t || first.seq >= limit) break;
    Event ev = inbox.PopFront();
    --queued_;
    Deliver(n, ev);
    ++handled;
  }
  // Deadlines last: a reply that is due wins over its deadline. The ids of
  // the endpoints there are now (a completion may add or destroy some);
  // one that waits on nothing, was not waiting and has no request has
  // nothing to check.
  std::vector<std::uint64_t> ids;
  ids.swap(endpoint_ids_);  // a Progress inside a completion makes its own
  ids.clear();
  for (const EndpointSlot& slot : n.endpoints) {
    if (slot.watched) ids.push_back(slot.id);
  }
  for (const std::uint64_t ep_id : ids) {
    EndpointSlot* slot = FindSlot(n, ep_id);
    if (slot == nullptr) continue;
    EndpointState& state = *slot->ep;
    if (!state.was_waiting && !state.waiting() && state.requests.size() == 0) {
      slot->watched = false;
      state.watched = false;
      continue;
    }
    const EndpointRef ep = slot->ep;
    handled += CheckLiveness(*this, ep, n.peer_timeout, t);
    if (!ep->closed) handled += ep->requests.Expire(t, ep->peer_name);
  }
  if (ids.capacity() > endpoint_ids_.capacity()) endpoint_ids_.swap(ids);
  return handled;
}

bool FakeNetwork::Impl::Arm(NodeId id) {
  const Node& n = node(id);
  if (n.closed) return true;
  if (!n.ready.empty()) return false;
  const TimePoint t = now();
  Distribute();
  if (const Inbox& inbox = inboxes_[id]; !inbox.empty() && inbox.Front().at <= t) return false;
  // Or an endpoint about to fail, or a request past its deadline.
  return std::ranges::none_of(n.endpoints, [&](const EndpointSlot& slot) {
    const EndpointState& ep = *slot.ep;
    const auto deadline = ep.requests.next_deadline();
    const bool silent_too_long =
        !ep.failure && ep.was_waiting && ep.waiting() && t - ep.silent_since >= n.peer_timeout;
    return (!ep.failure && BreakReason(n.id, ep.peer)) || (deadline && *deadline <= t) ||
           silent_too_long;
  });
}

unsigned FakeNetwork::Impl::FailBrokenEndpoints(Node& n) {
  unsigned handled = 0;
  for (const EndpointRef& ep : EndpointsOf(n)) {
    if (ep->closed || ep->failure) continue;
    if (auto reason = BreakReason(n.id, ep->peer)) {
      handled +=
          Fail(*this, ep,
               MakeError(Errc::kUnavailable, "node {} is unreachable: {}", ep->peer_name, *reason));
    }
  }
  return handled;
}

void FakeNetwork::Impl::Deliver(Node& n, Event& ev) {
  if (BreakReason(ev.from, ev.to)) return;  // lost with the link
  Event answer;
  answer.from = ev.to;
  answer.to = ev.from;
  answer.endpoint = ev.endpoint;
  answer.op = ev.op;
  switch (ev.kind) {
    case Event::Kind::kPut: {
      answer.kind = Event::Kind::kPutAck;
      if (Status written = WriteRegion(n, ev); !written.has_value()) {
        answer.MakeRare().error = written.error();
      }
      KeepBuffer(std::move(ev.data));
      Send(std::move(answer));
      return;
    }
    case Event::Kind::kGet: {
      answer.kind = Event::Kind::kGetReply;
      Result<Bytes> data = ReadRegion(n, ev);
      if (data.has_value()) {
        answer.data = std::move(*data);
      } else {
        answer.MakeRare().error = std::move(data).error();
      }
      Send(std::move(answer));
      return;
    }
    case Event::Kind::kRequest: {
      answer.kind = Event::Kind::kReply;
      auto [header, payload] = n.router.Dispatch(ev.MakeRare().header, ev.data);
      answer.MakeRare().header = header;
      answer.data = std::move(payload);
      Send(std::move(answer));
      return;
    }
    case Event::Kind::kPutAck:
    case Event::Kind::kGetReply:
      OpDone(n, ev);
      return;
    case Event::Kind::kReply: {
      const EndpointRef* found = FindEndpoint(n, ev.endpoint);
      if (found == nullptr) return;  // the requester is gone: drop the reply
      const EndpointRef ep = *found;
      ++ep->answers;
      const wire::MessageHeader& header = ev.MakeRare().header;
      ep->requests.Complete(header.request_id, ReplyResult(header, ev.data));
      return;
    }
  }
}

FakeNetwork::FakeNetwork(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}
FakeNetwork::~FakeNetwork() = default;

Result<std::unique_ptr<Fabric>> FakeNetwork::AddNode(const FabricOptions& options) {
  return impl_->AddNode(options);
}
Status FakeNetwork::SetFaults(std::string_view from, std::string_view to, LinkFaults faults) {
  return impl_->SetFaults(from, to, faults);
}
Status FakeNetwork::Disconnect(std::string_view a, std::string_view b) {
  return impl_->Disconnect(a, b);
}
Status FakeNetwork::Kill(std::string_view node) { return impl_->Kill(node); }
std::size_t FakeNetwork::in_flight() const { return impl_->in_flight(); }

}  // namespace roam::transport
