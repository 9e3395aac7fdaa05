// Pages of a live process kept across pre-copy rounds: each round replaces
// the pages that changed, so the store holds the newest copy of every page
// it was given. Unlike a PageSink stream, pages may come in any order and
// again; the final capture decides which of them still belong to the image.
//
// Thread-safety: none; one thread at a time. Lifetime: a span handed to a
// ForEach callback is valid only during that call.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <span>

#include "core/ckpt/image/page_stream.h"
#include "roam/base/error.h"

namespace roam::ckpt {

class PageStore final : public PageSource {
 public:
  PageStore() = default;
  PageStore(const PageStore&) = delete;
  PageStore& operator=(const PageStore&) = delete;

  // `vaddr` page-aligned, `pages` a multiple of kPageSize: replaces or adds
  // those pages. Violations are kInvalidArgument.
  Status Put(std::uint64_t vaddr, std::span<const std::byte> pages);
  // Records that these pages are all zero (nothing is stored for them).
  void PutZero(std::uint64_t vaddr, std::uint64_t npages);
  // Forgets [vaddr, vaddr + npages pages), present or not.
  void Drop(std::uint64_t vaddr, std::uint64_t npages);
  // The stored copy of the page at `vaddr` (a shared zero page for one put
  // with PutZero), or nullptr.
  const std::byte* Find(std::uint64_t vaddr) const;

  std::uint64_t page_count() const { return pages_.size(); }

  // Runs of adjacent pages in address order (at most kRunPages each); zero
  // pages are left out, as in a page stream.
  Status ForEach(const RunFn& fn) override;
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;

 private:
  using Page = std::array<std::byte, kPageSize>;
  static constexpr std::size_t kRunPages = 256;
  std::map<std::uint64_t, Page> pages_;  // by address
  std::set<std::uint64_t> zero_;         // known all-zero pages
};

}  // namespace roam::ckpt
