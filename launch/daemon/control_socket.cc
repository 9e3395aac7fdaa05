#include "launch/daemon/control_socket.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <system_error>

#include "launch/daemon/launcher.h"

namespace roam::daemon {
namespace {

Result<sockaddr_un> AddressOf(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string& s = path.native();
  if (s.empty() || s.size() >= sizeof(addr.sun_path)) {
    return MakeError(Errc::kInvalidArgument, "socket path '{}' is empty or longer than {} bytes", s,
                     sizeof(addr.sun_path) - 1);
  }
  std::memcpy(addr.sun_path, s.c_str(), s.size() + 1);
  return addr;
}

Result<UniqueFd> NewSocket(int extra_flags) {
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | extra_flags, 0));
  if (!fd.valid()) return ErrnoError(errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
  return fd;
}

bool Exists(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

}  // namespace

std::string ExpandNodeName(std::string_view pattern, std::string_view node) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '%' && i + 1 < pattern.size() &&
        (pattern[i + 1] == 'n' || pattern[i + 1] == '%')) {
      if (pattern[i + 1] == 'n') {
        out += node;
      } else {
        out += '%';
      }
      ++i;
    } else {
      out += pattern[i];
    }
  }
  return out;
}

Result<std::filesystem::path> ControlSocketPath() {
  if (const char* env = std::getenv("ROAM_SOCKET"); env != nullptr && env[0] != '\0') {
    return std::filesystem::path(ExpandNodeName(env, TaskNodeName()));
  }
  if (Exists(kSystemSocket)) return std::filesystem::path(kSystemSocket);
  const std::filesystem::path local = std::filesystem::path(kLocalPoolRoot) / "local" / "n1.sock";
  if (Exists(local)) return local;
  return MakeError(Errc::kNotFound,
                   "no roamd on this node: set ROAM_SOCKET to a node's socket, start roamd, or "
                   "start a local pool with `roam pool up --local N`");
}

Result<UniqueFd> ListenControlSocket(const std::filesystem::path& path) {
  ROAM_ASSIGN_OR_RETURN(const sockaddr_un addr, AddressOf(path));
  if (Exists(path)) {
    if (ConnectControlSocket(path)) {
      return MakeError(Errc::kAlreadyExists, "another roamd answers on {}", path.string());
    }
    // Nobody answers: a socket left by a daemon that died.
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(errno, "remove stale socket {}", path.string());
    }
  }
  ROAM_ASSIGN_OR_RETURN(UniqueFd fd, NewSocket(SOCK_NONBLOCK));
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoError(errno, "bind {}", path.string());
  }
  // Anyone may connect: what a caller may do is decided by its uid.
  if (chmod(path.c_str(), 0666) != 0) return ErrnoError(errno, "chmod {}", path.string());
  if (listen(fd.get(), 128) != 0) return ErrnoError(errno, "listen {}", path.string());
  return fd;
}

Result<UniqueFd> ConnectControlSocket(const std::filesystem::path& path) {
  ROAM_ASSIGN_OR_RETURN(const sockaddr_un addr, AddressOf(path));
  ROAM_ASSIGN_OR_RETURN(UniqueFd fd, NewSocket(0));
  int rc = 0;
  do {
    rc = connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    const int err = errno;
    if (err == ENOENT) return MakeError(Errc::kNotFound, "no roamd at {}", path.string());
    if (err == ECONNREFUSED) {
      return MakeError(Errc::kUnavailable, "no roamd answers at {}", path.string());
    }
    return ErrnoError(err, "connect {}", path.string());
  }
  return fd;
}

Result<CallerIdentity> ReadCallerIdentity(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return ErrnoError(errno, "getsockopt SO_PEERCRED");
  }
  CallerIdentity who;
  who.pid = cred.pid;
  who.uid = cred.uid;
  who.gid = cred.gid;
  // SO_PEERGROUPS fails with ERANGE and sets the size needed when the
  // buffer is too small.
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 4; ++attempt) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      who.groups = std::move(groups);
      return who;
    }
    if (errno != ERANGE) return ErrnoError(errno, "getsockopt SO_PEERGROUPS");
    groups.resize(glen / sizeof(gid_t) + 1);
  }
  return MakeError(Errc::kIo, "getsockopt SO_PEERGROUPS: the group list keeps growing");
}

Status SendDatagram(int fd, std::string_view bytes) {
  if (bytes.size() > kMaxControlMessage) {
    return MakeError(Errc::kInvalidArgument, "a control message of {} bytes exceeds {} bytes",
                     bytes.size(), kMaxControlMessage);
  }
  ssize_t n = 0;
  do {
    n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    const int err = errno;
    if (err == EAGAIN) return MakeError(Errc::kResourceExhausted, "control socket full");
    if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
      return MakeError(Errc::kUnavailable, "the other end of the control socket is gone");
    }
    return ErrnoError(err, "send on control socket");
  }
  return Ok();
}

Result<std::optional<std::string>> ReceiveDatagram(int fd) {
  std::string buf(kMaxControlMessage + 1, '\0');
  ssize_t n = 0;
  do {
    n = recv(fd, buf.data(), buf.size(), MSG_TRUNC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    const int err = errno;
    if (err == EAGAIN) return MakeError(Errc::kResourceExhausted, "nothing to read");
    if (err == ECONNRESET) return std::optional<std::string>();
    return ErrnoError(err, "recv on control socket");
  }
  if (n == 0) return std::optional<std::string>();
  if (static_cast<std::size_t>(n) > kMaxControlMessage) {
    return MakeError(Errc::kCorrupt, "a control message of {} bytes exceeds {} bytes", n,
                     kMaxControlMessage);
  }
  buf.resize(static_cast<std::size_t>(n));
  return std::optional<std::string>(std::move(buf));
}

}  // namespace roam::daemon
