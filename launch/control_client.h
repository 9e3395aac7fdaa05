// What every `roam` pool command does to talk to its node's roamd: connect
// to the node's control socket (launch/daemon/control_socket.h says which),
// send a control.proto request, read replies; and how a command complains.
//
// Thread-safety: plain functions; each call uses its own connection.
#pragma once

#include <string>

#include "launch/daemon/control.pb.h"
#include "roam/base/error.h"
#include "roam/base/unique_fd.h"

namespace roam::launch {

// "roam: COMMAND: MESSAGE" on stderr, one line.
void Complain(const char* command, const std::string& message);

// Sends `request` (the control version set) on a connection.
Status SendRequest(int fd, control::Request request);
// A connection to roamd with `request` sent on it.
Result<UniqueFd> Open(control::Request request);
// The next reply; roamd's Error as an error; kUnavailable when roamd
// closed the connection.
Result<control::Reply> ReceiveReply(int fd);
// One request, one reply.
Result<control::Reply> Call(control::Request request);

}  // namespace roam::launch
