#include "roam/base/check.h"

#include <cstdio>
#include <cstdlib>

namespace roam::internal {

void CheckFailed(const char* file, int line, const char* condition, std::string_view message) {
  // One write of the whole line, so concurrent failures do not interleave.
  std::string text = fmt::format("roam: invariant failed at {}:{}: {}", file, line, condition);
  if (!message.empty()) text += fmt::format(": {}", message);
  text += '\n';
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
  std::abort();
}

}  // namespace roam::internal
