#include "transport/wire/wire.h"

#include <limits>

#include "transport/wire/transport.pb.h"

namespace roam::transport::wire {
namespace {

std::string AsString(ByteView bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

Bytes AsBytes(const std::string& s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

template <typename Proto>
Result<Bytes> Serialize(const Proto& proto, std::string_view what) {
  std::string out;
  if (!proto.SerializeToString(&out)) return MakeError(Errc::kInternal, "cannot encode {}", what);
  return AsBytes(out);
}

template <typename Proto>
Status Parse(Proto& proto, ByteView bytes, std::string_view what) {
  if (bytes.size() > std::size_t{64} * 1024 ||
      !proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return MakeError(Errc::kCorrupt, "not a transport {} ({} bytes)", what, bytes.size());
  }
  return Ok();
}

Status CheckOrigin(std::uint32_t version, const std::string& from_backend, std::string_view backend,
                   std::string_view what) {
  if (version != kVersion) {
    return MakeError(Errc::kIncompatible, "transport {} of format version {}; this build reads {}",
                     what, version, kVersion);
  }
  if (from_backend != backend) {
    return MakeError(Errc::kIncompatible, "transport {} is for backend '{}', not '{}'", what,
                     from_backend, backend);
  }
  return Ok();
}

}  // namespace

Result<Bytes> EncodeAddress(std::string_view backend, std::string_view name,
                            ByteView backend_address) {
  pb::Address proto;
  proto.set_version(kVersion);
  proto.set_backend(std::string(backend));
  proto.set_name(std::string(name));
  proto.set_backend_address(AsString(backend_address));
  return Serialize(proto, "address");
}

Result<DecodedAddress> DecodeAddress(ByteView bytes, std::string_view backend) {
  pb::Address proto;
  ROAM_TRY(Parse(proto, bytes, "address"));
  ROAM_TRY(CheckOrigin(proto.version(), proto.backend(), backend, "address"));
  if (proto.backend_address().empty()) {
    return MakeError(Errc::kCorrupt, "transport address of '{}' is empty", proto.name());
  }
  return DecodedAddress{proto.name(), AsBytes(proto.backend_address())};
}

Result<Bytes> EncodeKey(std::string_view backend, std::uint64_t base, std::uint64_t length,
                        ByteView backend_key) {
  pb::PackedKey proto;
  proto.set_version(kVersion);
  proto.set_backend(std::string(backend));
  proto.set_base(base);
  proto.set_length(length);
  proto.set_backend_key(AsString(backend_key));
  return Serialize(proto, "memory key");
}

Result<DecodedKey> DecodeKey(ByteView bytes, std::string_view backend) {
  pb::PackedKey proto;
  ROAM_TRY(Parse(proto, bytes, "memory key"));
  ROAM_TRY(CheckOrigin(proto.version(), proto.backend(), backend, "memory key"));
  if (proto.length() > std::numeric_limits<std::uint64_t>::max() - proto.base()) {
    return MakeError(Errc::kCorrupt, "memory key region {:#x}+{} wraps around", proto.base(),
                     proto.length());
  }
  return DecodedKey{proto.base(), proto.length(), AsBytes(proto.backend_key())};
}

Bytes EncodeHeader(const MessageHeader& header) {
  pb::MessageHeader proto;
  proto.set_version(kVersion);
  proto.set_kind(static_cast<pb::MessageHeader::Kind>(header.kind));
  proto.set_tag(header.tag);
  proto.set_request_id(header.request_id);
  return AsBytes(proto.SerializeAsString());
}

Result<MessageHeader> DecodeHeader(ByteView bytes) {
  pb::MessageHeader proto;
  ROAM_TRY(Parse(proto, bytes, "message header"));
  if (proto.version() != kVersion) {
    return MakeError(Errc::kIncompatible,
                     "message header of format version {}; this build reads {}", proto.version(),
                     kVersion);
  }
  if (proto.tag() > std::numeric_limits<std::uint16_t>::max()) {
    return MakeError(Errc::kCorrupt, "message tag {} out of range", proto.tag());
  }
  MessageHeader header;
  switch (proto.kind()) {
    case pb::MessageHeader::REQUEST:
      header.kind = MessageKind::kRequest;
      break;
    case pb::MessageHeader::REPLY:
      header.kind = MessageKind::kReply;
      break;
    case pb::MessageHeader::ERROR_REPLY:
      header.kind = MessageKind::kErrorReply;
      break;
    default:
      return MakeError(Errc::kCorrupt, "message of unknown kind {}",
                       static_cast<int>(proto.kind()));
  }
  header.tag = static_cast<std::uint16_t>(proto.tag());
  header.request_id = proto.request_id();
  return header;
}

Status CheckRange(const RemoteKey& key, std::uint64_t addr, std::size_t len,
                  std::string_view peer) {
  const std::uint64_t base = key.base();
  const std::uint64_t end = base + key.length();
  if (addr < base || addr > end || len > end - addr) {
    return MakeError(Errc::kInvalidArgument,
                     "{} bytes at {:#x} lie outside the region {:#x}+{} of {}", len, addr, base,
                     key.length(), peer);
  }
  return Ok();
}

}  // namespace roam::transport::wire
