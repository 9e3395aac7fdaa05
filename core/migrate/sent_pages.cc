#include "core/migrate/sent_pages.h"

#include <xxhash.h>

namespace roam::migrate {

SentPages::Digest SentPages::Hash(std::span<const std::byte> page) {
  const XXH128_hash_t h = XXH3_128bits(page.data(), page.size());
  return Digest{h.low64, h.high64};
}

std::optional<std::uint64_t> SentPages::Find(std::uint64_t vaddr, const Digest& digest) const {
  auto it = pages_.find(vaddr);
  if (it == pages_.end() || !(it->second.digest == digest)) return std::nullopt;
  return it->second.offset;
}

void SentPages::Record(std::uint64_t vaddr, std::uint64_t offset, const Digest& digest) {
  pages_[vaddr] = Entry{offset, digest};
}

}  // namespace roam::migrate
