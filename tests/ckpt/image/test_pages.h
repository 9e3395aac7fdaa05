// Page contents for the image tests: `n` pages filled with `fill`, the first
// byte of page i being fill + i, so that a page that moved or was swapped
// with another shows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/ckpt/image/page_stream.h"

namespace roam::ckpt::testing {

inline std::vector<std::byte> Pages(std::size_t n, std::uint8_t fill) {
  std::vector<std::byte> out(n * kPageSize, std::byte{fill});
  for (std::size_t i = 0; i < n; ++i) out[i * kPageSize] = std::byte(fill + i);
  return out;
}

}  // namespace roam::ckpt::testing
