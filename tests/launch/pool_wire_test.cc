#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

#include "launch/pool/envelope.h"
#include "launch/pool/pool.pb.h"
#include "launch/pool/pool_key.h"
#include "tests/support/test_util.h"

namespace roam::pool {
namespace {

namespace fs = std::filesystem;

// The key tests/fuzz/pool_envelope_fuzz.cc opens its corpus with.
constexpr std::string_view kFuzzKey = "roam pool envelope fuzz key 0001";

PoolKey KeyOf(std::string_view bytes) {
  auto key = PoolKey::FromBytes(bytes);
  EXPECT_TRUE(key.has_value()) << key.error().ToString();
  return std::move(key).value();
}

void WriteFile(const fs::path& path, std::string_view bytes, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ASSERT_EQ(::fchmod(fd, mode), 0);
  ::close(fd);
}

class PoolWireTest : public ::testing::Test {
 protected:
  std::string SealOk(const Header& header, std::string_view body) {
    auto sealed = Seal(key_, header, body);
    EXPECT_TRUE(sealed.has_value()) << sealed.error().ToString();
    return sealed.value_or("");
  }

  PoolKey key_ = KeyOf("0123456789abcdef0123456789abcdef");
  Header header_{.sender = "node-a", .sequence = 7, .kind = 3};
};

TEST_F(PoolWireTest, SealOpenRoundTrip) {
  const std::string body("migrate pid 42\0with a zero", 26);
  const std::string sealed = SealOk(header_, body);
  auto opened = Open(key_, sealed);
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  EXPECT_EQ(opened->version, kPoolWireVersion);
  EXPECT_EQ(opened->header, header_);
  EXPECT_EQ(opened->body, body);
}

TEST_F(PoolWireTest, EmptyBodyRoundTrips) {
  auto opened = Open(key_, SealOk(header_, ""));
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  EXPECT_EQ(opened->body, "");
}

TEST_F(PoolWireTest, EveryFlippedBitIsRefused) {
  const std::string sealed = SealOk(header_, "a body worth protecting");
  for (std::size_t i = 0; i < sealed.size() * 8; ++i) {
    std::string altered = sealed;
    altered[i / 8] = static_cast<char>(altered[i / 8] ^ (1 << (i % 8)));
    auto opened = Open(key_, altered);
    ASSERT_FALSE(opened.has_value()) << "bit " << i << " flipped and still opened";
    const Errc code = opened.error().code();
    EXPECT_TRUE(code == Errc::kPermissionDenied || code == Errc::kCorrupt)
        << "bit " << i << ": " << opened.error().ToString();
  }
}

TEST_F(PoolWireTest, WrongKeyIsPermissionDeniedNamingSender) {
  const PoolKey other = KeyOf("another key, also 32 bytes long!");
  auto opened = Open(other, SealOk(header_, "body"));
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().code(), Errc::kPermissionDenied);
  EXPECT_NE(opened.error().message().find("\"node-a\" fails authentication"), std::string::npos)
      << opened.error().ToString();
}

TEST_F(PoolWireTest, ErrorsNeverCarryKeyBytes) {
  const PoolKey other = KeyOf("another key, also 32 bytes long!");
  auto opened = Open(other, SealOk(header_, "body"));
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().ToString().find("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(opened.error().ToString().find("another key"), std::string::npos);
}

TEST_F(PoolWireTest, NewerVersionIsIncompatibleNamingBoth) {
  auto sealed = internal::SealAtVersion(key_, kPoolWireVersion + 1, header_, "body");
  ASSERT_TRUE(sealed.has_value());
  auto opened = Open(key_, *sealed);
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().code(), Errc::kIncompatible);
  const std::string& message = opened.error().message();
  EXPECT_NE(message.find("version " + std::to_string(kPoolWireVersion + 1)), std::string::npos)
      << message;
  EXPECT_NE(message.find("reads version " + std::to_string(kPoolWireVersion)), std::string::npos)
      << message;
}

TEST_F(PoolWireTest, VersionIsAuthenticated) {
  // Rewriting the version without the key breaks the MAC: it is not a
  // label an attacker can change.
  Envelope envelope;
  ASSERT_TRUE(envelope.ParseFromString(SealOk(header_, "body")));
  SignedPart part;
  ASSERT_TRUE(part.ParseFromString(envelope.signed_part()));
  part.set_version(kPoolWireVersion + 1);
  envelope.set_signed_part(part.SerializeAsString());
  auto opened = Open(key_, envelope.SerializeAsString());
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().code(), Errc::kPermissionDenied);
}

