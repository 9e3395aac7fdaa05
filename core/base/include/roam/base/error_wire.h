// The versioned wire form of an Error (core/base/error.proto), for errors
// that cross from one daemon to another or to the CLI.
//
// DecodeError treats its input as hostile: it never crashes, bounds what it
// keeps, and reports malformed input as a kCorrupt error.
// Thread-safety: free functions over values; safe from any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "roam/base/error.h"

namespace roam {

// Messages are cut to this many bytes when encoded and decoded.
inline constexpr std::size_t kMaxWireErrorMessage = 4096;
// A larger encoded error is refused without parsing.
inline constexpr std::size_t kMaxWireErrorSize = std::size_t{16} * 1024;

std::string EncodeError(const Error& error);

// The decoded error, or kCorrupt if `bytes` is not an encoded error.
Result<Error> DecodeError(std::string_view bytes);

}  // namespace roam
