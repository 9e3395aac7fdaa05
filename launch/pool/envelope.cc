#include "launch/pool/envelope.h"

#include <array>
#include <memory>
#include <utility>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "launch/pool/pool.pb.h"

namespace roam::pool {
namespace {

constexpr std::size_t kMacBytes = 32;  // SHA-256
using Mac = std::array<unsigned char, kMacBytes>;

// Prefixed to what is MACed so that a MAC made with the pool key for any
// other purpose can never pass as an envelope's. Change it only with the
// framing (never: see pool.proto).
constexpr std::string_view kMacDomain{"roam.pool.envelope\0", 19};

// How much of a claimed sender name goes into an error.
constexpr std::size_t kSenderInErrors = 64;

struct MacCtxFree {
  void operator()(EVP_MAC_CTX* ctx) const { EVP_MAC_CTX_free(ctx); }
};

// The HMAC algorithm, fetched once; an EVP_MAC may be shared by threads.
EVP_MAC* HmacAlgorithm() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}

Result<Mac> ComputeMac(const PoolKey& key, std::string_view signed_part) {
  EVP_MAC* algorithm = HmacAlgorithm();
  if (algorithm == nullptr) return MakeError(Errc::kInternal, "OpenSSL has no HMAC");
  std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(EVP_MAC_CTX_new(algorithm));
  if (!ctx) return MakeError(Errc::kResourceExhausted, "EVP_MAC_CTX_new failed");
  // OSSL_PARAM takes a mutable pointer but only reads the digest's name.
  std::array<char, 7> digest{"SHA256"};
  const std::array<OSSL_PARAM, 2> params{
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest.data(), 0),
      OSSL_PARAM_construct_end(),
  };
  const std::string_view secret = key.secret();
  Mac mac{};
  std::size_t mac_len = 0;
  if (EVP_MAC_init(ctx.get(), reinterpret_cast<const unsigned char*>(secret.data()), secret.size(),
                   params.data()) != 1 ||
      EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(kMacDomain.data()),
                     kMacDomain.size()) != 1 ||
      EVP_MAC_update(ctx.get(), reinterpret_cast<const unsigned char*>(signed_part.data()),
                     signed_part.size()) != 1 ||
      EVP_MAC_final(ctx.get(), mac.data(), &mac_len, mac.size()) != 1 || mac_len != kMacBytes) {
    return MakeError(Errc::kInternal, "HMAC-SHA256 failed");
  }
  return mac;
}

// A claimed sender name fit for one line of an error: printable ASCII,
// quoted, cut short.
std::string Printable(std::string_view name) {
  std::string out = "\"";
  for (const char c : name.substr(0, kSenderInErrors)) {
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  out += name.size() > kSenderInErrors ? "...\"" : "\"";
  return out;
}

Status CheckSender(std::string_view sender, Errc code) {
  if (sender.empty() || sender.size() > kMaxSenderBytes) {
    return MakeError(code, "sender name of {} bytes; it must have 1 to {}", sender.size(),
                     kMaxSenderBytes);
  }
  return Ok();
}

}  // namespace

namespace internal {

Result<std::string> SealAtVersion(const PoolKey& key, std::uint32_t version, const Header& header,
                                  std::string_view body) {
  ROAM_TRY(CheckSender(header.sender, Errc::kInvalidArgument));
  if (body.size() > kMaxEnvelopeBytes) {
    return MakeError(Errc::kInvalidArgument, "message body of {} bytes exceeds the limit of {}",
                     body.size(), kMaxEnvelopeBytes);
  }
  SignedPart part;
  part.set_version(version);
  part.set_sender(header.sender);
  part.set_sequence(header.sequence);
  part.set_kind(header.kind);
  part.set_body(std::string(body));

  Envelope envelope;
  // These bytes, exactly, are what the MAC covers and what the receiver
  // verifies: a receiver never re-serializes before checking.
  std::string* signed_part = envelope.mutable_signed_part();
  if (!part.SerializeToString(signed_part)) {
    return MakeError(Errc::kInternal, "serializing a pool message failed");
  }
  ROAM_ASSIGN_OR_RETURN(const Mac mac, ComputeMac(key, *signed_part));
  envelope.set_mac(mac.data(), mac.size());
  std::string out = envelope.SerializeAsString();
  if (out.size() > kMaxEnvelopeBytes) {
    return MakeError(Errc::kInvalidArgument,
                     "sealed message of {} bytes exceeds the envelope limit of {}", out.size(),
                     kMaxEnvelopeBytes);
  }
  return out;
}

}  // namespace internal

