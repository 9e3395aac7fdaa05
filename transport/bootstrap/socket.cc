#include "transport/bootstrap/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <limits>
#include <memory>
#include <thread>

namespace roam::transport {
namespace {

// Frames are read in pieces of this size; the buffer grows as bytes arrive,
// so a header announcing a large frame costs nothing until the bytes come.
constexpr std::size_t kReadChunk = std::size_t{64} * 1024;

struct AddrInfoFree {
  void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};
using AddrInfoList = std::unique_ptr<addrinfo, AddrInfoFree>;

Result<AddrInfoList> Resolve(const HostPort& where, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  const std::string port = std::to_string(where.port);
  addrinfo* list = nullptr;
  const int rc = ::getaddrinfo(where.host.c_str(), port.c_str(), &hints, &list);
  if (rc == EAI_SYSTEM) return ErrnoError(errno, "resolve {}", where.ToString());
  if (rc != 0) {
    const Errc code = rc == EAI_AGAIN ? Errc::kUnavailable : Errc::kNotFound;
    return MakeError(code, "resolve {}: {}", where.ToString(), ::gai_strerror(rc));
  }
  return AddrInfoList(list);
}

// Small frames (hello, arrive) go out at once instead of waiting for Nagle.
void SetNoDelay(int fd) {
  const int one = 1;
  // Only latency depends on it; a failure changes nothing else.
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::array<char, kFrameHeaderBytes> EncodeHeader(std::size_t length) {
  const auto n = static_cast<std::uint32_t>(length);
  return {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
          static_cast<char>(n)};
}

std::size_t DecodeHeader(std::string_view bytes) {
  const auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<std::uint8_t>(bytes[i]));
  };
  return (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
}

}  // namespace

int MillisLeft(Deadline deadline) {
  const auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return static_cast<int>(std::min<std::int64_t>(ms, std::numeric_limits<int>::max()));
}

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Result<HostPort> ParseHostPort(std::string_view text) {
  HostPort out;
  std::string_view port;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return MakeError(Errc::kInvalidArgument, "malformed address '{}' (want [v6addr]:port)", text);
    }
    out.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return MakeError(Errc::kInvalidArgument, "malformed address '{}' (want host:port)", text);
    }
    out.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    if (out.host.find(':') != std::string::npos) {
      return MakeError(Errc::kInvalidArgument,
                       "malformed address '{}' (an IPv6 address goes in brackets: [addr]:port)",
                       text);
    }
  }
  if (out.host.empty()) {
    return MakeError(Errc::kInvalidArgument, "malformed address '{}': no host", text);
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return MakeError(Errc::kInvalidArgument, "malformed address '{}': port '{}' is not 0-65535",
                     text, port);
  }
  out.port = static_cast<std::uint16_t>(value);
  return out;
}

Result<Listener> ListenTcp(const HostPort& at) {
  ROAM_ASSIGN_OR_RETURN(const AddrInfoList list, Resolve(at, /*passive=*/true));
  std::optional<Error> last;
  for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) {
      last = ErrnoError(errno, "socket for {}", at.ToString());
      continue;
    }
    // A rank 0 restarted on the same port must not wait out TIME_WAIT.
    const int one = 1;
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
      return ErrnoError(errno, "set SO_REUSEADDR on {}", at.ToString());
    }
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last = ErrnoError(errno, "bind {}", at.ToString());
      continue;
    }
    if (::listen(fd.get(), SOMAXCONN) != 0) {
      last = ErrnoError(errno, "listen on {}", at.ToString());
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
      return ErrnoError(errno, "getsockname of {}", at.ToString());
    }
    const std::uint16_t port = bound.ss_family == AF_INET6
                                   ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                   : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    return Listener{std::move(fd), port};
  }
  if (last) return *last;
  return MakeError(Errc::kNotFound, "{} resolves to no address", at.ToString());
}

Result<UniqueFd> AcceptTcp(int listen_fd) {
  for (;;) {
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      SetNoDelay(fd);
      return UniqueFd(fd);
    }
    if (errno == EINTR) continue;
    switch (errno) {
      case EAGAIN:
      case ECONNABORTED:  // reset while queued: simply gone
      // accept(2): errors pending on the new connection are reported here
      // and are to be treated like EAGAIN; and one stray connection must not
      // fail the round, so running out of descriptors or buffers is too.
      case EPROTO:
      case ENOPROTOOPT:
      case EHOSTDOWN:
      case ENONET:
      case EHOSTUNREACH:
      case EOPNOTSUPP:
      case ENETUNREACH:
      case ENETDOWN:
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM:
        return UniqueFd();
      default:
        return ErrnoError(errno, "accept");
    }
  }
}

Result<int> WaitFor(int fd, int events, Deadline deadline) {
  for (;;) {
    pollfd p{fd, static_cast<decltype(pollfd::events)>(events), 0};
    const int n = ::poll(&p, 1, MillisLeft(deadline));
    if (n > 0) return p.revents;
    if (n == 0) return 0;
    if (errno != EINTR) return ErrnoError(errno, "poll");
  }
}

