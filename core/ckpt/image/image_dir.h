// An image directory: what `roam checkpoint -o DIR` writes and `roam restore
// DIR` reads. It holds meta.img (the roam.image.Image metadata) and
// pages.img (the page stream, page_stream.h), and is private to its owner
// (mode 0700: it holds the process's memory).
//
// meta.img format (little-endian, no padding):
//   magic "ROAMIMG\0"  format version u32 (= kImageFormatVersion)
//   payload length u64  XXH3_64bits of the payload u64  payload
// where the payload is the serialized Image, at most kMaxImageMetaBytes, and
// Image.format_version equals the header's version. The file is written to
// a temporary name, fsync'ed and renamed, so a crash never leaves a partial
// meta.img.
//
// Every image read from bytes is validated (framing, then ValidateImageMeta)
// before a caller sees it: images come from disk and from peers, both
// untrusted. Thread-safety: pure functions and independent file operations;
// concurrent writers of one directory are not supported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "core/ckpt/image/image.pb.h"
#include "roam/base/error.h"

namespace roam::ckpt {

inline constexpr std::uint32_t kImageFormatVersion = 1;
inline constexpr std::size_t kMaxImageMetaBytes = std::size_t{64} << 20;

std::filesystem::path MetaPath(const std::filesystem::path& dir);   // dir/meta.img
std::filesystem::path PagesPath(const std::filesystem::path& dir);  // dir/pages.img

// Creates `dir` (0700; an existing empty directory is accepted and chmod'ed
// 0700, a non-empty one is kAlreadyExists).
Status PrepareImageDir(const std::filesystem::path& dir);
// Writes meta.img durably into a prepared directory: capture writes
// pages.img first and the metadata last, so an image without meta.img is
// never taken for a complete one. The metadata must pass ValidateImageMeta
// and carry kImageFormatVersion.
Status WriteImageMeta(const std::filesystem::path& dir, const roam::image::Image& meta);
// PrepareImageDir, then WriteImageMeta.
Status WriteImage(const std::filesystem::path& dir, const roam::image::Image& meta);
// Reads and validates dir/meta.img. Errors name the file.
Result<roam::image::Image> ReadImageMeta(const std::filesystem::path& dir);

// The meta.img encoding, for files and for images that travel between nodes.
std::string EncodeImageMeta(const roam::image::Image& meta);
Result<roam::image::Image> DecodeImageMeta(std::span<const std::byte> bytes);

// Structural checks that a forged or buggy image could violate (threads,
// registers, address space layout, descriptors, signals, compatibility
// record). Each violation is kCorrupt with a one-line reason.
Status ValidateImageMeta(const roam::image::Image& meta);

}  // namespace roam::ckpt
