#include "launch/control_client.h"

#include <cstdio>
#include <utility>

#include "launch/daemon/control_socket.h"
#include "launch/daemon/node.h"
#include "launch/daemon/pool_peers.h"

namespace roam::launch {

void Complain(const char* command, const std::string& message) {
  std::fprintf(stderr, "roam: %s: %s\n", command, message.c_str());
}

Status SendRequest(int fd, control::Request request) {
  request.set_version(daemon::kControlVersion);
  return daemon::SendDatagram(fd, request.SerializeAsString());
}

Result<UniqueFd> Open(control::Request request) {
  ROAM_ASSIGN_OR_RETURN(const auto path, daemon::ControlSocketPath());
  ROAM_ASSIGN_OR_RETURN(UniqueFd fd, daemon::ConnectControlSocket(path));
  ROAM_TRY(SendRequest(fd.get(), std::move(request)));
  return fd;
}

Result<control::Reply> ReceiveReply(int fd) {
  ROAM_ASSIGN_OR_RETURN(auto bytes, daemon::ReceiveDatagram(fd));
  if (!bytes) return MakeError(Errc::kUnavailable, "roamd closed the connection");
  control::Reply reply;
  if (!reply.ParseFromString(*bytes)) return MakeError(Errc::kCorrupt, "unreadable reply");
  if (reply.has_error()) return daemon::FromWire(reply.error());
  return reply;
}

Result<control::Reply> Call(control::Request request) {
  ROAM_ASSIGN_OR_RETURN(const UniqueFd fd, Open(std::move(request)));
  return ReceiveReply(fd.get());
}

}  // namespace roam::launch
