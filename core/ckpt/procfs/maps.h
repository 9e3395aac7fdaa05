// The memory map of a process, /proc/PID/maps: what capture walks to decide
// which ranges to send and how restore must map each one again.
//
// Thread-safety: plain functions; safe from any thread. The map is a
// snapshot: it is only stable while the target is frozen.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt::procfs {

// One line of /proc/PID/maps.
struct Vma {
  uint64_t start = 0;  // first byte
  uint64_t end = 0;    // one past the last byte
  bool read = false;
  bool write = false;
  bool exec = false;
  bool shared = false;  // 's' (MAP_SHARED) rather than 'p'
  uint64_t offset = 0;  // into the file, in bytes
  uint32_t dev_major = 0;
  uint32_t dev_minor = 0;
  uint64_t inode = 0;
  // The file, a pseudo name kept as is ("[heap]", "[stack]", "[vdso]",
  // "[vvar]", "[vvar_vclock]", "[vsyscall]", "[anon:NAME]"), or empty for
  // anonymous memory. Without the kernel's " (deleted)" suffix.
  std::string path;
  // The file was unlinked. maps cannot tell this from a file really named
  // "x (deleted)"; the inode and map_files/ can, where it matters.
  bool deleted = false;

  uint64_t size() const { return end - start; }
};

// The kernel's special mappings, by their name in maps: the vdso block
// ([vvar], [vvar_vclock], [vdso]: restore moves it as one block to the saved
// addresses) and [vsyscall] (fixed by the kernel, never moved or captured).
enum class Special : uint8_t { kNone, kVdso, kVvar, kVvarVclock, kVsyscall };
Special SpecialOf(std::string_view path);
inline bool InVdsoBlock(Special s) {
  return s == Special::kVdso || s == Special::kVvar || s == Special::kVvarVclock;
}

// The text of a maps file. A line that does not parse is Errc::kCorrupt
// naming its (1-based) line number.
Result<std::vector<Vma>> ParseMaps(std::string_view text);
Result<std::vector<Vma>> ReadMaps(pid_t pid);

}  // namespace roam::ckpt::procfs
