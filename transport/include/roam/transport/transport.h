// roam's transport: registered memory, one-sided put/get, flush and fence,
// and small tagged request/reply messages between nodes. Load vectors and
// memory pages travel as puts into memory the receiver registered; the
// daemons' protocol travels as requests.
//
// A Fabric is this node's context (one UCX worker, say). It hands out
// Endpoints to peers (by the peer's address, exchanged at bootstrap) and
// MemoryRegions (registered memory whose packed key a peer unpacks on its
// endpoint to us). Backends: "ucx" (tcp and shared memory here, verbs on a
// cluster) and "fake" (many nodes in one process, for tests and the
// simulator; see fake.h).
//
// Progress model. Nothing happens behind the caller's back: operations make
// progress, and completions run, only inside Fabric::Progress(). A target
// must progress too: over UCX tcp, and over shared memory into memory that
// UCX did not allocate, a put lands only while the target's worker
// progresses (the initiator's flush waits until then). A daemon therefore
// drives Progress() from its event loop: Arm(), then poll event_fd(), then
// Progress() until it returns 0. Memory peers write into should come from
// Fabric::Allocate(), which lets shared memory and RDMA land it without the
// target's CPU.
//
// Completion callbacks run inside Progress() on the calling thread, never
// inside the call that started the operation. A callback may start new
// operations; it must not destroy the fabric.
//
// Errors are typed: kInvalidArgument for a bad buffer, key or bound (checked
// before anything is sent), kResourceExhausted when an endpoint has
// FabricOptions::max_outstanding operations in flight (progress, then
// retry), kUnavailable once a peer is unreachable (its endpoint stays failed
// and every pending operation on it completes with that error), kTimeout for
// a request without a reply in time, kCorrupt for a malformed address or key.
//
// Thread-safety: a Fabric and everything it handed out belong to one thread
// (the one that calls Progress). Distinct fabrics are independent.
// Lifetime: Endpoints and MemoryRegions must be destroyed before their
// Fabric; a RemoteKey before the Endpoint that unpacked it. Destroying an
// endpoint drops what it has in flight: those completions and reply
// handlers never run, and no get writes into its buffer afterwards.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::transport {

using Bytes = std::vector<std::byte>;
using ByteView = std::span<const std::byte>;

// What a backend does natively; tests and the pool skip or adapt on these.
enum class Capability : std::uint32_t {
  // Endpoints reach other processes and hosts (not only this process).
  kCrossProcess = 1u << 0,
  // (1u << 1 is free. Whether a put lands without the target's CPU is not a
  // property of the UCX backend but of the transport UCX picks per peer:
  // RDMA and shared memory into Allocate()d memory do, tcp does not.)
  // Faults can be injected (drop, delay, disconnect); see fake.h.
  kFaultInjection = 1u << 2,
  // Same inputs, same schedule: runs repeat exactly (the simulator needs it).
  kDeterministic = 1u << 3,
};

class Capabilities final {
 public:
  constexpr Capabilities() = default;
  constexpr Capabilities(std::initializer_list<Capability> caps) {
    for (Capability c : caps) bits_ |= static_cast<std::uint32_t>(c);
  }
  constexpr bool Has(Capability c) const { return (bits_ & static_cast<std::uint32_t>(c)) != 0; }
  constexpr std::uint32_t bits() const { return bits_; }
  // "fault-injection,deterministic", for logs and `roam info`.
  std::string ToString() const;

 private:
  std::uint32_t bits_ = 0;
};

// Called once per operation with its outcome.
using Completion = std::function<void(Status)>;

// A peer's key to one of its memory regions, unpacked on the endpoint to
// that peer; usable only there.
class RemoteKey {
 public:
  virtual ~RemoteKey() = default;
  // The peer's region, in the peer's address space.
  virtual std::uint64_t base() const = 0;
  virtual std::uint64_t length() const = 0;
};

// Local memory registered with the fabric; peers reach it through its packed
// key. Destroying it deregisters (and frees, if the fabric allocated it).
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  virtual std::byte* data() const = 0;
  virtual std::size_t size() const = 0;
  std::span<std::byte> bytes() const { return {data(), size()}; }
  // What a peer needs to put into and get from this region (its address and
  // the backend's access key), as opaque versioned bytes.
  virtual Result<Bytes> PackKey() const = 0;
};

// A request as its handler sees it.
struct Message {
  std::uint16_t tag = 0;
  ByteView payload;
};

// Returns the reply payload, or an error that the requester receives as its
// result (code and message travel).
using RequestHandler = std::function<Result<Bytes>(const Message&)>;
using ReplyHandler = std::function<void(Result<Bytes>)>;

// Requests and replies larger than this are refused (kInvalidArgument):
// control messages are small; bulk data travels by put.
inline constexpr std::size_t kMaxMessageBytes = std::size_t{1} << 20;

// A connection to one peer.
class Endpoint {
 public:
  virtual ~Endpoint() = default;

  // The peer's name, from its address.
  virtual const std::string& peer() const = 0;
  // Ok, or the error that broke this endpoint (peer dead, disconnected).
  virtual Status status() const = 0;

  // Unpacks a key the peer packed (MemoryRegion::PackKey) for use on this
  // endpoint. kCorrupt for bytes that are not a key of this backend.
  virtual Result<std::unique_ptr<RemoteKey>> UnpackKey(ByteView packed) = 0;

