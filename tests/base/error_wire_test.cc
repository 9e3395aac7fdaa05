#include "roam/base/error_wire.h"

#include <cerrno>
#include <string>

#include <gtest/gtest.h>

#include "core/base/error.pb.h"

namespace roam {
namespace {

TEST(ErrorWireTest, RoundTripKeepsEverything) {
  const Error sent(Errc::kNotMigratable, EBUSY, "pid 4242 holds a socket (fd 3)");
  const auto received = DecodeError(EncodeError(sent));
  ASSERT_TRUE(received.has_value()) << received.error().ToString();
  EXPECT_EQ(*received, sent);
}

TEST(ErrorWireTest, UnknownCodeFromANewerPeerBecomesInternal) {
  wire::Error proto;
  proto.set_code(777);
  proto.set_message("something new");
  const auto received = DecodeError(proto.SerializeAsString());
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->code(), Errc::kInternal);
  EXPECT_EQ(received->message(), "peer error code 777: something new");
}

TEST(ErrorWireTest, GarbageIsCorrupt) {
  const auto r = DecodeError(std::string("\xff\xff\xff\xff\x0f", 5));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Errc::kCorrupt);
}

TEST(ErrorWireTest, OversizedInputIsRefusedUnparsed) {
  const auto r = DecodeError(std::string(kMaxWireErrorSize + 1, 'x'));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Errc::kCorrupt);
  EXPECT_NE(r.error().message().find("exceeds the limit"), std::string::npos);
}

TEST(ErrorWireTest, NegativeErrnoIsCorrupt) {
  wire::Error proto;
  proto.set_code(static_cast<std::uint32_t>(Errc::kIo));
  proto.set_sys_errno(-5);
  const auto r = DecodeError(proto.SerializeAsString());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Errc::kCorrupt);
}

TEST(ErrorWireTest, LongAndMultiLineMessagesAreBoundedAndFlattened) {
  wire::Error proto;
  proto.set_code(static_cast<std::uint32_t>(Errc::kIo));
  proto.set_message("first\nsecond" + std::string(2 * kMaxWireErrorMessage, 'z'));
  const auto r = DecodeError(proto.SerializeAsString());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->message().size(), kMaxWireErrorMessage);
  EXPECT_EQ(r->message().substr(0, 12), "first second");

  const std::string encoded =
      EncodeError(Error(Errc::kIo, std::string(3 * kMaxWireErrorMessage, 'y')));
  EXPECT_LE(encoded.size(), kMaxWireErrorMessage + 16);
}

}  // namespace
}  // namespace roam
