#include "roam/base/error_wire.h"

#include "core/base/error.pb.h"

namespace roam {
namespace {

std::string Truncated(std::string_view text) {
  return std::string(text.substr(0, kMaxWireErrorMessage));
}

}  // namespace

std::string EncodeError(const Error& error) {
  wire::Error proto;
  proto.set_code(static_cast<std::uint32_t>(error.code()));
  proto.set_sys_errno(error.sys_errno());
  proto.set_message(Truncated(error.message()));
  return proto.SerializeAsString();
}

Result<Error> DecodeError(std::string_view bytes) {
  if (bytes.size() > kMaxWireErrorSize) {
    return tl::unexpected(MakeError(Errc::kCorrupt,
                                    "encoded error of {} bytes exceeds the limit of {}",
                                    bytes.size(), kMaxWireErrorSize));
  }
  wire::Error proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return tl::unexpected(
        MakeError(Errc::kCorrupt, "malformed encoded error ({} bytes)", bytes.size()));
  }
  if (proto.sys_errno() < 0) {
    return tl::unexpected(
        MakeError(Errc::kCorrupt, "encoded error has a negative errno ({})", proto.sys_errno()));
  }
  const auto code = ErrcFromValue(proto.code());
  if (!code) {
    return Error(Errc::kInternal, proto.sys_errno(),
                 Truncated(fmt::format("peer error code {}: {}", proto.code(), proto.message())));
  }
  return Error(*code, proto.sys_errno(), Truncated(proto.message()));
}

}  // namespace roam
