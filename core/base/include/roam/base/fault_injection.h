// Named fault-injection points (criu's CRIU_FAULT): a test sets $ROAM_FAULT
// to one point's name, and the code at that point then fails or drops what
// it would do, so that failure paths run without a real failure. Each point
// is documented where it is checked.
//
// Thread-safety: safe from any thread while nothing changes the environment.
#pragma once

#include <cstdlib>
#include <string_view>

namespace roam {

// True when $ROAM_FAULT names `point`.
inline bool FaultInjected(std::string_view point) {
  const char* fault = std::getenv("ROAM_FAULT");
  return fault != nullptr && point == fault;
}

}  // namespace roam
