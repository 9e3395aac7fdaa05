// Invariant checks. A broken invariant is a bug: roam stops at once, loudly
// (file, line, condition, message), rather than carry on with state it can
// no longer trust. Conditions that input, peers or the OS can cause are not
// invariants: they return an Error (roam/base/error.h).
//
// Thread-safety: safe from any thread; a failing check aborts the process.
#pragma once

#include <string_view>

#include <fmt/format.h>

#include "roam/base/error.h"

namespace roam::internal {

[[noreturn]] void CheckFailed(const char* file, int line, const char* condition,
                              std::string_view message = {});

}  // namespace roam::internal

// ROAM_CHECK(cond) or ROAM_CHECK(cond, "format {}", args...): always on,
// release builds included.
#define ROAM_CHECK(cond, ...)                                                        \
  do {                                                                               \
    if (!(cond)) [[unlikely]]                                                        \
      ::roam::internal::CheckFailed(__FILE__, __LINE__,                              \
                                    #cond __VA_OPT__(, ::fmt::format(__VA_ARGS__))); \
  } while (0)

// ROAM_CHECK_OK(status): a Result that must hold a value; its error is printed.
#define ROAM_CHECK_OK(expr)                                                 \
  do {                                                                      \
    const auto& roam_check_result_ = (expr);                                \
    if (!roam_check_result_.has_value()) [[unlikely]]                       \
      ::roam::internal::CheckFailed(__FILE__, __LINE__, #expr,              \
                                    roam_check_result_.error().ToString()); \
  } while (0)
