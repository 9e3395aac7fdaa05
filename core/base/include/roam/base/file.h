// Whole-file reads and atomic whole-file writes.
//
// Thread-safety: free functions without shared state; two writers of one
// `temp` path collide (the second fails).
#pragma once

#include <cstddef>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>

#include "roam/base/error.h"

namespace roam {

// The whole file at `path`; kCorrupt ("<path> exceeds N bytes") if it holds
// more than `max_bytes`.
Result<std::string> ReadFile(const std::filesystem::path& path,
                             std::size_t max_bytes = std::numeric_limits<std::size_t>::max());

// Writes `bytes` to `temp` (which must not exist), then renames it to `path`,
// so that a reader sees either no file or a whole one; on failure `temp` is
// removed. No fsync: close() is where an NFS client flushes its writes and
// reports their errors.
Status WriteFileAtomically(const std::filesystem::path& temp, const std::filesystem::path& path,
                           std::string_view bytes);

}  // namespace roam