TEST_F(PoolWireTest, HostileInputIsCorruptWithoutCrash) {
  const std::string sealed = SealOk(header_, "body");
  const std::string_view whole = sealed;
  for (std::size_t n = 0; n < sealed.size(); ++n) {
    auto opened = Open(key_, whole.substr(0, n));
    ASSERT_FALSE(opened.has_value()) << "truncated to " << n;
    EXPECT_TRUE(opened.error().code() == Errc::kCorrupt ||
                opened.error().code() == Errc::kPermissionDenied)
        << n << ": " << opened.error().ToString();
  }
  for (const std::string_view input :
       {std::string_view(""), std::string_view("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 10),
        std::string_view("garbage that is not protobuf at all")}) {
    auto opened = Open(key_, input);
    ASSERT_FALSE(opened.has_value());
    EXPECT_EQ(opened.error().code(), Errc::kCorrupt) << opened.error().ToString();
  }
}

TEST_F(PoolWireTest, OversizedIsRefusedBeforeParsing) {
  const std::string huge(kMaxEnvelopeBytes + 1, '\0');
  auto opened = Open(key_, huge);
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().code(), Errc::kCorrupt);
  EXPECT_NE(opened.error().message().find("exceeds the limit"), std::string::npos);

  auto sealed = Seal(key_, header_, std::string(kMaxEnvelopeBytes, 'x'));
  ASSERT_FALSE(sealed.has_value());
  EXPECT_EQ(sealed.error().code(), Errc::kInvalidArgument);
}

TEST_F(PoolWireTest, SealRefusesBadSender) {
  Header empty = header_;
  empty.sender = "";
  EXPECT_EQ(Seal(key_, empty, "b").error().code(), Errc::kInvalidArgument);
  Header long_name = header_;
  long_name.sender = std::string(kMaxSenderBytes + 1, 'n');
  EXPECT_EQ(Seal(key_, long_name, "b").error().code(), Errc::kInvalidArgument);
}

TEST(ReplayWindowTest, RepeatIsRefused) {
  ReplayWindow window;
  ASSERT_TRUE(window.Accept("a", 10).has_value());
  auto again = window.Accept("a", 10);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Errc::kPermissionDenied);
  EXPECT_NE(again.error().message().find("replayed"), std::string::npos);
  EXPECT_TRUE(window.Accept("a", 11).has_value());
}

TEST(ReplayWindowTest, TooOldIsRefused) {
  ReplayWindow window;
  ASSERT_TRUE(window.Accept("a", 1000).has_value());
  // Never seen, but outside the window: cannot be told from a replay.
  auto old = window.Accept("a", 1000 - ReplayWindow::kWidth);
  ASSERT_FALSE(old.has_value());
  EXPECT_EQ(old.error().code(), Errc::kPermissionDenied);
  EXPECT_NE(old.error().message().find("too old"), std::string::npos) << old.error().ToString();
  auto older = window.Accept("a", 3);
  ASSERT_FALSE(older.has_value());
  EXPECT_NE(older.error().message().find("too old"), std::string::npos);
  // The oldest one inside the window is still accepted.
  EXPECT_TRUE(window.Accept("a", 1000 - ReplayWindow::kWidth + 1).has_value());
}

