#include "transport/ucx/ucx_fabric.h"

#include <sys/mman.h>
#include <time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <limits>
#include <string>
#include <typeinfo>
#include <unordered_map>
#include <utility>

#include "roam/base/check.h"
#include "roam/base/deadline.h"
#include "roam/base/mapped_memory.h"
#include "transport/requests.h"
#include "transport/wire/wire.h"

namespace roam::transport {
namespace {

constexpr std::string_view kBackend = "ucx";
// Active-message ids of the control messages.
constexpr unsigned kAmRequest = 0;
constexpr unsigned kAmReply = 1;
// Request ids on the wire: the endpoint's serial in the high bits, its own
// PendingRequests id in the low ones, so a reply finds its endpoint (or is
// dropped when that endpoint is gone).
constexpr int kSerialShift = 40;

Error UcxError(ucs_status_t status, std::string_view what) {
  Errc code = Errc::kIo;
  switch (status) {
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      code = Errc::kResourceExhausted;
      break;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
      code = Errc::kInvalidArgument;
      break;
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_IO_ERROR:
      code = Errc::kUnavailable;
      break;
    case UCS_ERR_TIMED_OUT:
      code = Errc::kTimeout;
      break;
    case UCS_ERR_CANCELED:
      code = Errc::kCancelled;
      break;
    case UCS_ERR_UNSUPPORTED:
      code = Errc::kUnsupported;
      break;
    default:
      break;
  }
  return MakeError(code, "ucx: {}: {}", what, ucs_status_string(status));
}

ByteView AsView(const void* data, std::size_t size) {
  return {static_cast<const std::byte*>(data), size};
}

class UcxFabric;
class UcxEndpoint;
struct InFlight;

// Parameters of a nbx call whose completion goes to `op` (SendDone).
ucp_request_param_t CompletionParam(InFlight* op, std::uint32_t flags = 0);

// One UCX request in flight (put, get, flush, message send). Owned by the
// fabric until UCX completes it, so that a completion after its endpoint is
// gone still lands somewhere valid.
struct InFlight {
  UcxFabric* fabric = nullptr;
  std::uint64_t endpoint_serial = 0;
  Completion done;
  Bytes keep;  // a message's header and payload, alive until sent
};

class UcxRemoteKey final : public RemoteKey {
 public:
  UcxRemoteKey(const UcxEndpoint* owner, ucp_rkey_h rkey, std::uint64_t base, std::uint64_t length)
      : owner_(owner), rkey_(rkey), base_(base), length_(length) {}
  ~UcxRemoteKey() override { ucp_rkey_destroy(rkey_); }
  UcxRemoteKey(const UcxRemoteKey&) = delete;
  UcxRemoteKey& operator=(const UcxRemoteKey&) = delete;

  std::uint64_t base() const override { return base_; }
  std::uint64_t length() const override { return length_; }
  const UcxEndpoint* owner() const { return owner_; }
  ucp_rkey_h rkey() const { return rkey_; }

 private:
  const UcxEndpoint* owner_;
  ucp_rkey_h rkey_;
  std::uint64_t base_;
  std::uint64_t length_;
};

class UcxMemoryRegion final : public MemoryRegion {
 public:
  // mapped_bytes: the length of an anonymous mapping at data that the region
  // owns (Allocate), unmapped after deregistration; 0 for memory the caller
  // owns (Register).
  UcxMemoryRegion(ucp_context_h context, ucp_mem_h memh, std::byte* data, std::size_t size,
                  std::size_t mapped_bytes = 0)
      : context_(context), memh_(memh), data_(data), size_(size), mapped_bytes_(mapped_bytes) {}
  ~UcxMemoryRegion() override {
    ucp_mem_unmap(context_, memh_);
    if (mapped_bytes_ != 0) ::munmap(data_, mapped_bytes_);
  }
  UcxMemoryRegion(const UcxMemoryRegion&) = delete;
  UcxMemoryRegion& operator=(const UcxMemoryRegion&) = delete;

  std::byte* data() const override { return data_; }
  std::size_t size() const override { return size_; }

