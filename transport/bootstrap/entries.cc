#include "transport/bootstrap/entries.h"

#include <algorithm>
#include <cstring>

#include "roam/transport/bootstrap.h"
#include "transport/bootstrap/bootstrap.pb.h"

namespace roam::transport {
namespace {

constexpr std::uint32_t kRankFileVersion = 1;

}  // namespace

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

Result<std::string> EncodeRankFile(int rank, std::uint64_t round, const EntryMap& entries) {
  bootstrap::RankFile file;
  file.set_version(kRankFileVersion);
  file.mutable_entries()->set_rank(static_cast<std::uint32_t>(rank));
  file.mutable_entries()->set_round(round);
  for (const auto& [key, value] : entries) {
    bootstrap::Entry* e = file.mutable_entries()->add_entries();
    e->set_key(key);
    e->set_value(std::string(AsText(value)));
  }
  std::string bytes = file.SerializeAsString();
  // Refused here rather than by every reader as a corrupt file.
  if (bytes.size() > kMaxRankFileBytes) {
    return MakeError(Errc::kResourceExhausted, "rank {} would publish {} bytes (at most {})", rank,
                     bytes.size(), kMaxRankFileBytes);
  }
  return bytes;
}

Result<EntryMap> DecodeRankFile(std::string_view bytes, int rank, std::uint64_t round,
                                std::string_view where) {
  bootstrap::RankFile file;
  if (bytes.size() > kMaxRankFileBytes ||
      !file.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return MakeError(Errc::kCorrupt, "{}: not a bootstrap rank file ({} bytes)", where,
                     bytes.size());
  }
  if (file.version() != kRankFileVersion) {
    return MakeError(Errc::kIncompatible, "{}: bootstrap file version {}, this build reads {}",
                     where, file.version(), kRankFileVersion);
  }
  if (file.entries().rank() != static_cast<std::uint32_t>(rank) ||
      file.entries().round() != round) {
    return MakeError(Errc::kCorrupt, "{}: holds rank {} round {}", where, file.entries().rank(),
                     file.entries().round());
  }
  EntryMap out;
  for (const bootstrap::Entry& e : file.entries().entries()) {
    const auto value = std::as_bytes(std::span(e.value()));
    if (auto ok = CheckEntry(e.key(), value); !ok) {
      return ok.error().WithContext(std::string(where)).WithContext("corrupt bootstrap file");
    }
    out.insert_or_assign(e.key(), std::vector<std::byte>(value.begin(), value.end()));
  }
  return out;
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

void RankRounds::Put(std::string_view key, std::span<const std::byte> value) {
  mine_.insert_or_assign(std::string(key), std::vector<std::byte>(value.begin(), value.end()));
}

void RankRounds::Complete() {
  published_ = mine_;
  ++completed_;
  for (auto& cached : cache_) cached.reset();
}

Result<std::vector<std::byte>> RankRounds::Get(int rank, std::string_view key,
                                               const Loader& load) const {
  ROAM_TRY(CheckPeerRank(rank, size_));
  if (completed_ == 0 || rank == rank_) return FindEntry(published_, rank, key, completed_);
  auto& cached = cache_[static_cast<std::size_t>(rank)];
  if (!cached) {
    ROAM_ASSIGN_OR_RETURN(cached, load(rank, completed_ - 1));
  }
  return FindEntry(*cached, rank, key, completed_);
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
