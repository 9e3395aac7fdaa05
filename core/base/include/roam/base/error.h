// roam's error type: a typed reason (Errc), the OS error number where one is
// involved, and a one-line message for a person.
//
// Every fallible function across a module boundary returns Result<T> (a T or
// an Error) or Status (Result<void>); exceptions never cross a module
// boundary. errno becomes an Error in one place per OS-facing file, through
// ErrnoError(), with the context of the call ("open /x"). A refusal a user
// can hit (process not migratable, node unreachable, bad image) is an Error
// whose code says what kind of refusal it is and whose message says why.
//
// Thread-safety: Error and Result are plain values; distinct objects may be
// used from any thread, one object needs external synchronization only while
// it is being modified.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>
#include <tl/expected.hpp>

namespace roam {

// The kind of an error. The numbers are stable: they travel between daemons
// (core/base/error.proto) and their names appear in logs and --json output.
// Append only; never renumber.
enum class Errc : std::uint16_t {
  kInvalidArgument = 1,  // bad input from a user or a caller
  kNotFound = 2,         // no such process, node, file or key
  kAlreadyExists = 3,
  kPermissionDenied = 4,  // the caller may not do this
  kUnavailable = 5,       // a peer, node or service cannot be reached now
  kTimeout = 6,           // a bounded wait ran out
  kCancelled = 7,
  kResourceExhausted = 8,  // memory, disk, staging space, back-pressure
  kNotMigratable = 9,      // the process holds state roam cannot move
  kIncompatible = 10,      // kernel, CPU, protocol or image version mismatch
  kCorrupt = 11,           // an image or message fails validation
  kUnsupported = 12,       // not available on this system or backend
  kProtocol = 13,          // a peer broke the protocol
  kIo = 14,                // an OS call failed for another reason
  kInternal = 15,          // a bug, reported instead of crashing
};
inline constexpr Errc kFirstErrc = Errc::kInvalidArgument;
inline constexpr Errc kLastErrc = Errc::kInternal;

// The stable name of a code: lowercase and hyphenated ("not-migratable").
std::string_view ErrcName(Errc code);
std::optional<Errc> ErrcFromName(std::string_view name);
// nullopt for a number this build does not know (a newer peer's code).
std::optional<Errc> ErrcFromValue(std::uint32_t value);

class Error final {
 public:
  // `message` says what went wrong, without the code's name. Control
  // characters (newlines included) become spaces, so an error is always one
  // line, whatever a peer or a file put into it.
  Error(Errc code, std::string message);
  // `sys_errno` is the OS error behind it (0: none).
  Error(Errc code, int sys_errno, std::string message);

  Errc code() const { return code_; }
  int sys_errno() const { return sys_errno_; }
  const std::string& message() const { return message_; }

  // One line: "not-migratable: pid 42 holds a socket (fd 3)", and with an
  // errno "not-found: open /x: No such file or directory (ENOENT)".
  std::string ToString() const;

  // The same error with "context: " in front of its message.
  Error WithContext(std::string_view context) const&;
  Error WithContext(std::string_view context) &&;

  friend bool operator==(const Error&, const Error&) = default;

 private:
  Errc code_;
  int sys_errno_;
  std::string message_;
};

// A T or an Error. [[nodiscard]]: dropping one silently drops an error.
// tl::expected supplies the interface (has_value, value, error, and_then,
// map, or_else, ...); an Error converts implicitly, so `return Error(...)` and
// `return MakeError(...)` work in any function returning a Result. The one
// exception is Result<Error> (an error as the value, e.g. decoded from a
// peer): there an Error is the value and a failure is tl::unexpected(...).
template <typename T>
class [[nodiscard]] Result : public tl::expected<T, Error> {
  using Base = tl::expected<T, Error>;

 public:
  using Base::Base;
  Result() = default;
  Result(Error error)  // NOLINT(google-explicit-constructor)
      requires(!std::is_same_v<T, Error>)
      : Base(tl::unexpect, std::move(error)) {}
  Result(const Base& other) : Base(other) {}        // NOLINT(google-explicit-constructor)
  Result(Base&& other) : Base(std::move(other)) {}  // NOLINT(google-explicit-constructor)
};

using Status = Result<void>;

}  // namespace roam

// tl::expected's monadic operations (and_then, or_else, ...) accept only
// functions returning a tl::expected; teach its trait that a Result is one.
// The static_assert below breaks the build if a tl-expected release renames it.
template <typename T>
struct tl::detail::is_expected_impl<roam::Result<T>> : std::true_type {};
static_assert(tl::detail::is_expected<roam::Status>::value);

namespace roam {

inline Status Ok() { return {}; }

template <typename... Args>
Error MakeError(Errc code, fmt::format_string<Args...> format, Args&&... args) {
  return Error(code, fmt::format(format, std::forward<Args>(args)...));
}

// The Errc an OS error number stands for (ENOENT -> kNotFound, EACCES ->
// kPermissionDenied, ...; kIo for the rest).
Errc ErrcFromErrno(int sys_errno);

// An Error for a failed OS call: the code from ErrcFromErrno, the errno kept,
// and the message saying what was being done ("open /etc/roam/key").
template <typename... Args>
Error ErrnoError(int sys_errno, fmt::format_string<Args...> format, Args&&... args) {
  return Error(ErrcFromErrno(sys_errno), sys_errno,
               fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace roam

// Return the error of `expr` (a Result or Status) from the enclosing function,
// which returns some Result.
#define ROAM_TRY(expr)                                                             \
  do {                                                                             \
    auto roam_try_result_ = (expr);                                                \
    if (!roam_try_result_.has_value()) [[unlikely]]                                \
      return ::tl::unexpected<::roam::Error>(std::move(roam_try_result_).error()); \
  } while (0)

// `ROAM_ASSIGN_OR_RETURN(auto fd, OpenFile(path));` declares or assigns `lhs`
// from the value of `expr`, or returns its error.
#define ROAM_ASSIGN_OR_RETURN(lhs, expr) \
  ROAM_ASSIGN_OR_RETURN_IMPL_(ROAM_CONCAT_(roam_aor_, __LINE__), lhs, expr)
// NOLINTBEGIN(bugprone-macro-parentheses): lhs may be a declaration.
#define ROAM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)                 \
  auto tmp = (expr);                                                \
  if (!tmp.has_value()) [[unlikely]]                                \
    return ::tl::unexpected<::roam::Error>(std::move(tmp).error()); \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)
#define ROAM_CONCAT_(a, b) ROAM_CONCAT_IMPL_(a, b)
#define ROAM_CONCAT_IMPL_(a, b) a##b