  Result<Bytes> PackKey() const override {
    void* buffer = nullptr;
    std::size_t size = 0;
    if (const ucs_status_t s = ucp_rkey_pack(context_, memh_, &buffer, &size); s != UCS_OK) {
      return UcxError(s, "pack a memory key");
    }
    Result<Bytes> key = wire::EncodeKey(kBackend, reinterpret_cast<std::uintptr_t>(data_), size_,
                                        AsView(buffer, size));
    ucp_rkey_buffer_release(buffer);
    return key;
  }

 private:
  ucp_context_h context_;
  ucp_mem_h memh_;
  std::byte* data_;
  std::size_t size_;
  std::size_t mapped_bytes_;
};

class UcxEndpoint final : public Endpoint {
 public:
  UcxEndpoint(UcxFabric& fabric, std::uint64_t serial, std::string peer)
      : fabric_(fabric), serial_(serial), peer_(std::move(peer)) {}
  ~UcxEndpoint() override;
  UcxEndpoint(const UcxEndpoint&) = delete;
  UcxEndpoint& operator=(const UcxEndpoint&) = delete;

  Status Create(const Bytes& worker_address);

  const std::string& peer() const override { return peer_; }
  Status status() const override {
    if (failure_) return *failure_;
    return Ok();
  }
  Result<std::unique_ptr<RemoteKey>> UnpackKey(ByteView packed) override;
  Status Put(ByteView src, std::uint64_t remote_addr, const RemoteKey& key,
             Completion done) override;
  Status Get(std::span<std::byte> dst, std::uint64_t remote_addr, const RemoteKey& key,
             Completion done) override;
  Status Fence() override;
  Status Flush(Completion done) override;
  Status Request(std::uint16_t tag, ByteView payload, std::chrono::milliseconds timeout,
                 ReplyHandler on_reply) override;

  // From UCX's error callback: the peer is gone.
  void Fail(ucs_status_t status);
  void OnReply(std::uint64_t local_id, Result<Bytes> reply) {
    ++answers_;
    pending_.Complete(local_id, std::move(reply));
  }
  unsigned ExpireRequests(Clock::time_point now) { return pending_.Expire(now, peer_); }
  // Something waits on the peer: an operation in flight or a request.
  bool waiting() const { return outstanding_ != 0 || pending_.size() != 0; }
  void OperationEnded() {
    --outstanding_;
    ++answers_;
  }
  // Declares the peer dead if something has waited on it for longer than
  // peer_timeout without any answer. UCX notices a peer that closed its
  // connection (a killed process) at once, but not one that went silent
  // (a cut link, a hung host): tcp retransmits for minutes. Returns whether
  // it failed the endpoint.
  bool CheckLiveness(Clock::time_point now);
  // The operation's outcome as its caller sees it: once the endpoint failed,
  // everything it had in flight fails with the endpoint's error.
  Status Outcome(Status status) const {
    if (failure_ && (status.has_value() || status.error().code() == Errc::kCancelled)) {
      return *failure_;
    }
    return status;
  }

 private:
  Status Ready(std::string_view what);
  void CloseUcxEndpoint();
  Result<const UcxRemoteKey*> CheckKey(const RemoteKey& key, std::uint64_t addr,
                                       std::size_t len) const;
  // A new operation of this endpoint, counted until UCX completes it.
  InFlight* StartOp(Completion done);
  // A put or get: ucp_put_nbx or ucp_get_nbx on `buffer`.
  template <typename NbxCall>
  Status Rma(NbxCall call, std::byte* buffer, std::size_t length, std::uint64_t remote_addr,
             const RemoteKey& key, Completion done, std::string_view what);
  // Hands a nbx call's return value to the fabric: an inline completion is
  // queued, a request is tracked, an immediate error is returned.
  Status Track(ucs_status_ptr_t request, InFlight* op, std::string_view what);