TEST(ReplayWindowTest, ReorderingInsideTheWindowIsAcceptedOnceEach) {
  ReplayWindow window;
  for (const std::uint64_t seq : {5u, 3u, 9u, 4u, 8u, 6u, 7u, 1u, 2u}) {
    EXPECT_TRUE(window.Accept("a", seq).has_value()) << seq;
  }
  for (std::uint64_t seq = 1; seq <= 9; ++seq) {
    EXPECT_FALSE(window.Accept("a", seq).has_value()) << seq;
  }
}

TEST(ReplayWindowTest, LargeJumpForgetsTheOldWindow) {
  ReplayWindow window;
  ASSERT_TRUE(window.Accept("a", 5).has_value());
  ASSERT_TRUE(window.Accept("a", 5 + 10 * ReplayWindow::kWidth).has_value());
  EXPECT_FALSE(window.Accept("a", 5).has_value());
  EXPECT_TRUE(window.Accept("a", 4 + 10 * ReplayWindow::kWidth).has_value());
  EXPECT_FALSE(window.Accept("a", 5 + 10 * ReplayWindow::kWidth).has_value());
}

TEST_F(PoolWireTest, ReceiverCountsEachDropKind) {
  Receiver receiver(key_);
  const PoolKey other = KeyOf("another key, also 32 bytes long!");
  Header b = header_;
  b.sender = "node-b";

  EXPECT_TRUE(receiver.Accept(SealOk(header_, "1")).has_value());
  EXPECT_TRUE(receiver.Accept(SealOk(b, "1")).has_value());  // windows are per sender
  EXPECT_EQ(receiver.counters(), DropCounters{});

  EXPECT_FALSE(receiver.Accept("garbage").has_value());
  EXPECT_FALSE(receiver.Accept(std::string(kMaxEnvelopeBytes + 1, 'x')).has_value());
  EXPECT_EQ(receiver.counters(), (DropCounters{.malformed = 2}));

  EXPECT_FALSE(receiver.Accept(*internal::SealAtVersion(key_, 99, header_, "v")).has_value());
  EXPECT_EQ(receiver.counters(), (DropCounters{.malformed = 2, .bad_version = 1}));

  EXPECT_FALSE(receiver.Accept(*Seal(other, header_, "forged")).has_value());
  EXPECT_EQ(receiver.counters(), (DropCounters{.malformed = 2, .bad_version = 1, .bad_mac = 1}));

  EXPECT_FALSE(receiver.Accept(SealOk(header_, "1")).has_value());
  EXPECT_EQ(receiver.counters(),
            (DropCounters{.malformed = 2, .bad_version = 1, .bad_mac = 1, .replayed = 1}));

  // A forged message never moved the window: the next real one still opens.
  Header next = header_;
  next.sequence = header_.sequence + 1;
  EXPECT_FALSE(receiver.Accept(*Seal(other, next, "forged")).has_value());
  EXPECT_TRUE(receiver.Accept(SealOk(next, "2")).has_value());
  EXPECT_EQ(receiver.counters().bad_mac, 2u);
}

class PoolKeyTest : public ::testing::Test {
 protected:
  roam::testing::TempDir dir_;
  fs::path path_ = dir_.path() / "pool.key";
};

TEST_F(PoolKeyTest, GenerateThenLoadGivesTheSameKey) {
  auto made = PoolKey::Generate(path_);
  ASSERT_TRUE(made.has_value()) << made.error().ToString();
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, static_cast<off_t>(PoolKey::kMinBytes));
  auto loaded = PoolKey::Load(path_);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_EQ(loaded->secret(), made->secret());
  // A message sealed with one opens with the other.
  auto sealed = Seal(*made, Header{.sender = "n", .sequence = 1, .kind = 0}, "x");
  ASSERT_TRUE(sealed.has_value());
  EXPECT_TRUE(Open(*loaded, *sealed).has_value());
}

