#include "core/ckpt/image/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace roam::ckpt {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

Status UniqueFd::Close(const std::filesystem::path& path) {
  // Linux releases the descriptor even when close() fails: never retry.
  if (::close(std::exchange(fd_, -1)) != 0) return ErrnoError(errno, "close {}", path.string());
  return Ok();
}

Result<UniqueFd> OpenFile(const std::filesystem::path& path, int flags, unsigned mode) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError(errno, "open {}", path.string());
  return UniqueFd(fd);
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

Status SyncFile(int fd, const std::filesystem::path& path) {
  if (::fsync(fd) != 0) return ErrnoError(errno, "fsync {}", path.string());
  return Ok();
}

Result<MappedFile> MappedFile::Open(const std::filesystem::path& path) {
  ROAM_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(errno, "stat {}", path.string());
  if (!S_ISREG(st.st_mode))
    return MakeError(Errc::kCorrupt, "{}: not a regular file", path.string());
  if (st.st_size == 0) return MappedFile(nullptr, 0);  // mmap refuses a zero length
  const auto size = static_cast<std::size_t>(st.st_size);
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (data == MAP_FAILED) return ErrnoError(errno, "mmap {}", path.string());
  // The mapping keeps the file open; the descriptor is no longer needed.
  return MappedFile(static_cast<const std::byte*>(data), size);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace roam::ckpt
