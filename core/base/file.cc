#include "roam/base/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <span>

#include "roam/base/unique_fd.h"

namespace roam {

Result<std::string> ReadFile(const std::filesystem::path& path, std::size_t max_bytes) {
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(errno, "open {}", path.string());
  std::string out;
  constexpr std::size_t kChunk = std::size_t{64} * 1024;
  for (;;) {
    if (out.size() > max_bytes) {
      return MakeError(Errc::kCorrupt, "{} exceeds {} bytes", path.string(), max_bytes);
    }
    const std::size_t old = out.size();
    out.resize(old + kChunk);
    const ssize_t n = ::read(fd.get(), out.data() + old, kChunk);
    out.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
    if (n == 0) return out;
    if (n < 0 && errno != EINTR) return ErrnoError(errno, "read {}", path.string());
  }
}

Status WriteFileAtomically(const std::filesystem::path& temp, const std::filesystem::path& path,
                           std::string_view bytes) {
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoError(errno, "create {}", temp.string());
  Status written = WriteAll(fd.get(), std::as_bytes(std::span(bytes)), temp);
  if (Status closed = fd.Close(temp); !closed && written) written = closed;
  if (written && ::rename(temp.c_str(), path.c_str()) != 0) {
    written = ErrnoError(errno, "rename {} to {}", temp.string(), path.string());
  }
  if (!written) ::unlink(temp.c_str());
  return written;
}

}  // namespace roam