TEST_F(PoolKeyTest, GenerateTwiceIsAlreadyExists) {
  ASSERT_TRUE(PoolKey::Generate(path_).has_value());
  const std::string first(PoolKey::Load(path_)->secret());
  auto again = PoolKey::Generate(path_);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Errc::kAlreadyExists);
  EXPECT_NE(again.error().message().find(path_.string()), std::string::npos);
  EXPECT_EQ(PoolKey::Load(path_)->secret(), first);
}

TEST_F(PoolKeyTest, TwoGeneratedKeysDiffer) {
  auto a = PoolKey::Generate(path_);
  auto b = PoolKey::Generate(dir_.path() / "other.key");
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_NE(a->secret(), b->secret());
}

TEST_F(PoolKeyTest, WorldReadableKeyIsPermissionDeniedNamingPathAndMode) {
  WriteFile(path_, std::string(64, 'k'), 0644);
  auto loaded = PoolKey::Load(path_);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code(), Errc::kPermissionDenied);
  EXPECT_NE(loaded.error().message().find(path_.string()), std::string::npos);
  EXPECT_NE(loaded.error().message().find("0644"), std::string::npos) << loaded.error().ToString();
  EXPECT_EQ(loaded.error().ToString().find(std::string(32, 'k')), std::string::npos);
}

TEST_F(PoolKeyTest, GroupReadableKeyIsPermissionDenied) {
  WriteFile(path_, std::string(64, 'k'), 0640);
  auto loaded = PoolKey::Load(path_);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code(), Errc::kPermissionDenied);
}

TEST_F(PoolKeyTest, KeyOwnedBySomeoneElseIsPermissionDenied) {
  ROAM_SKIP_UNLESS_ROOT("chown the key file to another user");
  WriteFile(path_, std::string(64, 'k'), 0600);
  ASSERT_EQ(::chown(path_.c_str(), 65534, 65534), 0);
  auto loaded = PoolKey::Load(path_);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code(), Errc::kPermissionDenied);
  EXPECT_NE(loaded.error().message().find("owner uid 65534"), std::string::npos)
      << loaded.error().ToString();
}

TEST_F(PoolKeyTest, ShortKeyIsInvalidArgument) {
  WriteFile(path_, std::string(PoolKey::kMinBytes - 1, 'k'), 0600);
  auto loaded = PoolKey::Load(path_);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code(), Errc::kInvalidArgument);
  EXPECT_NE(loaded.error().message().find(path_.string()), std::string::npos);
  EXPECT_EQ(PoolKey::FromBytes("short").error().code(), Errc::kInvalidArgument);
}

TEST_F(PoolKeyTest, OversizedKeyFileIsInvalidArgument) {
  WriteFile(path_, std::string(PoolKey::kMaxBytes + 1, 'k'), 0600);
  auto loaded = PoolKey::Load(path_);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code(), Errc::kInvalidArgument);
  WriteFile(path_, std::string(PoolKey::kMaxBytes, 'k'), 0600);
  EXPECT_TRUE(PoolKey::Load(path_).has_value());
}

TEST_F(PoolKeyTest, MissingKeyIsNotFound) {
  auto loaded = PoolKey::Load(path_);
  ASSERT_FALSE(loaded.has_value());
  EXPECT_EQ(loaded.error().code(), Errc::kNotFound);
}

// The seed corpus of tests/fuzz/pool_envelope_fuzz.cc holds a real
// envelope, so the fuzzer starts from inside the MAC check.
TEST(PoolWireCorpusTest, SeedEnvelopeStillOpens) {
  const fs::path seed =
      roam::testing::SourceDir() / "tests/fuzz/corpus/pool_envelope/valid_envelope";
  std::ifstream in(seed, std::ios::binary);
  ASSERT_TRUE(in) << seed;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto opened = Open(KeyOf(kFuzzKey), bytes);
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  EXPECT_EQ(opened->header.sender, "seed-node");
}

}  // namespace
}  // namespace roam::pool