  UcxFabric& fabric_;
  const std::uint64_t serial_;
  const std::string peer_;
  ucp_ep_h ep_ = nullptr;
  std::optional<Error> failure_;
  std::size_t outstanding_ = 0;
  // Liveness without a clock read per operation: answers (completions,
  // replies) are counted, and CheckLiveness, every few milliseconds, notes
  // since when the count has not moved while something waited.
  std::uint64_t answers_ = 0;
  std::uint64_t answers_seen_ = 0;
  bool was_waiting_ = false;
  Clock::time_point silent_since_{};
  PendingRequests pending_;
};

class UcxFabric final : public Fabric {
 public:
  explicit UcxFabric(FabricOptions options) : options_(std::move(options)) {}
  ~UcxFabric() override;
  UcxFabric(const UcxFabric&) = delete;
  UcxFabric& operator=(const UcxFabric&) = delete;

  Status Open();

  std::string_view backend() const override { return kBackend; }
  Capabilities capabilities() const override { return {Capability::kCrossProcess}; }
  const std::string& name() const override { return options_.name; }
  Result<Bytes> Address() const override;
  Result<std::unique_ptr<Endpoint>> Connect(ByteView peer_address) override;
  Result<std::unique_ptr<MemoryRegion>> Allocate(std::size_t bytes) override;
  Result<std::unique_ptr<MemoryRegion>> Register(std::span<std::byte> memory) override;
  void Handle(std::uint16_t tag, RequestHandler handler) override {
    router_.Handle(tag, std::move(handler));
  }
  unsigned Progress() override;
  int event_fd() const override { return event_fd_; }
  bool Arm() override;

  ucp_worker_h worker() const { return worker_; }
  const FabricOptions& options() const { return options_; }

  // Operation bookkeeping shared with endpoints.
  InFlight* NewOp(std::uint64_t endpoint_serial, Completion done) {
    InFlight* op = nullptr;
    if (free_ops_.empty()) {
      op = new InFlight;
    } else {
      op = free_ops_.back().release();
      free_ops_.pop_back();
    }
    op->fabric = this;
    op->endpoint_serial = endpoint_serial;
    op->done = std::move(done);
    ++in_flight_;
    return op;
  }
  // Queues `op`'s completion for the next Progress and recycles it. `ep`:
  // its endpoint when the caller knows it is alive (saves the lookup).
  void Finish(InFlight* op, Status status, UcxEndpoint* ep = nullptr);
  // An endpoint is gone: nothing of it runs any more.
  void Forget(std::uint64_t serial) {
    endpoints_.erase(serial);
    for (auto* queue : {&completions_, &running_}) {
      for (Done& d : *queue) {
        if (d.endpoint_serial == serial) d.done = nullptr;
      }
    }
  }
  UcxEndpoint* Find(std::uint64_t serial) {
    auto it = endpoints_.find(serial);
    return it == endpoints_.end() ? nullptr : it->second;
  }
  // Work for the next Progress, outside UCX's callbacks.
  void Defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }

  static void SendDone(void* request, ucs_status_t status, void* user_data);

 private:
  static ucs_status_t OnRequest(void* arg, const void* header, std::size_t header_length,
                                void* data, std::size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnReplyMessage(void* arg, const void* header, std::size_t header_length,
                                     void* data, std::size_t length,
                                     const ucp_am_recv_param_t* param);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);

  FabricOptions options_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int event_fd_ = -1;
  RequestRouter router_;
  std::uint64_t next_serial_ = 1;
  std::unordered_map<std::uint64_t, UcxEndpoint*> endpoints_;
  // Completions of operations, run by the next Progress: it swaps
  // completions_ with running_ and runs those, so completions queued
  // meanwhile wait for the call after, and neither vector reallocates once
  // warm. deferred_: other work for Progress (replies, endpoint failures).
  struct Done {
    Completion done;
    Status status;
    std::uint64_t endpoint_serial;
  };
  std::vector<Done> completions_;
  std::vector<Done> running_;
  std::deque<std::function<void()>> deferred_;
  // Recycled operation records: one allocation per operation costs as much
  // as a small shared-memory put.
  std::vector<std::unique_ptr<InFlight>> free_ops_;
  unsigned runs_without_ucx_ = 0;
  std::int64_t last_deadline_check_ms_ = 0;
  std::size_t in_flight_ = 0;

