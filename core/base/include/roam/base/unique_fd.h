// An owned file descriptor (closed when the owner goes, moved, never
// copied), and complete writes to a descriptor.
//
// Thread-safety: UniqueFd is a move-only value used by one thread at a time.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <utility>

#include "roam/base/error.h"

namespace roam {

class UniqueFd final {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives the descriptor up without closing it.
  int release() { return std::exchange(fd_, -1); }
  // Closes now, if open, ignoring what close() reports (Linux releases the
  // descriptor even when close fails; for a socket nothing is worth acting
  // on).
  void reset();
  // Closes now, reporting the error close() may carry (NFS write-back);
  // `path` names the file in the error.
  Status Close(const std::filesystem::path& path);

 private:
  int fd_ = -1;
};

// Writes all of `bytes`, retrying short writes and EINTR; `path` names the
// file in the error.
Status WriteAll(int fd, std::span<const std::byte> bytes, const std::filesystem::path& path);

}  // namespace roam
