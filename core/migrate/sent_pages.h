// What a pre-copy migration has put into the target's staging so far: for
// each page, where it lies there and a 128-bit hash (XXH3-128) of the bytes
// put. A later round puts only pages whose bytes changed; the final, frozen
// pass refers the target to the copy already there for every page whose
// bytes are unchanged, and puts the rest. A hash that matched a changed page
// would restore a stale page: at 128 bits that is not a practical risk.
//
// Thread-safety: one thread. Lifetime: one migration.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>

namespace roam::migrate {

class SentPages final {
 public:
  struct Digest {
    std::uint64_t low = 0;
    std::uint64_t high = 0;
    friend bool operator==(const Digest&, const Digest&) = default;
  };
  static Digest Hash(std::span<const std::byte> page);

  // The staging offset of the copy of `vaddr` at the target, if it holds
  // exactly the bytes `digest` hashes.
  std::optional<std::uint64_t> Find(std::uint64_t vaddr, const Digest& digest) const;
  void Record(std::uint64_t vaddr, std::uint64_t offset, const Digest& digest);
  std::size_t size() const { return pages_.size(); }

 private:
  struct Entry {
    std::uint64_t offset;
    Digest digest;
  };
  std::unordered_map<std::uint64_t, Entry> pages_;  // by address
};

}  // namespace roam::migrate
