#include "core/ckpt/image/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <vector>

namespace roam::ckpt {

Result<UniqueFd> OpenFile(const std::filesystem::path& path, int flags, unsigned mode) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError(errno, "open {}", path.string());
  return UniqueFd(fd);
}

Status WriteAllV(int fd, std::span<const std::span<const std::byte>> parts,
                 const std::filesystem::path& path) {
  if (parts.size() > IOV_MAX) {
    return MakeError(Errc::kInvalidArgument, "write {}: {} parts (at most {})", path.string(),
                     parts.size(), IOV_MAX);
  }
  std::vector<iovec> iov;
  iov.reserve(parts.size());
  for (const auto& part : parts) {
    if (!part.empty()) iov.push_back({const_cast<std::byte*>(part.data()), part.size()});
  }
  std::size_t first = 0;
  while (first < iov.size()) {
    const ssize_t n = ::writev(fd, &iov[first], static_cast<int>(iov.size() - first));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "write {}", path.string());
    }
    // Skip what was written: whole parts, then the front of a partial one.
    auto done = static_cast<std::size_t>(n);
    while (first < iov.size() && done >= iov[first].iov_len) done -= iov[first++].iov_len;
    if (first < iov.size()) {
      iov[first].iov_base = static_cast<std::byte*>(iov[first].iov_base) + done;
      iov[first].iov_len -= done;
    }
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
  if (st.st_size == 0) return MappedFile(std::move(fd), nullptr, 0, path);  // mmap refuses 0
  const auto size = static_cast<std::size_t>(st.st_size);
  void* data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (data == MAP_FAILED) return ErrnoError(errno, "mmap {}", path.string());
  // Processes forked while it is mapped (a restore's stub, a pid namespace's
  // init, which lives as long as the restored process) must not hold the
  // image: it could not be freed, nor its file system unmounted.
  (void)::madvise(data, size, MADV_DONTFORK);
  return MappedFile(std::move(fd), static_cast<const std::byte*>(data), size, path);
}

Status MappedFile::ReadAt(std::size_t offset, std::span<std::byte> out) const {
  if (offset > size_ || out.size() > size_ - offset) {
    return MakeError(Errc::kInvalidArgument, "{}: read of {} bytes at {} beyond its {} bytes",
                     path_.string(), out.size(), offset, size_);
  }
  while (!out.empty()) {
    const ssize_t n = ::pread(fd_.get(), out.data(), out.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "read {}", path_.string());
    }
    if (n == 0) return MakeError(Errc::kCorrupt, "{}: shrank while open", path_.string());
    out = out.subspan(static_cast<std::size_t>(n));
    offset += static_cast<std::size_t>(n);
  }
  return Ok();
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace roam::ckpt
