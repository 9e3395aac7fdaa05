#include "core/ckpt/procfs/status.h"

#include "core/ckpt/procfs/proc_file.h"

namespace roam::ckpt::procfs {
namespace {

using internal::ParseInto;

template <typename T>
bool ParseList(std::string_view text, std::vector<T>& out) {
  std::vector<T> values;
  for (const std::string_view field : internal::SplitFields(text)) {
    if (!ParseInto(field, values.emplace_back())) return false;
  }
  out = std::move(values);
  return true;
}

bool ParseIds(std::string_view text, std::array<uint32_t, 4>& out) {
  std::vector<uint32_t> ids;
  if (!ParseList(text, ids) || ids.size() != out.size()) return false;
  std::copy(ids.begin(), ids.end(), out.begin());
  return true;
}

bool ParseBool(std::string_view text, bool& out) {
  int value = 0;
  if (!ParseInto(text, value) || (value != 0 && value != 1)) return false;
  out = value == 1;
  return true;
}

}  // namespace

Result<Status> ParseStatus(std::string_view text) {
  Status s;
  enum Required : unsigned { kName = 1, kPid = 2, kUid = 4, kGid = 8, kThreads = 16, kAll = 31 };
  unsigned seen = 0;
  int line_number = 0;
  for (const std::string_view line : internal::SplitLines(text)) {
    ++line_number;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      return MakeError(Errc::kCorrupt, "status line {}: no ':' in '{}'", line_number, line);
    }
    const std::string_view key = line.substr(0, colon);
    const std::string_view value = internal::Trim(line.substr(colon + 1));
    bool ok = true;
    if (key == "Name") {
      // Only the separating tab goes: a comm may start or end with spaces.
      std::string_view name = line.substr(colon + 1);
      if (name.starts_with('\t')) name.remove_prefix(1);
      s.name = std::string(name);
      seen |= kName;
    } else if (key == "Umask") {
      ok = ParseInto(value, s.umask, 8);
    } else if (key == "State") {
      ok = !value.empty();
      if (ok) s.state = value[0];
    } else if (key == "Tgid") {
      ok = ParseInto(value, s.tgid);
    } else if (key == "Pid") {
      ok = ParseInto(value, s.pid);
      seen |= kPid;
    } else if (key == "PPid") {
      ok = ParseInto(value, s.ppid);
    } else if (key == "TracerPid") {
      ok = ParseInto(value, s.tracer_pid);
    } else if (key == "Uid") {
      ok = ParseIds(value, s.uid);
      seen |= kUid;
    } else if (key == "Gid") {
      ok = ParseIds(value, s.gid);
      seen |= kGid;
    } else if (key == "Groups") {
      ok = ParseList(value, s.groups);
    } else if (key == "Threads") {
      ok = ParseInto(value, s.threads);
      seen |= kThreads;
    } else if (key == "SigPnd") {
      ok = ParseInto(value, s.sig_pending, 16);
    } else if (key == "ShdPnd") {
      ok = ParseInto(value, s.shd_pending, 16);
    } else if (key == "SigBlk") {
      ok = ParseInto(value, s.blocked, 16);
    } else if (key == "SigIgn") {
      ok = ParseInto(value, s.ignored, 16);
    } else if (key == "SigCgt") {
      ok = ParseInto(value, s.caught, 16);
    } else if (key == "CapInh") {
      ok = ParseInto(value, s.cap_inh, 16);
    } else if (key == "CapPrm") {
      ok = ParseInto(value, s.cap_prm, 16);
    } else if (key == "CapEff") {
      ok = ParseInto(value, s.cap_eff, 16);
    } else if (key == "CapBnd") {
      ok = ParseInto(value, s.cap_bnd, 16);
    } else if (key == "CapAmb") {
      ok = ParseInto(value, s.cap_amb, 16);
    } else if (key == "NoNewPrivs") {
      ok = ParseBool(value, s.no_new_privs);
    } else if (key == "Seccomp") {
      ok = ParseInto(value, s.seccomp);
    } else if (key == "Seccomp_filters") {
      ok = ParseInto(value, s.seccomp_filters);
    } else if (key == "NSpid") {
      ok = ParseList(value, s.ns_pid);
    } else if (key == "RssAnon") {
      ok = ParseInto(value.substr(0, value.find(' ')), s.rss_anon_kb);  // "1024 kB"
    }
    if (!ok) {
      return MakeError(Errc::kCorrupt, "status line {}: bad {} '{}'", line_number, key, value);
    }
  }
  if (seen != kAll) {
    const char* missing = !(seen & kName)  ? "Name"
                          : !(seen & kPid) ? "Pid"
                          : !(seen & kUid) ? "Uid"
                          : !(seen & kGid) ? "Gid"
                                           : "Threads";
    return MakeError(Errc::kCorrupt, "status has no {} line", missing);
  }
  return s;
}

Result<Status> ReadStatus(pid_t pid) {
  ROAM_ASSIGN_OR_RETURN(const std::string text, internal::ReadProcFile(pid, "status"));
  return ParseStatus(text).map_error(
      [pid](Error e) { return std::move(e).WithContext(fmt::format("pid {}", pid)); });
}

}  // namespace roam::ckpt::procfs
