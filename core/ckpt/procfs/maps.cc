#include "core/ckpt/procfs/maps.h"

#include <optional>

#include "core/ckpt/procfs/proc_file.h"

namespace roam::ckpt::procfs {
namespace {

using internal::ParseNumber;

constexpr std::string_view kDeletedSuffix = " (deleted)";

// Removes and returns the next space-separated field of `rest`.
std::string_view NextField(std::string_view& rest) {
  const size_t start = rest.find_first_not_of(' ');
  if (start == std::string_view::npos) {
    rest = {};
    return {};
  }
  const size_t end = rest.find(' ', start);
  const std::string_view field = rest.substr(start, end - start);
  rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
  return field;
}

Error Bad(std::string_view what) { return MakeError(Errc::kCorrupt, "bad {}", what); }

// "7f638bc1a000-7f638bc71000 r--p 00000000 fe:00 320475    /path".
Result<Vma> ParseLine(std::string_view line) {
  Vma vma;
  std::string_view rest = line;
  const std::string_view range = NextField(rest);
  const size_t dash = range.find('-');
  const auto start = ParseNumber<uint64_t>(range.substr(0, dash), 16);
  const auto end = dash == std::string_view::npos
                       ? std::nullopt
                       : ParseNumber<uint64_t>(range.substr(dash + 1), 16);
  if (!start || !end || *start >= *end) return Bad("address range");
  vma.start = *start;
  vma.end = *end;

  const std::string_view perms = NextField(rest);
  if (perms.size() != 4 || (perms[0] != 'r' && perms[0] != '-') ||
      (perms[1] != 'w' && perms[1] != '-') || (perms[2] != 'x' && perms[2] != '-') ||
      (perms[3] != 's' && perms[3] != 'p')) {
    return Bad("permissions");
  }
  vma.read = perms[0] == 'r';
  vma.write = perms[1] == 'w';
  vma.exec = perms[2] == 'x';
  vma.shared = perms[3] == 's';

  const auto offset = ParseNumber<uint64_t>(NextField(rest), 16);
  if (!offset) return Bad("offset");
  vma.offset = *offset;

  const std::string_view dev = NextField(rest);
  const size_t colon = dev.find(':');
  const auto major = ParseNumber<uint32_t>(dev.substr(0, colon), 16);
  const auto minor = colon == std::string_view::npos
                         ? std::nullopt
                         : ParseNumber<uint32_t>(dev.substr(colon + 1), 16);
  if (!major || !minor) return Bad("device");
  vma.dev_major = *major;
  vma.dev_minor = *minor;

  const auto inode = ParseNumber<uint64_t>(NextField(rest));
  if (!inode) return Bad("inode");
  vma.inode = *inode;

  // The kernel pads to a column and then prints the name, which may itself
  // contain spaces; so the path is everything after the padding.
  const size_t path_start = rest.find_first_not_of(' ');
  std::string_view path = path_start == std::string_view::npos ? "" : rest.substr(path_start);
  if (!path.starts_with('[') && path.ends_with(kDeletedSuffix)) {
    path.remove_suffix(kDeletedSuffix.size());
    vma.deleted = true;
  }
  vma.path = std::string(path);
  return vma;
}

}  // namespace

Special SpecialOf(std::string_view path) {
  if (path == "[vdso]") return Special::kVdso;
  if (path == "[vvar]") return Special::kVvar;
  if (path == "[vvar_vclock]") return Special::kVvarVclock;
  if (path == "[vsyscall]") return Special::kVsyscall;
  return Special::kNone;
}

Result<std::vector<Vma>> ParseMaps(std::string_view text) {
  std::vector<Vma> vmas;
  int line_number = 0;
  for (const std::string_view line : internal::SplitLines(text)) {
    ++line_number;
    Result<Vma> vma = ParseLine(line);
    if (!vma) {
      return MakeError(Errc::kCorrupt, "maps line {}: {} in '{}'", line_number,
                       vma.error().message(), line);
    }
    vmas.push_back(std::move(*vma));
  }
  return vmas;
}

Result<std::vector<Vma>> ReadMaps(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const std::string text, internal::ReadProcFile(pid, "maps"));
  return ParseMaps(text).map_error(
      [pid](Error e) { return std::move(e).WithContext(fmt::format("pid {}", pid)); });
}

}  // namespace roam::ckpt::procfs
