// Open on hostile bytes with a fixed pool key: never crashes, refuses only
// with the codes envelope.h documents, on one line; whatever it accepts
// seals again and opens to the same contents.
#include <cstdint>
#include <string_view>

#include "launch/pool/envelope.h"
#include "launch/pool/pool_key.h"
#include "roam/base/check.h"

namespace {

// tests/launch/pool_wire_test.cc checks that the corpus's valid_envelope
// opens under this key.
constexpr std::string_view kFuzzKey = "roam pool envelope fuzz key 0001";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const roam::pool::PoolKey key = roam::pool::PoolKey::FromBytes(kFuzzKey).value();
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto opened = roam::pool::Open(key, bytes);
  if (!opened.has_value()) {
    const roam::Errc code = opened.error().code();
    ROAM_CHECK(code == roam::Errc::kCorrupt || code == roam::Errc::kPermissionDenied ||
                   code == roam::Errc::kIncompatible,
               "unexpected refusal: {}", opened.error().ToString());
    ROAM_CHECK(opened.error().ToString().find('\n') == std::string::npos);
    return 0;
  }
  ROAM_CHECK(opened->version == roam::pool::kPoolWireVersion);
  auto sealed = roam::pool::Seal(key, opened->header, opened->body);
  ROAM_CHECK_OK(sealed);
  auto again = roam::pool::Open(key, *sealed);
  ROAM_CHECK_OK(again);
  ROAM_CHECK(again->header == opened->header && again->body == opened->body);
  // Every accepted message is a replay the second time round.
  roam::pool::ReplayWindow window;
  ROAM_CHECK_OK(window.Accept(opened->header.sender, opened->header.sequence));
  ROAM_CHECK(!window.Accept(opened->header.sender, opened->header.sequence).has_value());
  return 0;
}
