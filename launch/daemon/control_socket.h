// The node's control socket: how `roam` reaches its node's roamd. An AF_UNIX
// SOCK_SEQPACKET socket bound to a path: one datagram is one message
// (control.proto), so messages need no framing, and the kernel tells the
// daemon who is calling (SO_PEERCRED, SO_PEERGROUPS), never the message.
//
// Which path: a path-bound Unix socket is not separated by network
// namespace, and several roamds share one host in the local pool (and under
// Slurm on one host), so every roamd is told its path (--socket) and roam
// finds it (ControlSocketPath): $ROAM_SOCKET if set; else the system
// daemon's /run/roam/roamd.sock if it exists; else node n1 of the local
// pool named "local", if that pool is up. Both roamd's --socket and
// $ROAM_SOCKET may hold "%n", the node's name, so that one setting serves
// every node (roam reads the name from $SLURMD_NODENAME, else the host's).
//
// Thread-safety: free functions over descriptors; a descriptor is used by
// one thread at a time.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"
#include "roam/base/unique_fd.h"

namespace roam::daemon {

// A datagram larger than this is refused by both sides. Unprivileged
// senders cannot raise their socket buffer above net.core.wmem_max
// (212992 by default), so this stays below it.
inline constexpr std::size_t kMaxControlMessage = 192 * 1024;

inline constexpr std::string_view kSystemSocket = "/run/roam/roamd.sock";
inline constexpr std::string_view kLocalPoolRoot = "/run/roam/local";

// `pattern` with each "%n" replaced by `node` and "%%" by "%".
std::string ExpandNodeName(std::string_view pattern, std::string_view node);

// The path roam should use (see above). kNotFound, with what to do, when
// none applies.
Result<std::filesystem::path> ControlSocketPath();

// Binds and listens at `path` (non-blocking, close-on-exec, mode 0666: anyone
// may connect; what they may do is decided by their uid). A socket file
// nobody answers on is replaced; one a live daemon answers on is
// kAlreadyExists.
Result<UniqueFd> ListenControlSocket(const std::filesystem::path& path);

// A blocking client connection. kNotFound / kUnavailable naming the path
// when no daemon is there.
Result<UniqueFd> ConnectControlSocket(const std::filesystem::path& path);

struct CallerIdentity {
  pid_t pid = -1;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

// Who is at the other end of a connected socket, as the kernel recorded it
// at connect time.
Result<CallerIdentity> ReadCallerIdentity(int fd);

// Sends one message. Blocking sockets wait; on a non-blocking one a full
// socket is kResourceExhausted (nothing sent). A peer gone is kUnavailable.
Status SendDatagram(int fd, std::string_view bytes);

// Receives one message: nullopt when the peer closed the connection;
// kResourceExhausted on a non-blocking socket with nothing to read;
// kCorrupt for a message cut short (larger than kMaxControlMessage).
Result<std::optional<std::string>> ReceiveDatagram(int fd);

}  // namespace roam::daemon
