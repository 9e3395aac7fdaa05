// What both bootstrap implementations share: argument checks, the table of
// one rank's entries, the answer to a Get, and how a list of ranks reads in
// an error message.
//
// Thread-safety: free functions over values; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
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

// Get's answer from `entries`, the entries `rank` published as of round
// `completed_rounds` - 1 (none completed: kNotFound).
Result<std::vector<std::byte>> FindEntry(const EntryMap& entries, int rank, std::string_view key,
                                         std::uint64_t completed_rounds);

// "rank 3", "ranks 1, 4-6, 9": sorted, runs collapsed, at most 16 items
// followed by "... (N in all)".
std::string DescribeRanks(std::vector<int> ranks);

std::vector<std::byte> ToBytes(std::string_view text);
std::string_view AsText(std::span<const std::byte> bytes);

}  // namespace roam::transport