Result<UniqueFd> ConnectTcp(const HostPort& to, Deadline deadline) {
  auto backoff = std::chrono::milliseconds(5);
  int last_errno = 0;
  std::string last_what = "resolve";
  for (;;) {
    auto list = Resolve(to, /*passive=*/false);
    // Only a transient resolver failure is worth retrying.
    if (!list && list.error().code() != Errc::kUnavailable) return tl::unexpected(list.error());
    if (list) {
      for (const addrinfo* ai = list->get(); ai != nullptr; ai = ai->ai_next) {
        UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!fd.valid()) {
          // E.g. an IPv6 address on a host without IPv6: try the next one.
          last_errno = errno;
          last_what = "socket";
          continue;
        }
        int err = 0;
        if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) err = errno;
        if (err == EINPROGRESS) {
          ROAM_ASSIGN_OR_RETURN(const int revents, WaitFor(fd.get(), POLLOUT, deadline));
          if (revents == 0) {
            err = ETIMEDOUT;
          } else {
            socklen_t len = sizeof err;
            if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
          }
        }
        if (err == 0) {
          SetNoDelay(fd.get());
          return fd;
        }
        last_errno = err;
        last_what = "connect";
      }
    }
    const auto now = Clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  }
  if (last_errno == 0) {
    return MakeError(Errc::kUnavailable, "connect to {}: the name did not resolve in time",
                     to.ToString());
  }
  return Error(Errc::kUnavailable, last_errno, fmt::format("{} to {}", last_what, to.ToString()));
}

Status SendFrame(int fd, std::string_view payload, Deadline deadline, std::string_view peer) {
  const auto header = EncodeHeader(payload.size());
  std::array<std::string_view, 2> parts = {std::string_view(header.data(), header.size()), payload};
  for (std::string_view& part : parts) {
    while (!part.empty()) {
      const ssize_t n = ::send(fd, part.data(), part.size(), MSG_NOSIGNAL);
      if (n >= 0) {
        part.remove_prefix(static_cast<std::size_t>(n));
        continue;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return ErrnoError(errno, "send to {}", peer);
      ROAM_ASSIGN_OR_RETURN(const int revents, WaitFor(fd, POLLOUT, deadline));
      if (revents == 0) {
        return MakeError(Errc::kTimeout, "send to {}: {} is not reading", peer, peer);
      }
    }
  }
  return Ok();
}

void TrySendFrame(int fd, std::string_view payload) {
  std::string frame;
  const auto header = EncodeHeader(payload.size());
  frame.append(header.data(), header.size());
  frame.append(payload);
  // Best effort: the peer is being dropped, and whether it hears why is up
  // to its receive buffer.
  (void)::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  // Closing with unread input makes the kernel reset the connection, and a
  // reset can destroy that last frame before the peer reads it. So: no more
  // from us (FIN after the frame), then take what the peer still sends until
  // it closes, for a short while.
  ::shutdown(fd, SHUT_WR);
  const Deadline deadline = Clock::now() + std::chrono::milliseconds(50);
  char scratch[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, scratch, sizeof scratch, MSG_DONTWAIT);
    if (n > 0) continue;
    if (n == 0 || (errno != EAGAIN && errno != EINTR)) return;
    auto ready = WaitFor(fd, POLLIN, deadline);
    if (!ready || *ready == 0) return;
  }
}

Result<bool> FrameReader::ReadAvailable(int fd, std::string_view peer) {
  // Stop once a whole frame of the largest allowed size is buffered: a peer
  // that floods cannot make the buffer grow without bound.
  while (buffer_.size() < max_frame_ + kFrameHeaderBytes) {
    const std::size_t old = buffer_.size();
    buffer_.resize(old + kReadChunk);
    const ssize_t n = ::recv(fd, buffer_.data() + old, kReadChunk, 0);
    buffer_.resize(old + static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
    if (n > 0) continue;
    if (n == 0) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    return ErrnoError(errno, "receive from {}", peer);
  }
  return true;
}

Result<std::optional<std::string>> FrameReader::Next(std::string_view peer) {
  if (buffer_.size() < kFrameHeaderBytes) return std::optional<std::string>();
  const std::size_t length = DecodeHeader(buffer_);
  if (length > max_frame_) {
    return MakeError(Errc::kProtocol, "{} announced a frame of {} bytes (at most {})", peer, length,
                     max_frame_);
  }
  if (buffer_.size() < kFrameHeaderBytes + length) return std::optional<std::string>();
  std::string frame = buffer_.substr(kFrameHeaderBytes, length);
  buffer_.erase(0, kFrameHeaderBytes + length);
  return std::optional<std::string>(std::move(frame));
}

Result<std::string> ReceiveFrame(int fd, FrameReader& reader, Deadline deadline,
                                 std::string_view peer) {
  for (;;) {
    ROAM_ASSIGN_OR_RETURN(auto frame, reader.Next(peer));
    if (frame) return std::move(*frame);
    ROAM_ASSIGN_OR_RETURN(const int revents, WaitFor(fd, POLLIN, deadline));
    if (revents == 0) return MakeError(Errc::kTimeout, "no frame from {} in time", peer);
    ROAM_ASSIGN_OR_RETURN(const bool open, reader.ReadAvailable(fd, peer));
    if (!open) {
      ROAM_ASSIGN_OR_RETURN(frame, reader.Next(peer));
      if (frame) return std::move(*frame);
      return MakeError(Errc::kUnavailable, "{} closed the connection", peer);
    }
  }
}

}  // namespace roam::transport
