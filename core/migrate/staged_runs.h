// The pages of one migration as the target received them: runs of a
// process's pages lying at given offsets of the staging region that the
// source put them into. A PageSource over memory it does not own, for the
// restore; nothing is copied. Offsets may come in any order (pre-copy
// leaves unchanged pages where an earlier round put them); addresses are
// strictly increasing, as the run table's decoder guarantees.
//
// Thread-safety: one thread at a time. Lifetime: the staging memory must
// outlive it and stay unchanged while it is read.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "core/ckpt/image/page_stream.h"
#include "core/migrate/wire.h"
#include "roam/base/error.h"

namespace roam::migrate {

class StagedRuns final : public ckpt::PageSource {
 public:
  // kCorrupt if a run lies outside `staging` or the runs are not in
  // strictly increasing, disjoint address order.
  static Result<std::unique_ptr<StagedRuns>> Create(std::span<const std::byte> staging,
                                                    std::vector<wire::Run> runs);

  Status ForEach(const RunFn& fn) override;
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;
  bool RunsStayValid() const override { return true; }  // spans of the staging
  std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> Extent() const override;

 private:
  StagedRuns(std::span<const std::byte> staging, std::vector<wire::Run> runs)
      : staging_(staging), runs_(std::move(runs)) {}
  std::span<const std::byte> staging_;
  std::vector<wire::Run> runs_;
};

}  // namespace roam::migrate
