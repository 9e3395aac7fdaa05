#include "core/ckpt/procfs/process.h"

#include <elf.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <optional>

#include "core/ckpt/procfs/proc_file.h"

namespace roam::ckpt::procfs {
namespace {

constexpr std::array<std::string_view, 8> kNamespaces = {"cgroup", "ipc",  "mnt",  "net",
                                                         "pid",    "time", "user", "uts"};

}  // namespace

Result<std::vector<pid_t>> ListThreads(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(std::vector<pid_t> tids, internal::ListNumericEntries(pid, "task"));
  // Pids wrap around, so the leader is not necessarily the lowest tid.
  const auto leader = std::find(tids.begin(), tids.end(), pid);
  if (leader != tids.end()) std::rotate(tids.begin(), leader, leader + 1);
  return tids;
}

Result<std::vector<pid_t>> ListChildren(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const std::vector<pid_t> tids, ListThreads(pid));
  std::vector<pid_t> children;
  for (const pid_t tid : tids) {
    const std::string name = fmt::format("task/{}/children", tid);
    auto text = internal::ReadProcFile(pid, name);
    if (!text) {
      if (text.error().sys_errno() != ENOENT) return text.error();
      // The leader's task entry lasts as long as the process (even as a
      // zombie), so its file missing means the kernel lacks it.
      if (tid == pid) {
        return MakeError(Errc::kUnsupported,
                         "/proc/{}/{} is missing: the kernel lacks CONFIG_PROC_CHILDREN", pid,
                         name);
      }
      continue;  // that thread exited since it was listed
    }
    for (const std::string_view field : internal::SplitFields(*text)) {
      const auto child = internal::ParseNumber<pid_t>(field);
      if (!child) return MakeError(Errc::kCorrupt, "/proc/{}/{}: bad pid '{}'", pid, name, field);
      children.push_back(*child);
    }
  }
  std::sort(children.begin(), children.end());
  children.erase(std::unique(children.begin(), children.end()), children.end());
  return children;
}

Result<std::vector<uint64_t>> ParseAuxv(std::string_view bytes) {
  std::vector<uint64_t> words;
  constexpr size_t kPairSize = 2 * sizeof(uint64_t);
  for (size_t at = 0; at + kPairSize <= bytes.size(); at += kPairSize) {
    std::array<uint64_t, 2> pair{};
    std::memcpy(pair.data(), bytes.data() + at, kPairSize);
    words.insert(words.end(), pair.begin(), pair.end());
    if (pair[0] == AT_NULL) return words;
  }
  return MakeError(Errc::kCorrupt, "auxv of {} bytes has no AT_NULL", bytes.size());
}

Result<std::vector<uint64_t>> ReadAuxv(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const std::string bytes, internal::ReadProcFile(pid, "auxv"));
  return ParseAuxv(bytes).map_error(
      [pid](Error e) { return std::move(e).WithContext(fmt::format("pid {}", pid)); });
}

Result<std::string> ReadLink(pid_t pid, std::string_view name) {
  return internal::ReadProcLink(pid, name);
}

Result<std::string> ReadComm(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(std::string comm, internal::ReadProcFile(pid, "comm"));
  if (comm.ends_with('\n')) comm.pop_back();
  return comm;
}

Result<uint32_t> ReadPersonality(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const std::string text, internal::ReadProcFile(pid, "personality"));
  const auto value = internal::ParseNumber<uint32_t>(internal::Trim(text), 16);
  if (!value) return MakeError(Errc::kCorrupt, "/proc/{}/personality: bad '{}'", pid, text);
  return *value;
}

Result<std::vector<std::pair<std::string, uint64_t>>> ReadNamespaces(pid_t pid) {
  std::vector<std::pair<std::string, uint64_t>> namespaces;
  for (const std::string_view ns : kNamespaces) {
    const std::string name = fmt::format("ns/{}", ns);
    auto link = internal::ReadProcLink(pid, name);
    if (!link) {
      if (link.error().sys_errno() == ENOENT) continue;  // e.g. no time namespaces before 5.6
      return link.error();
    }
    // "net:[4026531840]"
    std::string_view text = *link;
    std::optional<uint64_t> inode;
    if (text.starts_with(ns) && text.substr(ns.size()).starts_with(":[") && text.ends_with(']')) {
      inode =
          internal::ParseNumber<uint64_t>(text.substr(ns.size() + 2, text.size() - ns.size() - 3));
    }
    if (!inode) return MakeError(Errc::kCorrupt, "/proc/{}/{}: bad link '{}'", pid, name, text);
    namespaces.emplace_back(ns, *inode);
  }
  return namespaces;
}

}  // namespace roam::ckpt::procfs
