#include "core/ckpt/procfs/pagemap.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <utility>

#include "core/ckpt/procfs/proc_file.h"
#include "roam/base/check.h"

namespace roam::ckpt::procfs {
namespace {

// 64 Ki entries (512 KiB, 256 MiB of address space) per pread: few calls for
// large ranges without a large kernel-side copy per call.
constexpr size_t kChunkPages = size_t{64} * 1024;
constexpr size_t kEntrySize = sizeof(uint64_t);

}  // namespace

Result<PagemapReader> PagemapReader::Open(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const int fd, internal::OpenProcFile(pid, "pagemap"));
  return PagemapReader(pid, fd);
}

PagemapReader::PagemapReader(PagemapReader&& other) noexcept
    : pid_(other.pid_), fd_(std::exchange(other.fd_, -1)) {}

PagemapReader& PagemapReader::operator=(PagemapReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    pid_ = other.pid_;
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

PagemapReader::~PagemapReader() {
  if (fd_ >= 0) close(fd_);
}

Result<std::vector<uint64_t>> PagemapReader::Read(uint64_t start_address, size_t npages) const {
  ROAM_CHECK(fd_ >= 0, "PagemapReader::Read on a moved-from reader");
  const uint64_t first_page = start_address / kPageSize;
  constexpr uint64_t kMaxPages = std::numeric_limits<off_t>::max() / kEntrySize;
  if (npages > kMaxPages - first_page) {
    return MakeError(Errc::kInvalidArgument, "pagemap of pid {}: {} pages from {:#x} overflow",
                     pid_, npages, start_address);
  }
  std::vector<uint64_t> entries(npages);
  size_t done = 0;
  while (done < npages) {
    const size_t want = std::min(npages - done, kChunkPages) * kEntrySize;
    const auto offset = static_cast<off_t>((first_page + done) * kEntrySize);
    const ssize_t n = pread(fd_, entries.data() + done, want, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return internal::ProcError(errno, pid_, "pagemap", "pread");
    if (n == 0) {
      return MakeError(Errc::kInvalidArgument,
                       "pagemap of pid {} ends before {:#x}: past the user address space", pid_,
                       (first_page + done) * kPageSize);
    }
    // The kernel returns whole entries; a partial one would be a kernel bug.
    ROAM_CHECK(n % kEntrySize == 0, "pagemap pread returned {} bytes", n);
    done += static_cast<size_t>(n) / kEntrySize;
  }
  return entries;
}

}  // namespace roam::ckpt::procfs
