#include "core/ckpt/procfs/pagemap.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <utility>

#include "core/ckpt/kernel_uapi.h"
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

Result<std::vector<PageRange>> PagemapReader::Scan(uint64_t start, uint64_t end) const {
  ROAM_CHECK(fd_ >= 0, "PagemapReader::Scan on a moved-from reader");
  std::vector<PageRange> out;
  std::vector<page_region> regions(512);
  for (uint64_t at = start; at < end;) {
    pm_scan_arg arg{};
    arg.size = sizeof(arg);
    arg.start = at;
    arg.end = end;
    arg.vec = reinterpret_cast<uintptr_t>(regions.data());
    arg.vec_len = regions.size();
    arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
    arg.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO;
    const int n = ioctl(fd_, PAGEMAP_SCAN, &arg);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == ENOTTY || errno == EINVAL) && at == start && out.empty()) {
      break;  // no PAGEMAP_SCAN here: read the entries below
    }
    if (n < 0) return internal::ProcError(errno, pid_, "pagemap", "PAGEMAP_SCAN");
    for (int i = 0; i < n; ++i) {
      const auto& r = regions[static_cast<size_t>(i)];
      out.push_back(PageRange{r.start, r.end, (r.categories & PAGE_IS_PRESENT) != 0,
                              (r.categories & PAGE_IS_SWAPPED) != 0,
                              (r.categories & PAGE_IS_FILE) != 0,
                              (r.categories & PAGE_IS_PFNZERO) != 0});
    }
    if (arg.walk_end <= at || arg.walk_end >= end) return out;
    at = arg.walk_end;  // the buffer filled up: go on from there
  }
  if (start >= end) return out;
  // Without the ioctl: the same runs from the entries (no zero-page bit).
  ROAM_ASSIGN_OR_RETURN(const auto entries, Read(start, (end - start) / kPageSize));
  for (size_t i = 0; i < entries.size(); ++i) {
    const uint64_t e = entries[i];
    if (!IsPresent(e) && !IsSwapped(e)) continue;
    const PageRange page{start + i * kPageSize, start + (i + 1) * kPageSize,           IsPresent(e),
                         IsSwapped(e),          IsPresent(e) && IsFileOrSharedAnon(e), false};
    if (!out.empty() && out.back().end == page.start && out.back().present == page.present &&
        out.back().swapped == page.swapped && out.back().file == page.file) {
      out.back().end = page.end;
    } else {
      out.push_back(page);
    }
  }
  return out;
}

}  // namespace roam::ckpt::procfs
