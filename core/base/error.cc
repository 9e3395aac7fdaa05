#include "roam/base/error.h"

#include <array>
#include <cerrno>
#include <cstring>

namespace roam {
namespace {

struct ErrcEntry {
  Errc code;
  std::string_view name;
};

constexpr std::array<ErrcEntry, 15> kErrcNames = {{
    {Errc::kInvalidArgument, "invalid-argument"},
    {Errc::kNotFound, "not-found"},
    {Errc::kAlreadyExists, "already-exists"},
    {Errc::kPermissionDenied, "permission-denied"},
    {Errc::kUnavailable, "unavailable"},
    {Errc::kTimeout, "timeout"},
    {Errc::kCancelled, "cancelled"},
    {Errc::kResourceExhausted, "resource-exhausted"},
    {Errc::kNotMigratable, "not-migratable"},
    {Errc::kIncompatible, "incompatible"},
    {Errc::kCorrupt, "corrupt"},
    {Errc::kUnsupported, "unsupported"},
    {Errc::kProtocol, "protocol"},
    {Errc::kIo, "io"},
    {Errc::kInternal, "internal"},
}};

// The table is indexed by value - 1; keep it in step with the enum.
constexpr bool TableMatchesEnum() {
  for (std::size_t i = 0; i < kErrcNames.size(); ++i) {
    if (static_cast<std::size_t>(kErrcNames[i].code) != i + 1) return false;
  }
  return static_cast<std::size_t>(kLastErrc) == kErrcNames.size();
}
static_assert(TableMatchesEnum(), "kErrcNames must list every Errc in order");

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return text;
}

}  // namespace

std::string_view ErrcName(Errc code) {
  const auto index = static_cast<std::size_t>(code) - 1;
  if (index < kErrcNames.size()) return kErrcNames[index].name;
  return "unknown";
}

std::optional<Errc> ErrcFromName(std::string_view name) {
  for (const auto& entry : kErrcNames) {
    if (entry.name == name) return entry.code;
  }
  return std::nullopt;
}

std::optional<Errc> ErrcFromValue(std::uint32_t value) {
  if (value >= static_cast<std::uint32_t>(kFirstErrc) &&
      value <= static_cast<std::uint32_t>(kLastErrc)) {
    return static_cast<Errc>(value);
  }
  return std::nullopt;
}

Error::Error(Errc code, std::string message) : Error(code, 0, std::move(message)) {}

Error::Error(Errc code, int sys_errno, std::string message)
    : code_(code), sys_errno_(sys_errno), message_(OneLine(std::move(message))) {}

std::string Error::ToString() const {
  std::string out = fmt::format("{}: {}", ErrcName(code_), message_);
  if (sys_errno_ != 0) {
    // strerrordesc_np/strerrorname_np (glibc >= 2.32) are thread-safe and
    // return null for numbers they do not know.
    const char* desc = strerrordesc_np(sys_errno_);
    const char* name = strerrorname_np(sys_errno_);
    if (desc != nullptr && name != nullptr) {
      out += fmt::format(": {} ({})", desc, name);
    } else {
      out += fmt::format(": errno {}", sys_errno_);
    }
  }
  return out;
}

Error Error::WithContext(std::string_view context) const& {
  return Error(code_, sys_errno_, fmt::format("{}: {}", context, message_));
}

Error Error::WithContext(std::string_view context) && {
  message_.insert(0, fmt::format("{}: ", context));
  message_ = OneLine(std::move(message_));
  return std::move(*this);
}

Errc ErrcFromErrno(int sys_errno) {
  switch (sys_errno) {
    case EINVAL:
    case EBADF:
    case ENAMETOOLONG:
    case E2BIG:
      return Errc::kInvalidArgument;
    case ENOENT:
    case ESRCH:
    case ENXIO:
    case ENODEV:
      return Errc::kNotFound;
    case EEXIST:
      return Errc::kAlreadyExists;
    case EPERM:
    case EACCES:
      return Errc::kPermissionDenied;
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EPIPE:
    case EAGAIN:
      return Errc::kUnavailable;
    case ETIMEDOUT:
      return Errc::kTimeout;
    case ECANCELED:
    case EINTR:
      return Errc::kCancelled;
    case ENOMEM:
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case EDQUOT:
      return Errc::kResourceExhausted;
    case ENOSYS:
    case EOPNOTSUPP:
    case EAFNOSUPPORT:
    case EPROTONOSUPPORT:
      return Errc::kUnsupported;
    default:
      return Errc::kIo;
  }
}

}  // namespace roam
