// Encoding and validation of the transport's wire forms (transport.proto):
// addresses, packed keys and control-message headers. Every decoder treats
// its input as hostile: it never crashes and reports malformed input as
// kCorrupt, another backend's or version's as kIncompatible.
//
// Thread-safety: free functions over values; safe from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "roam/base/error.h"
#include "roam/transport/transport.h"

namespace roam::transport::wire {

inline constexpr std::uint32_t kVersion = 1;

struct DecodedAddress {
  std::string name;
  Bytes backend_address;
};
Result<Bytes> EncodeAddress(std::string_view backend, std::string_view name,
                            ByteView backend_address);
Result<DecodedAddress> DecodeAddress(ByteView bytes, std::string_view backend);

struct DecodedKey {
  std::uint64_t base = 0;
  std::uint64_t length = 0;
  Bytes backend_key;
};
Result<Bytes> EncodeKey(std::string_view backend, std::uint64_t base, std::uint64_t length,
                        ByteView backend_key);
Result<DecodedKey> DecodeKey(ByteView bytes, std::string_view backend);

enum class MessageKind : std::uint8_t { kRequest = 1, kReply = 2, kErrorReply = 3 };
struct MessageHeader {
  MessageKind kind = MessageKind::kRequest;
  std::uint16_t tag = 0;
  std::uint64_t request_id = 0;
};
Bytes EncodeHeader(const MessageHeader& header);
Result<MessageHeader> DecodeHeader(ByteView bytes);

// kInvalidArgument unless [addr, addr + len) lies within `key`'s region.
Status CheckRange(const RemoteKey& key, std::uint64_t addr, std::size_t len, std::string_view peer);

}  // namespace roam::transport::wire
