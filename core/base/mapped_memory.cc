#include "roam/base/mapped_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace roam {

Result<void*> MapFaultedIn(std::size_t bytes, const char* what) {
  void* memory = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return ErrnoError(errno, "map {} bytes of {}", bytes, what);
  if (::madvise(memory, bytes, MADV_POPULATE_WRITE) != 0) {
    if (errno != EINVAL) {
      const int err = errno;
      ::munmap(memory, bytes);
      return ErrnoError(err, "fault in {} bytes of {}", bytes, what);
    }
    const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    auto* pages = static_cast<volatile std::byte*>(memory);
    for (std::size_t i = 0; i < bytes; i += page) pages[i] = std::byte{0};
  }
  return memory;
}

}  // namespace roam
