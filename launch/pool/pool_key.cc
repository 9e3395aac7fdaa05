#include "launch/pool/pool_key.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <span>
#include <utility>

#include <openssl/crypto.h>

#include "roam/base/unique_fd.h"

namespace roam::pool {
namespace {

Status CheckLength(std::size_t size, std::string_view what) {
  if (size < PoolKey::kMinBytes) {
    return MakeError(Errc::kInvalidArgument, "pool key {} holds {} bytes; at least {} are needed",
                     what, size, PoolKey::kMinBytes);
  }
  if (size > PoolKey::kMaxBytes) {
    return MakeError(Errc::kInvalidArgument,
                     "pool key {} holds {} bytes, more than the limit of {}; it is not a pool key",
                     what, size, PoolKey::kMaxBytes);
  }
  return Ok();
}

// Everything the key file's owner and mode must satisfy, on the open
// descriptor (not the path) so that a rename between check and read cannot
// substitute another file.
Status CheckKeyFile(int fd, const std::filesystem::path& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return ErrnoError(errno, "stat pool key {}", path.string());
  const uid_t euid = ::geteuid();
  if (!S_ISREG(st.st_mode) || st.st_uid != euid || (st.st_mode & 077) != 0) {
    return MakeError(Errc::kPermissionDenied,
                     "pool key {} has mode {:04o} and owner uid {}; it must be a regular file "
                     "owned by uid {} with no group or other access (chmod 600)",
                     path.string(), st.st_mode & 07777, st.st_uid, euid);
  }
  return Ok();
}

}  // namespace

Result<PoolKey> PoolKey::Load(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) return ErrnoError(errno, "open pool key {}", path.string());
  ROAM_TRY(CheckKeyFile(fd.get(), path));

  // Read one byte past the limit to tell "too long" from "exactly the limit".
  std::string secret(kMaxBytes + 1, '\0');
  std::size_t size = 0;
  while (size < secret.size()) {
    const ssize_t n = ::read(fd.get(), secret.data() + size, secret.size() - size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      OPENSSL_cleanse(secret.data(), secret.size());
      return ErrnoError(err, "read pool key {}", path.string());
    }
    if (n == 0) break;
    size += static_cast<std::size_t>(n);
  }
  if (Status ok = CheckLength(size, path.string()); !ok) {
    OPENSSL_cleanse(secret.data(), secret.size());
    return tl::unexpected(std::move(ok).error());
  }
  PoolKey key(std::move(secret));
  key.secret_.resize(size);  // shrinks in place: the buffer is wiped on destruction
  return key;
}

Result<PoolKey> PoolKey::Generate(const std::filesystem::path& path) {
  // O_EXCL|O_NOFOLLOW: never overwrite a key, never follow a planted link.
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    const int err = errno;
    if (err == EEXIST) {
      return MakeError(Errc::kAlreadyExists, "pool key {} exists already; refusing to overwrite it",
                       path.string());
    }
    return ErrnoError(err, "create pool key {}", path.string());
  }
  // From here on a failure removes the half-made file.
  auto fail = [&path](Error error) -> Result<PoolKey> {
    ::unlink(path.c_str());
    return tl::unexpected(std::move(error));
  };
  // The umask may have narrowed 0600 further; make it exactly 0600.
  if (::fchmod(fd.get(), 0600) != 0)
    return fail(ErrnoError(errno, "chmod pool key {}", path.string()));

  auto made = Random();
  if (!made) return fail(made.error().WithContext(fmt::format("pool key {}", path.string())));
  PoolKey key = std::move(*made);
  const auto bytes = std::as_bytes(std::span(key.secret_.data(), key.secret_.size()));
  if (Status ok = WriteAll(fd.get(), bytes, path); !ok) return fail(std::move(ok).error());
  if (::fsync(fd.get()) != 0) return fail(ErrnoError(errno, "fsync pool key {}", path.string()));
  if (Status ok = fd.Close(path); !ok) return fail(std::move(ok).error());
  return key;
}

Result<PoolKey> PoolKey::Random() {
  std::string secret(kMinBytes, '\0');
  std::size_t filled = 0;
  while (filled < secret.size()) {
    // getrandom blocks only until the kernel's pool is first initialised.
    const ssize_t n = ::getrandom(secret.data() + filled, secret.size() - filled, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      OPENSSL_cleanse(secret.data(), secret.size());
      return ErrnoError(err, "getrandom");
    }
    filled += static_cast<std::size_t>(n);
  }
  return PoolKey(std::move(secret));
}

Result<PoolKey> PoolKey::FromBytes(std::string_view bytes) {
  ROAM_TRY(CheckLength(bytes.size(), "in memory"));
  return PoolKey(std::string(bytes));
}

PoolKey::PoolKey(PoolKey&& other) noexcept : secret_(std::move(other.secret_)) { other.Wipe(); }

PoolKey& PoolKey::operator=(PoolKey&& other) noexcept {
  if (this != &other) {
    Wipe();
    secret_ = std::move(other.secret_);
    other.Wipe();
  }
  return *this;
}

PoolKey::~PoolKey() { Wipe(); }

void PoolKey::Wipe() {
  // OPENSSL_cleanse is not optimised away, unlike a memset before free.
  if (!secret_.empty()) OPENSSL_cleanse(secret_.data(), secret_.size());
  secret_.clear();
}

}  // namespace roam::pool
