// DecodeError on hostile bytes: never crashes, and whatever it accepts
// re-encodes to an error that decodes to the same value, on one line.
#include <cstdint>
#include <string_view>

#include "roam/base/check.h"
#include "roam/base/error_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto decoded = roam::DecodeError(bytes);
  const roam::Error& error = decoded.has_value() ? *decoded : decoded.error();
  const std::string line = error.ToString();
  ROAM_CHECK(line.find('\n') == std::string::npos, "multi-line error: {}", line);
  if (decoded.has_value()) {
    ROAM_CHECK(error.message().size() <= roam::kMaxWireErrorMessage);
    const auto again = roam::DecodeError(roam::EncodeError(error));
    ROAM_CHECK(again.has_value() && *again == error, "re-encoding changed {}", line);
  }
  return 0;
}
