#include "core/migrate/staged_runs.h"

#include <algorithm>
#include <cstring>

namespace roam::migrate {
namespace {

// ForEach hands out at most this much at a time (one restore write each).
constexpr std::uint64_t kMaxRunBytes = std::uint64_t{4} << 20;

}  // namespace

Result<std::unique_ptr<StagedRuns>> StagedRuns::Create(std::span<const std::byte> staging,
                                                       std::vector<wire::Run> runs) {
  std::uint64_t next = 0;
  for (const wire::Run& r : runs) {
    if (r.bytes == 0 || r.bytes % ckpt::kPageSize != 0 || r.vaddr % ckpt::kPageSize != 0 ||
        r.vaddr < next) {
      return MakeError(Errc::kCorrupt, "staged run at {:#x} of {} bytes is out of order", r.vaddr,
                       r.bytes);
    }
    if (r.offset > staging.size() || r.bytes > staging.size() - r.offset) {
      return MakeError(Errc::kCorrupt, "staged run at {:#x} lies past the staging ({} + {} > {})",
                       r.vaddr, r.offset, r.bytes, staging.size());
    }
    next = r.vaddr + r.bytes;
  }
  return std::unique_ptr<StagedRuns>(new StagedRuns(staging, std::move(runs)));
}

Status StagedRuns::ForEach(const RunFn& fn) {
  for (const wire::Run& r : runs_) {
    for (std::uint64_t done = 0; done < r.bytes; done += kMaxRunBytes) {
      const std::uint64_t n = std::min(kMaxRunBytes, r.bytes - done);
      ROAM_TRY(fn(r.vaddr + done, staging_.subspan(r.offset + done, n)));
    }
  }
  return Ok();
}

Result<bool> StagedRuns::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  if (out4k.size() != ckpt::kPageSize || vaddr % ckpt::kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument, "staged runs: ReadPage wants one aligned page");
  }
  auto it = std::upper_bound(runs_.begin(), runs_.end(), vaddr,
                             [](std::uint64_t a, const wire::Run& r) { return a < r.vaddr; });
  if (it == runs_.begin()) return false;
  --it;
  if (vaddr >= it->vaddr + it->bytes) return false;
  std::memcpy(out4k.data(), staging_.data() + it->offset + (vaddr - it->vaddr), ckpt::kPageSize);
  return true;
}

std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> StagedRuns::Extent() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  out.reserve(runs_.size());
  for (const wire::Run& r : runs_) out.emplace_back(r.vaddr, r.vaddr + r.bytes);
  return out;
}

}  // namespace roam::migrate
