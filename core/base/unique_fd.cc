#include "roam/base/unique_fd.h"

#include <unistd.h>

#include <cerrno>

namespace roam {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void UniqueFd::reset() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

Status UniqueFd::Close(const std::filesystem::path& path) {
  // Never retried: Linux releases the descriptor even when close() fails.
  if (::close(std::exchange(fd_, -1)) != 0) return ErrnoError(errno, "close {}", path.string());
  return Ok();
}

Status WriteAll(int fd, std::span<const std::byte> bytes, const std::filesystem::path& path) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "write {}", path.string());
    }
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return Ok();
}

}  // namespace roam