  // Writes `src` to `remote_addr` in the peer's region. `done` runs when
  // `src` may be reused (local completion; remote visibility needs Flush).
  // [remote_addr, remote_addr + src.size()) must lie within `key`'s region,
  // and `key` must come from this endpoint: kInvalidArgument otherwise.
  virtual Status Put(ByteView src, std::uint64_t remote_addr, const RemoteKey& key,
                     Completion done = {}) = 0;
  // Reads the peer's memory into `dst`; `done` runs when `dst` holds it.
  virtual Status Get(std::span<std::byte> dst, std::uint64_t remote_addr, const RemoteKey& key,
                     Completion done = {}) = 0;
  // Every put and get issued on this endpoint before the fence completes at
  // the peer before any issued after it (data, fence, then a flag).
  virtual Status Fence() = 0;
  // `done` runs once every put and get issued before it is complete at the
  // peer (remotely visible).
  virtual Status Flush(Completion done) = 0;

  // Sends a request with `tag`; `on_reply` runs with the peer handler's
  // reply or error, with kTimeout after `timeout`, or with the endpoint's
  // error if the peer dies first.
  virtual Status Request(std::uint16_t tag, ByteView payload, std::chrono::milliseconds timeout,
                         ReplyHandler on_reply) = 0;
};

struct FabricOptions {
  // This node's name, carried in its address (logs, errors).
  std::string name = "node";
  // Operations in flight per endpoint before Put/Get/Request refuse with
  // kResourceExhausted.
  std::size_t max_outstanding = 4096;
  // A peer that leaves an operation or request unanswered for this long is
  // declared dead: its endpoint fails with kUnavailable, and so does all it
  // had in flight. Must exceed the longest single operation (a large put
  // over a slow link). Applies whatever detect_peer_failure says.
  std::chrono::milliseconds peer_timeout{5000};
  // Whether the transport also watches connections itself, so that a peer
  // whose connection closes (a killed process) fails its endpoints at once
  // rather than after peer_timeout. UCX then uses only transports that can,
  // which in UCX 1.13 excludes shared memory; without it shared memory is
  // used on one host.
  bool detect_peer_failure = true;
};

class Fabric {
 public:
  virtual ~Fabric() = default;

  virtual std::string_view backend() const = 0;
  virtual Capabilities capabilities() const = 0;
  virtual const std::string& name() const = 0;

  // This node's address: opaque versioned bytes a peer passes to Connect.
  virtual Result<Bytes> Address() const = 0;
  // kCorrupt for bytes that are not an address, kIncompatible for an
  // address of another backend or version.
  virtual Result<std::unique_ptr<Endpoint>> Connect(ByteView peer_address) = 0;

  // Memory the fabric allocates and registers, zero-filled and faulted in
  // (its first writes do not fault): the kind peers can write one-sidedly
  // where the backend can. A forked child does not
  // inherit it (MADV_DONTFORK): a child's copy-on-write share would make
  // every later write to it here copy the page, for as long as the child
  // lives (restore stubs and pid-namespace inits are forks).
  virtual Result<std::unique_ptr<MemoryRegion>> Allocate(std::size_t bytes) = 0;
  // Registers memory the caller owns; it must outlive the region.
  virtual Result<std::unique_ptr<MemoryRegion>> Register(std::span<std::byte> memory) = 0;

  // Serves requests with `tag` (one handler per tag; a later call replaces
  // it). A request for a tag without a handler gets kNotFound.
  virtual void Handle(std::uint16_t tag, RequestHandler handler) = 0;

  // Does pending work and runs completions; returns how many events it
  // handled (0: nothing to do now).
  virtual unsigned Progress() = 0;
  // A descriptor that becomes readable when there may be work, or -1 when
  // the backend has none (then poll Progress).
  virtual int event_fd() const = 0;
  // Prepares event_fd for sleeping. False when there is work now: call
  // Progress again instead of sleeping.
  virtual bool Arm() = 0;
};

// Opens a fabric of the named backend ("ucx"). The fake backend's fabrics
// come from a FakeNetwork (fake.h). kNotFound for an unknown backend.
Result<std::unique_ptr<Fabric>> OpenFabric(std::string_view backend, const FabricOptions& options);

// Progresses `fabrics` until `done()` holds, sleeping on their event fds when
// idle. kTimeout after `timeout`.
Status ProgressUntil(std::span<Fabric* const> fabrics, const std::function<bool()>& done,
                     std::chrono::milliseconds timeout);
Status ProgressUntil(Fabric& fabric, const std::function<bool()>& done,
                     std::chrono::milliseconds timeout);

// Blocking forms for tools and tests: start the operation, progress
// `fabric` until it completes, return its status (kTimeout after timeout).
// After a kTimeout the operation may still be pending: PutAndFlush's `src`
// must stay valid until the endpoint is destroyed (GetBlocking lands in a
// buffer of its own and copies, so `dst` need not).
Status PutAndFlush(Fabric& fabric, Endpoint& ep, ByteView src, std::uint64_t remote_addr,
                   const RemoteKey& key, std::chrono::milliseconds timeout);
Status GetBlocking(Fabric& fabric, Endpoint& ep, std::span<std::byte> dst,
                   std::uint64_t remote_addr, const RemoteKey& key,
                   std::chrono::milliseconds timeout);
Status FlushBlocking(Fabric& fabric, Endpoint& ep, std::chrono::milliseconds timeout);
Result<Bytes> RequestBlocking(Fabric& fabric, Endpoint& ep, std::uint16_t tag, ByteView payload,
                              std::chrono::milliseconds timeout);

}  // namespace roam::transport
