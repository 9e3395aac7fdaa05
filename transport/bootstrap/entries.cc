#include "transport/bootstrap/entries.h"

#include <algorithm>
#include <cstring>

#include "roam/transport/bootstrap.h"

namespace roam::transport {

Status CheckRankAndSize(int rank, int size) {
  if (size < 1) return MakeError(Errc::kInvalidArgument, "bootstrap size {} (must be >= 1)", size);
  if (rank < 0 || rank >= size) {
    return MakeError(Errc::kInvalidArgument, "rank {} outside [0, {}) of a bootstrap of size {}",
                     rank, size, size);
  }
  return Ok();
}

Status CheckEntry(std::string_view key, std::span<const std::byte> value) {
  if (key.empty()) return MakeError(Errc::kInvalidArgument, "empty bootstrap key");
  if (key.size() > kMaxBootstrapKeyBytes) {
    return MakeError(Errc::kInvalidArgument, "bootstrap key of {} bytes (at most {})", key.size(),
                     kMaxBootstrapKeyBytes);
  }
  if (key.find('\0') != std::string_view::npos) {
    return MakeError(Errc::kInvalidArgument, "bootstrap key contains a NUL byte");
  }
  if (value.size() > kMaxBootstrapValueBytes) {
    return MakeError(Errc::kInvalidArgument, "bootstrap value for '{}' of {} bytes (at most {})",
                     key, value.size(), kMaxBootstrapValueBytes);
  }
  return Ok();
}

Status CheckPeerRank(int rank, int size) {
  if (rank < 0 || rank >= size) {
    return MakeError(Errc::kInvalidArgument, "rank {} outside [0, {})", rank, size);
  }
  return Ok();
}

Result<std::vector<std::byte>> FindEntry(const EntryMap& entries, int rank, std::string_view key,
                                         std::uint64_t completed_rounds) {
  if (completed_rounds == 0) {
    return MakeError(Errc::kNotFound, "no key '{}' of rank {}: no fence has completed yet", key,
                     rank);
  }
  const auto it = entries.find(key);
  if (it == entries.end()) {
    return MakeError(Errc::kNotFound, "rank {} published no key '{}' before fence round {}", rank,
                     key, completed_rounds - 1);
  }
  return it->second;
}

std::string DescribeRanks(std::vector<int> ranks) {
  constexpr std::size_t kMaxItems = 16;
  std::ranges::sort(ranks);
  const auto [first, last] = std::ranges::unique(ranks);
  ranks.erase(first, last);
  std::string out = ranks.size() == 1 ? "rank " : "ranks ";
  std::size_t items = 0;
  for (std::size_t i = 0; i < ranks.size();) {
    std::size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (items == kMaxItems) {
      out += fmt::format(", ... ({} in all)", ranks.size());
      break;
    }
    if (items > 0) out += ", ";
    out += j == i ? fmt::format("{}", ranks[i]) : fmt::format("{}-{}", ranks[i], ranks[j]);
    ++items;
    i = j + 1;
  }
  return out;
}

std::vector<std::byte> ToBytes(std::string_view text) {
  std::vector<std::byte> out(text.size());
  if (!text.empty()) std::memcpy(out.data(), text.data(), text.size());
  return out;
}

std::string_view AsText(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace roam::transport
