// OpenBootstrap: a bootstrap named by a spec string ("dir:PATH",
// "tcp:HOST:PORT"), for command-line flags.
#include "roam/transport/bootstrap.h"

namespace roam::transport {

Result<std::unique_ptr<Bootstrap>> OpenBootstrap(std::string_view spec, int rank, int size,
                                                 std::chrono::milliseconds connect_timeout) {
  constexpr std::string_view kDir = "dir:";
  constexpr std::string_view kTcp = "tcp:";
  if (spec.starts_with(kDir)) {
    const std::string_view path = spec.substr(kDir.size());
    if (path.empty()) {
      return MakeError(Errc::kInvalidArgument, "bootstrap spec '{}' names no directory", spec);
    }
    return OpenDirectoryBootstrap(std::filesystem::path(path), rank, size);
  }
  if (spec.starts_with(kTcp)) {
    ROAM_ASSIGN_OR_RETURN(auto tcp,
                          OpenTcpBootstrap(spec.substr(kTcp.size()), rank, size, connect_timeout));
    return std::unique_ptr<Bootstrap>(std::move(tcp));
  }
  return MakeError(Errc::kInvalidArgument,
                   "unknown bootstrap spec '{}' (want dir:PATH or tcp:HOST:PORT)", spec);
}

}  // namespace roam::transport