Result<std::string> Seal(const PoolKey& key, const Header& header, std::string_view body) {
  return internal::SealAtVersion(key, kPoolWireVersion, header, body);
}

Result<Opened> Open(const PoolKey& key, std::string_view bytes) {
  if (bytes.size() > kMaxEnvelopeBytes) {
    return MakeError(Errc::kCorrupt, "pool message of {} bytes exceeds the limit of {}",
                     bytes.size(), kMaxEnvelopeBytes);
  }
  Envelope envelope;
  if (!envelope.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return MakeError(Errc::kCorrupt, "malformed pool message ({} bytes)", bytes.size());
  }
  if (envelope.mac().size() != kMacBytes) {
    return MakeError(Errc::kCorrupt, "pool message carries a MAC of {} bytes; expected {}",
                     envelope.mac().size(), kMacBytes);
  }
  ROAM_ASSIGN_OR_RETURN(const Mac expected, ComputeMac(key, envelope.signed_part()));
  // Constant time: how many leading bytes matched must not leak.
  if (CRYPTO_memcmp(expected.data(), envelope.mac().data(), kMacBytes) != 0) {
    // Name the claimed sender if the unauthenticated bytes have one; it is a
    // claim, quoted and cut short, never trusted.
    SignedPart claimed;
    const bool parsed = claimed.ParseFromString(envelope.signed_part());
    const std::string who = parsed && !claimed.sender().empty() ? Printable(claimed.sender())
                                                                : std::string("an unknown sender");
    return MakeError(Errc::kPermissionDenied,
                     "message from {} fails authentication (wrong pool key or altered in transit)",
                     who);
  }

  // Authenticated from here on: a key holder sent exactly these bytes.
  SignedPart part;
  if (!part.ParseFromString(envelope.signed_part())) {
    return MakeError(Errc::kCorrupt, "malformed signed part in an authenticated pool message");
  }
  if (part.version() != kPoolWireVersion) {
    return MakeError(Errc::kIncompatible,
                     "message from {} uses pool protocol version {}; this build reads version {}",
                     Printable(part.sender()), part.version(), kPoolWireVersion);
  }
  ROAM_TRY(CheckSender(part.sender(), Errc::kCorrupt));
  Opened opened;
  opened.version = part.version();
  opened.header.sender = std::move(*part.mutable_sender());
  opened.header.sequence = part.sequence();
  opened.header.kind = part.kind();
  opened.body = std::move(*part.mutable_body());
  return opened;
}

Status ReplayWindow::Accept(std::string_view sender, std::uint64_t sequence) {
  if (!seen_any_ || sequence > highest_) {
    const std::uint64_t shift = seen_any_ ? sequence - highest_ : kWidth;
    seen_ = (shift >= kWidth ? 0 : seen_ << shift) | 1;
    highest_ = sequence;
    seen_any_ = true;
    return Ok();
  }
  const std::uint64_t behind = highest_ - sequence;
  if (behind >= kWidth) {
    return MakeError(Errc::kPermissionDenied,
                     "replayed or too old: message {} from {} is {} behind the newest ({}); the "
                     "window is {}",
                     sequence, Printable(sender), behind, highest_, kWidth);
  }
  const std::uint64_t bit = std::uint64_t{1} << behind;
  if ((seen_ & bit) != 0) {
    return MakeError(Errc::kPermissionDenied, "replayed: message {} from {} was seen already",
                     sequence, Printable(sender));
  }
  seen_ |= bit;
  return Ok();
}

Result<Opened> Receiver::Accept(std::string_view bytes) {
  auto opened = Open(*key_, bytes);
  if (!opened) {
    switch (opened.error().code()) {
      case Errc::kIncompatible:
        ++counters_.bad_version;
        break;
      case Errc::kPermissionDenied:
        ++counters_.bad_mac;
        break;
      default:  // kCorrupt, and kInternal/kResourceExhausted from OpenSSL
        ++counters_.malformed;
        break;
    }
    return opened;
  }
  if (Status fresh =
          windows_[opened->header.sender].Accept(opened->header.sender, opened->header.sequence);
      !fresh) {
    ++counters_.replayed;
    return tl::unexpected(std::move(fresh).error());
  }
  return opened;
}

}  // namespace roam::pool
