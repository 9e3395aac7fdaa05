// The OS calls behind the image files: opening (into a roam::UniqueFd), complete writes,
// fsync, and a read-only mapping of a whole file. Every errno of the image
// library becomes an Error here or in image_dir.cc, with the path named.
//
// Thread-safety: MappedFile is a move-only owner used by one
// thread at a time. A MappedFile's bytes stay valid while it lives, provided
// nobody truncates the file meanwhile (that would raise SIGBUS on access;
// image directories are 0700 and owned by the runtime, which never does).
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <utility>

#include "roam/base/error.h"
#include "roam/base/unique_fd.h"

namespace roam::ckpt {

using ::roam::UniqueFd;
using ::roam::WriteAll;

Result<UniqueFd> OpenFile(const std::filesystem::path& path, int flags, unsigned mode = 0);
// Writes all of `parts` in order with writev, retrying short writes and
// EINTR; at most IOV_MAX parts.
Status WriteAllV(int fd, std::span<const std::span<const std::byte>> parts,
                 const std::filesystem::path& path);
Status SyncFile(int fd, const std::filesystem::path& path);

class MappedFile final {
 public:
  static Result<MappedFile> Open(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept
      : fd_(std::move(other.fd_)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        path_(std::move(other.path_)) {}
  MappedFile& operator=(MappedFile&&) = delete;
  ~MappedFile();

  // Empty for an empty file.
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  // Copies bytes [offset, offset + out.size()) with pread: scattered small
  // reads cost ~1.5 us each this way, ~4 us as first touches of the mapping
  // (a page fault each).
  Status ReadAt(std::size_t offset, std::span<std::byte> out) const;

 private:
  MappedFile(UniqueFd fd, const std::byte* data, std::size_t size, std::filesystem::path path)
      : fd_(std::move(fd)), data_(data), size_(size), path_(std::move(path)) {}
  UniqueFd fd_;
  const std::byte* data_;
  std::size_t size_;
  std::filesystem::path path_;
};

}  // namespace roam::ckpt
