// Little-endian packing of fixed-width integers into byte buffers, for the
// image formats (page_stream.h, image_dir.h). Fields are copied with
// std::memcpy, never by casting a struct over the bytes: the formats have no
// padding, and the bytes may sit at any alignment (an mmap'd file, a fuzz
// input).
//
// Thread-safety: pure functions.
#pragma once

#include <bit>
#include <cstddef>
#include <cstring>
#include <type_traits>

namespace roam::ckpt {

// roam runs on x86-64 only; a big-endian port would byte-swap here.
static_assert(std::endian::native == std::endian::little, "image formats assume little-endian");

template <typename T>
requires std::is_unsigned_v<T>
void PutLe(std::byte* out, T value) { std::memcpy(out, &value, sizeof value); }

template <typename T>
requires std::is_unsigned_v<T> T GetLe(const std::byte* in) {
  T value;
  std::memcpy(&value, in, sizeof value);
  return value;
}

}  // namespace roam::ckpt
