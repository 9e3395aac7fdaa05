#include <poll.h>

#include <algorithm>
#include <optional>
#include <thread>
#include <vector>

#include "roam/base/deadline.h"
#include "roam/transport/transport.h"
#include "transport/ucx/ucx_fabric.h"

namespace roam::transport {

std::string Capabilities::ToString() const {
  static constexpr std::pair<Capability, std::string_view> kNames[] = {
      {Capability::kCrossProcess, "cross-process"},
      {Capability::kFaultInjection, "fault-injection"},
      {Capability::kDeterministic, "deterministic"},
  };
  std::string out;
  for (const auto& [cap, name] : kNames) {
    if (!Has(cap)) continue;
    if (!out.empty()) out += ',';
    out += name;
  }
  return out;
}

Result<std::unique_ptr<Fabric>> OpenFabric(std::string_view backend, const FabricOptions& options) {
  if (backend == "ucx") return OpenUcxFabric(options);
  if (backend == "fake") {
    return MakeError(Errc::kInvalidArgument,
                     "fake fabrics come from a FakeNetwork (roam/transport/fake.h)");
  }
  return MakeError(Errc::kNotFound, "no transport backend '{}' (have: ucx, fake)", backend);
}

Status ProgressUntil(std::span<Fabric* const> fabrics, const std::function<bool()>& done,
                     std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point deadline = DeadlineAfter(timeout);
  std::vector<pollfd> fds;
  while (true) {
    unsigned events = 0;
    for (Fabric* f : fabrics) events += f->Progress();
    if (done()) return Ok();
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      return MakeError(Errc::kTimeout, "operation did not complete within {} ms", timeout.count());
    }
    if (events != 0) continue;
    // Idle: sleep on the event fds (at most 1 ms, so that deadlines inside the
    // backends, and fabrics without an fd, are looked at again).
    fds.clear();
    bool can_sleep = true;
    for (Fabric* f : fabrics) {
      const int fd = f->event_fd();
      if (fd < 0) {
        can_sleep = false;
        continue;
      }
      if (!f->Arm()) {
        can_sleep = false;
        break;
      }
      fds.push_back({fd, POLLIN, 0});
    }
    if (!can_sleep) {
      std::this_thread::yield();
      continue;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    ::poll(fds.data(), fds.size(), static_cast<int>(std::clamp<long>(left.count(), 0, 1)));
  }
}

Status ProgressUntil(Fabric& fabric, const std::function<bool()>& done,
                     std::chrono::milliseconds timeout) {
  Fabric* const one[] = {&fabric};
  return ProgressUntil(one, done, timeout);
}

namespace {

// Starts an operation whose Completion fills `result`, then progresses until
// it ran. The result is shared with the completion: after a timeout the
// operation is still pending and its completion runs later.
Status RunBlocking(Fabric& fabric, std::chrono::milliseconds timeout,
                   const std::function<Status(Completion)>& start) {
  auto result = std::make_shared<std::optional<Status>>();
  ROAM_TRY(start([result](Status s) { *result = std::move(s); }));
  ROAM_TRY(ProgressUntil(
      fabric, [&result] { return result->has_value(); }, timeout));
  return **result;
}

}  // namespace

Status PutAndFlush(Fabric& fabric, Endpoint& ep, ByteView src, std::uint64_t remote_addr,
                   const RemoteKey& key, std::chrono::milliseconds timeout) {
  ROAM_TRY(ep.Put(src, remote_addr, key));
  return FlushBlocking(fabric, ep, timeout);
}

Status GetBlocking(Fabric& fabric, Endpoint& ep, std::span<std::byte> dst,
                   std::uint64_t remote_addr, const RemoteKey& key,
                   std::chrono::milliseconds timeout) {
  // Into a buffer the completion owns: after a timeout the get is still
  // pending and may land later, when `dst` may be gone.
  auto landing = std::make_shared<Bytes>(dst.size());
  ROAM_TRY(RunBlocking(fabric, timeout, [&](Completion done) {
    return ep.Get(*landing, remote_addr, key,
                  [landing, done = std::move(done)](Status s) { done(std::move(s)); });
  }));
  std::copy(landing->begin(), landing->end(), dst.begin());
  return Ok();
}

Status FlushBlocking(Fabric& fabric, Endpoint& ep, std::chrono::milliseconds timeout) {
  return RunBlocking(fabric, timeout, [&](Completion done) { return ep.Flush(done); });
}

Result<Bytes> RequestBlocking(Fabric& fabric, Endpoint& ep, std::uint16_t tag, ByteView payload,
                              std::chrono::milliseconds timeout) {
  auto reply = std::make_shared<std::optional<Result<Bytes>>>();
  ROAM_TRY(ep.Request(tag, payload, timeout, [reply](Result<Bytes> r) { *reply = std::move(r); }));
  // The request's own deadline answers it; the extra second only guards a
  // backend that fails to.
  const auto guard = timeout < std::chrono::milliseconds::max() - std::chrono::seconds(1)
                         ? timeout + std::chrono::seconds(1)
                         : std::chrono::milliseconds::max();
  ROAM_TRY(ProgressUntil(
      fabric, [&reply] { return reply->has_value(); }, guard));
  return std::move(**reply);
}

}  // namespace roam::transport
