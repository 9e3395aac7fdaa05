#include "tests/transport/peer_service.h"

#include <unistd.h>

#include <atomic>
#include <cstring>

#include <xxhash.h>

namespace roam::transport::testing {

void FillPattern(std::span<std::byte> out, std::uint64_t seed, std::uint64_t first_index) {
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = PatternByte(seed, first_index + i);
}

std::uint64_t Checksum(ByteView bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

Result<std::unique_ptr<PeerService>> PeerService::Start(Fabric& fabric, std::size_t region_bytes) {
  ROAM_ASSIGN_OR_RETURN(std::unique_ptr<MemoryRegion> region, fabric.Allocate(region_bytes));
  std::unique_ptr<PeerService> service(new PeerService(std::move(region)));
  service->Serve(fabric);
  return service;
}

void PeerService::Serve(Fabric& fabric) {
  auto range_of = [this](ByteView payload) -> Result<std::span<std::byte>> {
    ROAM_ASSIGN_OR_RETURN(Range r, FromBytes<Range>(payload));
    if (r.offset > region_->size() || r.length > region_->size() - r.offset) {
      return MakeError(Errc::kInvalidArgument, "range {}+{} outside the region of {}", r.offset,
                       r.length, region_->size());
    }
    return region_->bytes().subspan(r.offset, r.length);
  };
  fabric.Handle(kEcho, [](const Message& m) -> Result<Bytes> {
    return Bytes(m.payload.begin(), m.payload.end());
  });
  fabric.Handle(kChecksum, [range_of](const Message& m) -> Result<Bytes> {
    ROAM_ASSIGN_OR_RETURN(std::span<std::byte> bytes, range_of(m.payload));
    return ToBytes(Checksum(bytes));
  });
  fabric.Handle(kFill, [range_of](const Message& m) -> Result<Bytes> {
    ROAM_ASSIGN_OR_RETURN(std::span<std::byte> bytes, range_of(m.payload));
    const Range r = *FromBytes<Range>(m.payload);
    FillPattern(bytes, r.seed, 0);
    return Bytes{};
  });
  fabric.Handle(kKey, [this](const Message&) { return region_->PackKey(); });
  fabric.Handle(kWatch, [this, range_of](const Message& m) -> Result<Bytes> {
    ROAM_ASSIGN_OR_RETURN(Watch w, FromBytes<Watch>(m.payload));
    if (w.flag_offset % sizeof(std::uint64_t) != 0) {
      return MakeError(Errc::kInvalidArgument, "flag offset {} is not 8-byte aligned",
                       w.flag_offset);
    }
    ROAM_TRY(range_of(ToBytes(Range{w.flag_offset, sizeof(std::uint64_t), 0})));
    ROAM_TRY(range_of(ToBytes(w.data)));
    watch_ = w;
    watch_result_.reset();
    return Bytes{};
  });
  fabric.Handle(kWatchResult, [this](const Message&) -> Result<Bytes> {
    Poll();
    if (!watch_result_) {
      std::uint64_t flag = 0;
      if (watch_) std::memcpy(&flag, region_->data() + watch_->flag_offset, sizeof(flag));
      return MakeError(Errc::kNotFound, "the watched flag has not appeared (flag is {})", flag);
    }
    return ToBytes(*watch_result_);
  });
  fabric.Handle(kFail, [](const Message&) -> Result<Bytes> {
    return MakeError(Errc::kNotMigratable, "refused by request");
  });
  fabric.Handle(kPause, [this](const Message& m) -> Result<Bytes> {
    ROAM_ASSIGN_OR_RETURN(std::uint64_t ms, FromBytes<std::uint64_t>(m.payload));
    paused_until_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    return Bytes{};
  });
  fabric.Handle(kExit, [](const Message&) -> Result<Bytes> { _exit(0); });
}

void PeerService::Poll() {
  if (!watch_ || watch_result_) return;
  // On one-sided paths the flag is written while we read: an atomic load,
  // and the data read after it.
  auto* flag = reinterpret_cast<std::uint64_t*>(region_->data() + watch_->flag_offset);
  if (std::atomic_ref<std::uint64_t>(*flag).load(std::memory_order_acquire) != watch_->flag_value) {
    return;
  }
  watch_result_ = Checksum(region_->bytes().subspan(watch_->data.offset, watch_->data.length));
}

}  // namespace roam::transport::testing
