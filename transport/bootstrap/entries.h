// What the bootstrap implementations share: argument checks, the table of
// one rank's entries and its serialized form (a RankFile), the answer to a
// Get, and how a list of ranks reads in an error message.
//
// Thread-safety: free functions over values; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::transport {

// One rank's entries, key -> value; std::less<> lets a string_view look up.
using EntryMap = std::map<std::string, std::vector<std::byte>, std::less<>>;

// kInvalidArgument unless size >= 1 and 0 <= rank < size.
Status CheckRankAndSize(int rank, int size);
// kInvalidArgument for a key or value outside the limits of bootstrap.h.
Status CheckEntry(std::string_view key, std::span<const std::byte> value);
// kInvalidArgument for a rank outside [0, size).
Status CheckPeerRank(int rank, int size);

// The largest RankFile a rank may publish: a larger one is not ours.
inline constexpr std::size_t kMaxRankFileBytes = std::size_t{256} << 20;

// Every entry of `rank` as of the end of fence round `round`, serialized
// (bootstrap.proto RankFile); kResourceExhausted above kMaxRankFileBytes.
Result<std::string> EncodeRankFile(int rank, std::uint64_t round, const EntryMap& entries);
// The entries of such a file, which must be rank `rank`'s of round `round`:
// kCorrupt or kIncompatible otherwise, with `where` (a path, a PMIx key) in
// the message.
Result<EntryMap> DecodeRankFile(std::string_view bytes, int rank, std::uint64_t round,
                                std::string_view where);

// Get's answer from `entries`, the entries `rank` published as of round
// `completed_rounds` - 1 (none completed: kNotFound).
Result<std::vector<std::byte>> FindEntry(const EntryMap& entries, int rank, std::string_view key,
                                         std::uint64_t completed_rounds);

// One rank's side of the rounds of the bootstraps that publish each rank's
// whole entries per round (the directory's files, PMIx's round keys): its
// puts, what it had put when the last round completed, and other ranks'
// entries of that round, loaded on their first Get and kept.
class RankRounds final {
 public:
  // Reads rank `rank`'s entries of round `round` from where they were
  // published.
  using Loader = std::function<Result<EntryMap>(int rank, std::uint64_t round)>;

  RankRounds(int rank, int size) : rank_(rank), size_(size), cache_(size) {}

  // After CheckEntry; overwrites an earlier put of the key.
  void Put(std::string_view key, std::span<const std::byte> value);
  // Every put so far: what this rank publishes at the next round.
  const EntryMap& mine() const { return mine_; }
  // Rounds completed, the number of the next.
  std::uint64_t completed() const { return completed_; }
  // The round under way completed at every rank.
  void Complete();
  // The Get of bootstrap.h: this rank's entries from its own copy, others'
  // through `load` (once per rank and round).
  Result<std::vector<std::byte>> Get(int rank, std::string_view key, const Loader& load) const;

 private:
  const int rank_;
  const int size_;
  EntryMap mine_;
  EntryMap published_;
  std::uint64_t completed_ = 0;
  mutable std::vector<std::optional<EntryMap>> cache_;
};

// "rank 3", "ranks 1, 4-6, 9": sorted, runs collapsed, at most 16 items
// followed by "... (N in all)".
std::string DescribeRanks(std::vector<int> ranks);

std::vector<std::byte> ToBytes(std::string_view text);
std::string_view AsText(std::span<const std::byte> bytes);

}  // namespace roam::transport
