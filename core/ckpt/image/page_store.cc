#include "core/ckpt/image/page_store.h"

#include <cstring>
#include <vector>

namespace roam::ckpt {

Status PageStore::Put(std::uint64_t vaddr, std::span<const std::byte> pages) {
  if (vaddr % kPageSize != 0 || pages.size() % kPageSize != 0) {
    return MakeError(Errc::kInvalidArgument, "page store: unaligned run {:#x}+{}", vaddr,
                     pages.size());
  }
  for (std::size_t off = 0; off < pages.size(); off += kPageSize) {
    zero_.erase(vaddr + off);
    std::memcpy(pages_[vaddr + off].data(), pages.data() + off, kPageSize);
  }
  return Ok();
}

void PageStore::PutZero(std::uint64_t vaddr, std::uint64_t npages) {
  for (std::uint64_t i = 0; i < npages; ++i) {
    pages_.erase(vaddr + i * kPageSize);
    zero_.insert(vaddr + i * kPageSize);
  }
}

void PageStore::Drop(std::uint64_t vaddr, std::uint64_t npages) {
  const std::uint64_t end = vaddr + npages * kPageSize;
  pages_.erase(pages_.lower_bound(vaddr), pages_.lower_bound(end));
  zero_.erase(zero_.lower_bound(vaddr), zero_.lower_bound(end));
}

const std::byte* PageStore::Find(std::uint64_t vaddr) const {
  static const Page kZero{};
  if (const auto it = pages_.find(vaddr); it != pages_.end()) return it->second.data();
  return zero_.count(vaddr) != 0 ? kZero.data() : nullptr;
}

Status PageStore::ForEach(const RunFn& fn) {
  std::vector<std::byte> run;
  run.reserve(kRunPages * kPageSize);
  std::uint64_t start = 0;
  auto flush = [&]() -> Status {
    if (run.empty()) return Ok();
    ROAM_TRY(fn(start, std::span<const std::byte>(run)));
    run.clear();
    return Ok();
  };
  for (const auto& [vaddr, page] : pages_) {
    if (run.size() == kRunPages * kPageSize || (!run.empty() && start + run.size() != vaddr)) {
      ROAM_TRY(flush());
    }
    if (run.empty()) start = vaddr;
    run.insert(run.end(), page.begin(), page.end());
  }
  return flush();
}

Result<bool> PageStore::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  if (out4k.size() != kPageSize) {
    return MakeError(Errc::kInvalidArgument, "page store: ReadPage needs a {}-byte buffer",
                     kPageSize);
  }
  const std::byte* page = Find(vaddr);
  if (page == nullptr) return false;
  std::memcpy(out4k.data(), page, kPageSize);
  return true;
}

}  // namespace roam::ckpt
