// Deadlines from timeouts without overflow: `now + timeout` is undefined
// behaviour (signed overflow) for a timeout near milliseconds::max(), which
// callers use to mean "no limit".
//
// Thread-safety: pure functions.
#pragma once

#include <chrono>

namespace roam {

// `now + timeout`, saturated at the clock's latest time point; a negative
// timeout is now.
template <typename Clock>
typename Clock::time_point DeadlineAfter(typename Clock::time_point now,
                                         std::chrono::milliseconds timeout) {
  using Duration = typename Clock::duration;
  if (timeout <= std::chrono::milliseconds::zero()) return now;
  const Duration room = Clock::time_point::max() - now;
  // Compare in milliseconds, rounding the room down, so neither side overflows.
  if (timeout >= std::chrono::duration_cast<std::chrono::milliseconds>(room)) {
    return Clock::time_point::max();
  }
  return now + std::chrono::duration_cast<Duration>(timeout);
}

inline std::chrono::steady_clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  return DeadlineAfter<std::chrono::steady_clock>(std::chrono::steady_clock::now(), timeout);
}

}  // namespace roam