  friend class UcxEndpoint;
};

// --- fabric ---------------------------------------------------------------

Status UcxFabric::Open() {
  ucp_config_t* config = nullptr;
  if (const ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return UcxError(s, "read configuration");
  }
  // With peer error handling, UCX probes idle endpoints once per keepalive
  // interval, so that a closed connection is noticed without traffic.
  const std::string keepalive =
      fmt::format("{}ms", std::max<long>(1, options_.peer_timeout.count() / 2));
  ucp_config_modify(config, "KEEPALIVE_INTERVAL", keepalive.c_str());

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.name = options_.name.c_str();
  const ucs_status_t init = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (init != UCS_OK) return UcxError(init, "initialize");

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  if (const ucs_status_t s = ucp_worker_create(context_, &wparams, &worker_); s != UCS_OK) {
    return UcxError(s, "create a worker");
  }
  if (const ucs_status_t s = ucp_worker_get_efd(worker_, &event_fd_); s != UCS_OK) {
    return UcxError(s, "get the worker's event fd");
  }
  for (const auto& [id, cb] : {std::pair{kAmRequest, &UcxFabric::OnRequest},
                               std::pair{kAmReply, &UcxFabric::OnReplyMessage}}) {
    ucp_am_handler_param_t hp{};
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    hp.id = id;
    hp.cb = cb;
    hp.arg = this;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    if (const ucs_status_t s = ucp_worker_set_am_recv_handler(worker_, &hp); s != UCS_OK) {
      return UcxError(s, "set a message handler");
    }
  }
  return Ok();
}

UcxFabric::~UcxFabric() {
  ROAM_CHECK(endpoints_.empty(), "endpoints must be destroyed before their fabric");
  // Endpoints were force-closed; UCX completes what they had in flight
  // (cancelled) within a few progress calls.
  for (int i = 0; in_flight_ != 0 && i < 10000; ++i) ucp_worker_progress(worker_);
  completions_.clear();
  deferred_.clear();
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  if (context_ != nullptr) ucp_cleanup(context_);
}

Result<Bytes> UcxFabric::Address() const {
  ucp_address_t* address = nullptr;
  std::size_t length = 0;
  if (const ucs_status_t s = ucp_worker_get_address(worker_, &address, &length); s != UCS_OK) {
    return UcxError(s, "get the worker address");
  }
  Result<Bytes> encoded = wire::EncodeAddress(kBackend, options_.name, AsView(address, length));
  ucp_worker_release_address(worker_, address);
  return encoded;
}

Result<std::unique_ptr<Endpoint>> UcxFabric::Connect(ByteView peer_address) {
  ROAM_ASSIGN_OR_RETURN(wire::DecodedAddress peer, wire::DecodeAddress(peer_address, kBackend));
  const std::uint64_t serial = next_serial_++;
  auto ep = std::make_unique<UcxEndpoint>(*this, serial, std::move(peer.name));
  endpoints_.emplace(serial, ep.get());
  ROAM_TRY(ep->Create(peer.backend_address));
  return std::unique_ptr<Endpoint>(std::move(ep));
}

Result<std::unique_ptr<MemoryRegion>> UcxFabric::Allocate(std::size_t bytes) {
  if (bytes == 0) return MakeError(Errc::kInvalidArgument, "cannot allocate an empty region");
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  if (bytes > std::numeric_limits<std::size_t>::max() - page) {
    return MakeError(Errc::kResourceExhausted, "cannot allocate a region of {} bytes", bytes);
  }
  const std::size_t mapped = (bytes + page - 1) / page * page;
  // Mapped here and registered, not UCP_MEM_MAP_ALLOCATE: UCX's allocator
  // (UCX_ALLOC_PRIO, thp before mmap) marks its memory MADV_HUGEPAGE, and a
  // huge page needs a free 2 MiB block, exactly what a VM's balloon reports
  // to its host as free (virtio-balloon free page reporting, order 9 and
  // up), so each one faults on the host again. A 2 GiB region grown after a
  // few idle seconds took 3.4 to 4.4 s so on a 2-vCPU Firecracker VM, 0.53
  // to 0.64 s in small pages (bench/staging_alloc_bench). What page size
  // backs the region is left to the system's policy.
  // Faulted in now, each page once: before registration, which on RDMA
  // pins the pages (and would fault them in one by one), and not while a
  // migration waits on it. Zero-filled by the kernel, no memset.
  ROAM_ASSIGN_OR_RETURN(void* memory, MapFaultedIn(mapped, "memory to register"));
  // Not inherited by forks (see Fabric::Allocate).
  (void)::madvise(memory, mapped, MADV_DONTFORK);
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = memory;
  params.length = mapped;
  ucp_mem_h memh = nullptr;
  if (const ucs_status_t s = ucp_mem_map(context_, &params, &memh); s != UCS_OK) {
    ::munmap(memory, mapped);
    return UcxError(s, fmt::format("register {} bytes of allocated memory", mapped));
  }
  return std::unique_ptr<MemoryRegion>(std::make_unique<UcxMemoryRegion>(
      context_, memh, static_cast<std::byte*>(memory), bytes, mapped));
}

Result<std::unique_ptr<MemoryRegion>> UcxFabric::Register(std::span<std::byte> memory) {
  if (memory.empty()) return MakeError(Errc::kInvalidArgument, "cannot register an empty region");
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = memory.data();
  params.length = memory.size();
  ucp_mem_h memh = nullptr;
  if (const ucs_status_t s = ucp_mem_map(context_, &params, &memh); s != UCS_OK) {
    return UcxError(s, fmt::format("register {} bytes at {}", memory.size(),
                                   static_cast<const void*>(memory.data())));
  }
  return std::unique_ptr<MemoryRegion>(
      std::make_unique<UcxMemoryRegion>(context_, memh, memory.data(), memory.size()));
}

unsigned UcxFabric::Progress() {
  unsigned events = 0;
  // Completions already known run first; UCX is progressed when there were
  // none, and at least every 16th call (so that a caller whose completions
  // start operations that complete at once does not starve the network).
  if (!completions_.empty()) {
    running_.swap(completions_);
    // A completion may destroy an endpoint; Forget then empties the
    // endpoint's entries here, which are skipped.
    for (std::size_t i = 0; i < running_.size(); ++i) {
      if (running_[i].done) running_[i].done(std::move(running_[i].status));
    }
    events += static_cast<unsigned>(running_.size());
    running_.clear();
  }
  if (events == 0 || ++runs_without_ucx_ >= 16) {
    runs_without_ucx_ = 0;
    events += ucp_worker_progress(worker_);
  }
  while (!deferred_.empty()) {
    std::function<void()> fn = std::move(deferred_.front());
    deferred_.pop_front();
    fn();
    ++events;
  }
  // Request deadlines and peer liveness, looked at every few milliseconds
  // while some endpoint waits on its peer. This runs on every call of a
  // busy-polling loop: the coarse clock costs a few nanoseconds.
  bool waiting = false;
  for (const auto& [serial, ep] : endpoints_) waiting = waiting || ep->waiting();
  if (!waiting) return events;
  timespec coarse{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &coarse);
  const std::int64_t coarse_ms = std::int64_t{coarse.tv_sec} * 1000 + coarse.tv_nsec / 1000000;
  if (coarse_ms - last_deadline_check_ms_ < 2) return events;
  last_deadline_check_ms_ = coarse_ms;
  const Clock::time_point now = Clock::now();
  // Both may run reply handlers that destroy endpoints: walk a copy.
  std::vector<std::uint64_t> serials;
  serials.reserve(endpoints_.size());
  for (const auto& [serial, ep] : endpoints_) serials.push_back(serial);
  for (std::uint64_t serial : serials) {
    if (UcxEndpoint* ep = Find(serial)) events += ep->CheckLiveness(now) ? 1 : 0;
    if (UcxEndpoint* ep = Find(serial)) events += ep->ExpireRequests(now);
  }
  return events;
}

bool UcxFabric::Arm() {
  if (!completions_.empty() || !deferred_.empty()) return false;
  const ucs_status_t s = ucp_worker_arm(worker_);
  return s == UCS_OK;
}

void UcxFabric::Finish(InFlight* op, Status status, UcxEndpoint* ep) {
  --in_flight_;
  if (ep == nullptr) ep = Find(op->endpoint_serial);
  if (ep != nullptr) ep->OperationEnded();
  if (op->done && ep != nullptr) {
    completions_.push_back(
        {std::move(op->done), ep->Outcome(std::move(status)), op->endpoint_serial});
  }
  op->done = nullptr;
  if (op->keep.capacity() > 4096) {
    Bytes().swap(op->keep);
  } else {
    op->keep.clear();
  }
  free_ops_.emplace_back(op);
}

void UcxFabric::SendDone(void* request, ucs_status_t status, void* user_data) {
  auto* op = static_cast<InFlight*>(user_data);
  Status result = Ok();
  if (status != UCS_OK) result = UcxError(status, "operation failed");
  op->fabric->Finish(op, std::move(result));
  if (request != nullptr) ucp_request_free(request);
}

ucs_status_t UcxFabric::OnRequest(void* arg, const void* header, std::size_t header_length,
                                  void* data, std::size_t length,
                                  const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxFabric*>(arg);
  Result<wire::MessageHeader> request = wire::DecodeHeader(AsView(header, header_length));
  if (!request.has_value() || request->kind != wire::MessageKind::kRequest ||
      (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0) {
    return UCS_OK;  // not ours to answer: drop
  }
  // The reply goes out from inside this callback: the reply endpoint is only
  // known to be valid here.
  auto [reply_header, payload] = self->router_.Dispatch(*request, AsView(data, length));
  InFlight* op = self->NewOp(0, {});
  op->keep = wire::EncodeHeader(reply_header);
  const std::size_t header_size = op->keep.size();
  op->keep.insert(op->keep.end(), payload.begin(), payload.end());
  const ucp_request_param_t p = CompletionParam(op, UCP_AM_SEND_FLAG_EAGER);
  ucs_status_ptr_t sent = ucp_am_send_nbx(param->reply_ep, kAmReply, op->keep.data(), header_size,
                                          op->keep.data() + header_size, payload.size(), &p);
  if (!UCS_PTR_IS_PTR(sent)) self->Finish(op, Ok());  // sent at once, or the peer is gone
  return UCS_OK;
}

ucs_status_t UcxFabric::OnReplyMessage(void* arg, const void* header, std::size_t header_length,
                                       void* data, std::size_t length, const ucp_am_recv_param_t*) {
  auto* self = static_cast<UcxFabric*>(arg);
  Result<wire::MessageHeader> reply = wire::DecodeHeader(AsView(header, header_length));
  if (!reply.has_value() || reply->kind == wire::MessageKind::kRequest) return UCS_OK;
  const std::uint64_t serial = reply->request_id >> kSerialShift;
  const std::uint64_t local_id = reply->request_id & ((std::uint64_t{1} << kSerialShift) - 1);
  Result<Bytes> result = ReplyResult(*reply, AsView(data, length));
  // The reply handler runs from Progress, outside UCX.
  self->Defer([self, serial, local_id, result = std::move(result)]() mutable {
    if (UcxEndpoint* ep = self->Find(serial)) ep->OnReply(local_id, std::move(result));
  });
  return UCS_OK;
}

void UcxFabric::OnEndpointError(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* self = static_cast<UcxEndpoint*>(arg);
  self->Fail(status);
}

ucp_request_param_t CompletionParam(InFlight* op, std::uint32_t flags) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  if (flags != 0) {
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = flags;
  }
  p.cb.send = &UcxFabric::SendDone;
  p.user_data = op;
  return p;
}

// --- endpoint -------------------------------------------------------------

Status UcxEndpoint::Create(const Bytes& worker_address) {
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t*>(worker_address.data());
  params.err_mode = fabric_.options().detect_peer_failure ? UCP_ERR_HANDLING_MODE_PEER
                                                          : UCP_ERR_HANDLING_MODE_NONE;
  params.err_handler.cb = &UcxFabric::OnEndpointError;
  params.err_handler.arg = this;
  if (const ucs_status_t s = ucp_ep_create(fabric_.worker(), &params, &ep_); s != UCS_OK) {
    ep_ = nullptr;
    return UcxError(s, fmt::format("connect to {}", peer_));
  }
  return Ok();
}

UcxEndpoint::~UcxEndpoint() {
  // Pending requests and operations are dropped with it: their handlers
  // never run (Finish finds no endpoint).
  fabric_.Forget(serial_);
  CloseUcxEndpoint();
}

void UcxEndpoint::CloseUcxEndpoint() {
  if (ep_ == nullptr) return;
  // Force: a graceful close waits for the peer, which may be gone or not
  // progressing. UCX completes the endpoint's requests as cancelled.
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t closing = ucp_ep_close_nbx(ep_, &p);
  ep_ = nullptr;
  if (UCS_PTR_IS_PTR(closing)) {
    while (ucp_request_check_status(closing) == UCS_INPROGRESS) {
      ucp_worker_progress(fabric_.worker());
    }
    ucp_request_free(closing);
  }
}

void UcxEndpoint::Fail(ucs_status_t status) {
  if (failure_) return;
  failure_ = MakeError(Errc::kUnavailable, "lost peer {}: {}", peer_, ucs_status_string(status));
  // Pending requests learn it from Progress, not from inside UCX.
  fabric_.Defer([fabric = &fabric_, serial = serial_] {
    if (UcxEndpoint* ep = fabric->Find(serial)) ep->pending_.FailAll(*ep->failure_);
  });
}

bool UcxEndpoint::CheckLiveness(Clock::time_point now) {
  if (failure_ || !waiting()) {
    was_waiting_ = false;
    return false;
  }
  if (!was_waiting_ || answers_ != answers_seen_) {
    was_waiting_ = true;
    answers_seen_ = answers_;
    silent_since_ = now;
    return false;
  }
  const auto silent = now - silent_since_;
  if (silent < fabric_.options().peer_timeout) return false;
  failure_ = MakeError(Errc::kUnavailable, "lost peer {}: no answer for {} ms", peer_,
                       std::chrono::duration_cast<std::chrono::milliseconds>(silent).count());
  pending_.FailAll(*failure_);
  // UCX still waits on the peer: closing the endpoint cancels what it has in
  // flight, and those completions carry the failure (Outcome).
  CloseUcxEndpoint();
  return true;
}

Status UcxEndpoint::Ready(std::string_view what) {
  if (failure_) return *failure_;
  if (outstanding_ + pending_.size() >= fabric_.options().max_outstanding) {
    return MakeError(Errc::kResourceExhausted,
                     "{} to {}: {} operations in flight; progress and retry", what, peer_,
                     outstanding_ + pending_.size());
  }
  return Ok();
}

Result<std::unique_ptr<RemoteKey>> UcxEndpoint::UnpackKey(ByteView packed) {
  if (failure_) return *failure_;
  ROAM_ASSIGN_OR_RETURN(wire::DecodedKey key, wire::DecodeKey(packed, kBackend));
  ucp_rkey_h rkey = nullptr;
  if (const ucs_status_t s = ucp_ep_rkey_unpack(ep_, key.backend_key.data(), &rkey); s != UCS_OK) {
    return UcxError(s, fmt::format("unpack a memory key of {}", peer_));
  }
  return std::unique_ptr<RemoteKey>(
      std::make_unique<UcxRemoteKey>(this, rkey, key.base, key.length));
}

Result<const UcxRemoteKey*> UcxEndpoint::CheckKey(const RemoteKey& key, std::uint64_t addr,
                                                  std::size_t len) const {
  // typeid, not dynamic_cast: the class is final and local, so this is one
  // pointer comparison on every put and get.
  const auto* ucx_key =
      typeid(key) == typeid(UcxRemoteKey) ? static_cast<const UcxRemoteKey*>(&key) : nullptr;
  if (ucx_key == nullptr || ucx_key->owner() != this) {
    return MakeError(Errc::kInvalidArgument, "memory key was not unpacked on the endpoint to {}",
                     peer_);
  }
  ROAM_TRY(wire::CheckRange(key, addr, len, peer_));
  return ucx_key;
}

InFlight* UcxEndpoint::StartOp(Completion done) {
  ++outstanding_;
  return fabric_.NewOp(serial_, std::move(done));
}

Status UcxEndpoint::Track(ucs_status_ptr_t request, InFlight* op, std::string_view what) {
  if (UCS_PTR_IS_ERR(request)) {
    const ucs_status_t s = UCS_PTR_STATUS(request);
    op->done = nullptr;  // the caller gets the error, not the callback
    fabric_.Finish(op, Ok(), this);
    return UcxError(s, fmt::format("{} to {}", what, peer_));
  }
  if (request == nullptr) fabric_.Finish(op, Ok(), this);  // done inline
  return Ok();
}

Status UcxEndpoint::Put(ByteView src, std::uint64_t remote_addr, const RemoteKey& key,
                        Completion done) {
  return Rma(&ucp_put_nbx, const_cast<std::byte*>(src.data()), src.size(), remote_addr, key,
             std::move(done), "put");
}

Status UcxEndpoint::Get(std::span<std::byte> dst, std::uint64_t remote_addr, const RemoteKey& key,
                        Completion done) {
  return Rma(&ucp_get_nbx, dst.data(), dst.size(), remote_addr, key, std::move(done), "get");
}

template <typename NbxCall>
Status UcxEndpoint::Rma(NbxCall call, std::byte* buffer, std::size_t length,
                        std::uint64_t remote_addr, const RemoteKey& key, Completion done,
                        std::string_view what) {
  ROAM_TRY(Ready(what));
  ROAM_ASSIGN_OR_RETURN(const UcxRemoteKey* rkey, CheckKey(key, remote_addr, length));
  InFlight* op = StartOp(std::move(done));
  const ucp_request_param_t p = CompletionParam(op);
  return Track(call(ep_, buffer, length, remote_addr, rkey->rkey(), &p), op, what);
}

Status UcxEndpoint::Fence() {
  if (failure_) return *failure_;
  // UCX fences the whole worker: stronger than this endpoint needs.
  if (const ucs_status_t s = ucp_worker_fence(fabric_.worker()); s != UCS_OK) {
    return UcxError(s, fmt::format("fence to {}", peer_));
  }
  return Ok();
}

Status UcxEndpoint::Flush(Completion done) {
  if (failure_) return *failure_;
  InFlight* op = StartOp(std::move(done));
  const ucp_request_param_t p = CompletionParam(op);
  return Track(ucp_ep_flush_nbx(ep_, &p), op, "flush");
}

Status UcxEndpoint::Request(std::uint16_t tag, ByteView payload, std::chrono::milliseconds timeout,
                            ReplyHandler on_reply) {
  ROAM_TRY(Ready("request"));
  ROAM_TRY(CheckMessageSize(payload.size()));
  const std::uint64_t local_id = pending_.Add(DeadlineAfter(timeout), std::move(on_reply));
  // A failed send fails the request (if it is still waiting for its reply).
  InFlight* op = StartOp([local_id, serial = serial_, fabric = &fabric_](Status sent) {
    if (sent.has_value()) return;
    if (UcxEndpoint* ep = fabric->Find(serial)) ep->pending_.Complete(local_id, sent.error());
  });
  op->keep =
      wire::EncodeHeader({wire::MessageKind::kRequest, tag, (serial_ << kSerialShift) | local_id});
  const std::size_t header_size = op->keep.size();
  op->keep.insert(op->keep.end(), payload.begin(), payload.end());
  const ucp_request_param_t p =
      CompletionParam(op, UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_EAGER);
  ucs_status_ptr_t sent = ucp_am_send_nbx(ep_, kAmRequest, op->keep.data(), header_size,
                                          op->keep.data() + header_size, payload.size(), &p);
  Status tracked = Track(sent, op, "request");
  if (!tracked.has_value()) pending_.Forget(local_id);
  return tracked;
}

}  // namespace

Result<std::unique_ptr<Fabric>> OpenUcxFabric(const FabricOptions& options) {
  auto fabric = std::make_unique<UcxFabric>(options);
  ROAM_TRY(fabric->Open());
  return std::unique_ptr<Fabric>(std::move(fabric));
}

}  // namespace roam::transport
