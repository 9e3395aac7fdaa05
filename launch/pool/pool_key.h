// The pool key: the shared secret by which the daemons of a pool recognise
// each other (design.md "Security"). It lives in a file readable only by the
// user roamd runs as (root); that file is the trust root of the pool: whoever
// can read it can speak for any daemon of the pool.
//
// Load refuses a key file that others could read or replace, and a key too
// short to resist guessing. Key bytes never appear in an Error, a log line or
// a string conversion; they are wiped when the PoolKey goes.
//
// Thread-safety: a PoolKey is immutable after Load/Generate; one object may
// be read (Seal/Open) from many threads at once. Move-only, so the secret has
// one owner.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include "roam/base/error.h"

namespace roam::pool {

class PoolKey final {
 public:
  // A shorter key is refused; Generate writes this many random bytes.
  static constexpr std::size_t kMinBytes = 32;
  // A larger key file is refused (it is not a key roam made).
  static constexpr std::size_t kMaxBytes = 4096;

  // Reads the key at `path`: every byte of the file is key material. Refuses
  // with kPermissionDenied (naming the path, mode and owner) a file that is
  // not a regular file owned by this process's effective uid with no group
  // or other permission bits, and with kInvalidArgument a key shorter than
  // kMinBytes or longer than kMaxBytes. The checks use fstat on the opened
  // descriptor, so the file checked is the file read.
  static Result<PoolKey> Load(const std::filesystem::path& path);

  // Creates a new key file at `path` (mode 0600, owned by the caller) holding
  // kMinBytes from getrandom, and returns the key. kAlreadyExists if
  // anything is at `path` already: an existing key is never overwritten.
  static Result<PoolKey> Generate(const std::filesystem::path& path);

  // A new key of kMinBytes from getrandom, in memory only (a pool whose
  // members receive it some other way: through the launcher under PMIx).
  static Result<PoolKey> Random();

  // A key from bytes in memory, for tests and fuzz targets; the same length
  // limits as Load (kInvalidArgument).
  static Result<PoolKey> FromBytes(std::string_view bytes);

  PoolKey(PoolKey&& other) noexcept;
  PoolKey& operator=(PoolKey&& other) noexcept;
  PoolKey(const PoolKey&) = delete;
  PoolKey& operator=(const PoolKey&) = delete;
  ~PoolKey();

  // The secret, for the MAC only (envelope.cc). Never print it.
  std::string_view secret() const { return secret_; }

 private:
  explicit PoolKey(std::string secret) : secret_(std::move(secret)) {}
  void Wipe();

  std::string secret_;
};

}  // namespace roam::pool
