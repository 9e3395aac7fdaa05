#include "roam/transport/bootstrap.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/support/test_util.h"
#include "transport/bootstrap/bootstrap.pb.h"
#include "transport/bootstrap/entries.h"
#include "transport/bootstrap/socket.h"

namespace roam::transport {
namespace {

using std::chrono::milliseconds;
using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr milliseconds kLong{20'000};  // a fence that must succeed
constexpr milliseconds kShort{300};    // a fence that must time out

// An address-like blob that differs by rank and round, with NUL and 0xff.
std::vector<std::byte> Blob(int rank, int round, std::size_t size = 0) {
  if (size == 0) size = 48 + static_cast<std::size_t>(rank) * 7;
  std::vector<std::byte> out(size);
  for (std::size_t i = 0; i < size; ++i) {
    out[i] = static_cast<std::byte>(
        (i * 31 + static_cast<std::size_t>(rank) * 17 + static_cast<std::size_t>(round) * 101) &
        0xff);
  }
  out[0] = std::byte{0};
  out[1] = std::byte{0xff};
  return out;
}

// Runs fn(rank) on a thread per rank in `ranks` and waits for them all.
void OnRanks(const std::vector<int>& ranks, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(ranks.size());
  for (const int r : ranks) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

std::vector<int> AllRanks(int size) {
  std::vector<int> out(size);
  for (int r = 0; r < size; ++r) out[r] = r;
  return out;
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

enum class Kind { kDirectory, kTcp };

std::string_view KindName(Kind kind) { return kind == Kind::kDirectory ? "Directory" : "Tcp"; }
void PrintTo(Kind kind, std::ostream* os) { *os << KindName(kind); }

// The conformance suite: every test runs over every implementation, with
// the ranks of a job as threads of this process, one Bootstrap each.
class BootstrapTest : public ::testing::TestWithParam<Kind> {
 protected:
  // Opens rank `rank` of a job of `size`. TCP: rank 0 listens on port 0 and
  // must be opened before the others.
  std::unique_ptr<Bootstrap> Open(int rank, int size) {
    if (GetParam() == Kind::kDirectory) {
      auto boot = OpenDirectoryBootstrap(dir_.path(), rank, size);
      EXPECT_TRUE(boot.has_value()) << boot.error().ToString();
      return boot ? std::move(*boot) : nullptr;
    }
    const std::string at = fmt::format("127.0.0.1:{}", port_);
    auto boot = OpenTcpBootstrap(at, rank, size, kLong);
    EXPECT_TRUE(boot.has_value()) << boot.error().ToString();
    if (!boot) return nullptr;
    if (rank == 0) port_ = (*boot)->port();
    return std::move(*boot);
  }

  std::vector<std::unique_ptr<Bootstrap>> OpenAll(int size) {
    std::vector<std::unique_ptr<Bootstrap>> out;
    out.reserve(size);
    for (int r = 0; r < size; ++r) out.push_back(Open(r, size));
    return out;
  }

  testing::TempDir dir_;
  std::uint16_t port_ = 0;
};

TEST_P(BootstrapTest, EveryRankGetsEveryRanksAddress) {
  constexpr int kSize = 4;
  auto boots = OpenAll(kSize);
  OnRanks(AllRanks(kSize), [&](int r) {
    Bootstrap& b = *boots[r];
    EXPECT_EQ(b.rank(), r);
    EXPECT_EQ(b.size(), kSize);
    ASSERT_TRUE(b.Put("ucx.addr", Blob(r, 0)).has_value());
    const auto fenced = b.Fence(kLong);
    ASSERT_TRUE(fenced.has_value()) << fenced.error().ToString();
    for (int peer = 0; peer < kSize; ++peer) {
      auto got = b.Get(peer, "ucx.addr");
      ASSERT_TRUE(got.has_value()) << "rank " << r << ": " << got.error().ToString();
      EXPECT_EQ(*got, Blob(peer, 0)) << "rank " << r << " reading rank " << peer;
    }
  });
}

TEST_P(BootstrapTest, LaterRoundsAddAndOverwriteKeys) {
  constexpr int kSize = 4;
  auto boots = OpenAll(kSize);
  OnRanks(AllRanks(kSize), [&](int r) {
    Bootstrap& b = *boots[r];
    ASSERT_TRUE(b.Put("addr", Blob(r, 0)).has_value());
    ASSERT_TRUE(b.Put("rkey", Blob(r, 10)).has_value());
    ASSERT_TRUE(b.Fence(kLong).has_value());

    // Round 1: a new key, and "addr" again. Until the fence completes every
    // rank, this one included, sees round 0.
    ASSERT_TRUE(b.Put("addr", Blob(r, 1)).has_value());
    ASSERT_TRUE(b.Put("extra", Blob(r, 2, 3)).has_value());
    EXPECT_EQ(b.Get(r, "addr").value(), Blob(r, 0));
    EXPECT_EQ(b.Get(r, "extra").error().code(), Errc::kNotFound);
    const auto fenced = b.Fence(kLong);
    ASSERT_TRUE(fenced.has_value()) << fenced.error().ToString();

    for (int peer = 0; peer < kSize; ++peer) {
      EXPECT_EQ(b.Get(peer, "addr").value(), Blob(peer, 1));
      EXPECT_EQ(b.Get(peer, "extra").value(), Blob(peer, 2, 3));
      EXPECT_EQ(b.Get(peer, "rkey").value(), Blob(peer, 10));  // kept from round 0
    }
  });
}

TEST_P(BootstrapTest, ManyRoundsWithoutPuts) {
  constexpr int kSize = 3;
  constexpr int kRounds = 20;
  auto boots = OpenAll(kSize);
  OnRanks(AllRanks(kSize), [&](int r) {
    Bootstrap& b = *boots[r];
    for (int round = 0; round < kRounds; ++round) {
      if (round % 5 == 0) {
        ASSERT_TRUE(b.Put("round", Blob(r, round)).has_value());
      }
      const auto fenced = b.Fence(kLong);
      ASSERT_TRUE(fenced.has_value()) << fenced.error().ToString();
      const int last_put = round - round % 5;
      for (int peer = 0; peer < kSize; ++peer) {
        EXPECT_EQ(b.Get(peer, "round").value(), Blob(peer, last_put));
      }
    }
  });
}

TEST_P(BootstrapTest, ValuesAreArbitraryBytesUpToTheLimit) {
  constexpr int kSize = 4;
  auto boots = OpenAll(kSize);
  std::vector<std::byte> every_byte(256);
  for (int i = 0; i < 256; ++i) every_byte[i] = static_cast<std::byte>(i);
  OnRanks(AllRanks(kSize), [&](int r) {
    Bootstrap& b = *boots[r];
    ASSERT_TRUE(b.Put("bytes", every_byte).has_value());
    ASSERT_TRUE(b.Put("empty", {}).has_value());
    ASSERT_TRUE(b.Put("big", Blob(r, 0, kMaxBootstrapValueBytes)).has_value());
    ASSERT_TRUE(b.Put(std::string(kMaxBootstrapKeyBytes, 'k'), every_byte).has_value());
    const auto fenced = b.Fence(kLong);
    ASSERT_TRUE(fenced.has_value()) << fenced.error().ToString();
    for (int peer = 0; peer < kSize; ++peer) {
      EXPECT_EQ(b.Get(peer, "bytes").value(), every_byte);
      EXPECT_TRUE(b.Get(peer, "empty").value().empty());
      EXPECT_EQ(b.Get(peer, "big").value(), Blob(peer, 0, kMaxBootstrapValueBytes));
      EXPECT_EQ(b.Get(peer, std::string(kMaxBootstrapKeyBytes, 'k')).value(), every_byte);
    }
  });
}

TEST_P(BootstrapTest, MissingKeyIsNotFound) {
  constexpr int kSize = 2;
  auto boots = OpenAll(kSize);
  OnRanks(AllRanks(kSize), [&](int r) {
    Bootstrap& b = *boots[r];
    ASSERT_TRUE(b.Put("here", Blob(r, 0)).has_value());
    // Nothing is visible before the first fence, not even one's own puts.
    auto early = b.Get(r, "here");
    ASSERT_FALSE(early.has_value());
    EXPECT_EQ(early.error().code(), Errc::kNotFound);
    EXPECT_THAT(early.error().message(), HasSubstr("no fence has completed"));

    ASSERT_TRUE(b.Fence(kLong).has_value());
    auto missing = b.Get(1 - r, "not-here");
    ASSERT_FALSE(missing.has_value());
    EXPECT_EQ(missing.error().code(), Errc::kNotFound);
    EXPECT_THAT(missing.error().message(), HasSubstr("not-here"));
    EXPECT_THAT(missing.error().message(), HasSubstr(fmt::format("rank {}", 1 - r)));
  });
}

TEST_P(BootstrapTest, GetOfARankOutOfRangeIsInvalid) {
  auto boots = OpenAll(1);
  ASSERT_TRUE(boots[0]->Put("k", Blob(0, 0)).has_value());
  ASSERT_TRUE(boots[0]->Fence(kLong).has_value());
  for (const int rank : {-1, 1, 1000}) {
    auto got = boots[0]->Get(rank, "k");
    ASSERT_FALSE(got.has_value());
    EXPECT_EQ(got.error().code(), Errc::kInvalidArgument);
    EXPECT_THAT(got.error().message(), HasSubstr(fmt::format("rank {}", rank)));
  }
}

TEST_P(BootstrapTest, BadPutsAreInvalid) {
  auto boots = OpenAll(1);
  Bootstrap& b = *boots[0];
  const std::vector<std::byte> value(3);
  EXPECT_EQ(b.Put("", value).error().code(), Errc::kInvalidArgument);
  EXPECT_EQ(b.Put(std::string("a\0b", 3), value).error().code(), Errc::kInvalidArgument);
  EXPECT_EQ(b.Put(std::string(kMaxBootstrapKeyBytes + 1, 'k'), value).error().code(),
            Errc::kInvalidArgument);
  const std::vector<std::byte> huge(kMaxBootstrapValueBytes + 1);
  auto too_big = b.Put("k", huge);
  EXPECT_EQ(too_big.error().code(), Errc::kInvalidArgument);
  EXPECT_THAT(too_big.error().message(), HasSubstr("bytes"));
}

TEST_P(BootstrapTest, BadRankOrSizeIsInvalid) {
  struct Case {
    int rank;
    int size;
  };
  for (const Case c : {Case{4, 4}, Case{-1, 4}, Case{0, 0}, Case{0, -3}}) {
    auto boot = GetParam() == Kind::kDirectory
                    ? OpenDirectoryBootstrap(dir_.path(), c.rank, c.size)
                    : OpenBootstrap("tcp:127.0.0.1:0", c.rank, c.size, kShort);
    ASSERT_FALSE(boot.has_value()) << c.rank << "/" << c.size;
    EXPECT_EQ(boot.error().code(), Errc::kInvalidArgument);
    EXPECT_THAT(boot.error().message(), AnyOf(HasSubstr(fmt::format("rank {}", c.rank)),
                                              HasSubstr(fmt::format("size {}", c.size))));
  }
}

// Rank 3 joins but never calls Fence: everyone else's Fence fails in about
// the timeout, naming it; and the failure sticks.
TEST_P(BootstrapTest, AnAbsentRankTimesOutTheFenceNamingIt) {
  constexpr int kSize = 4;
  auto boots = OpenAll(kSize);
  OnRanks({0, 1, 2}, [&](int r) {
    Bootstrap& b = *boots[r];
    ASSERT_TRUE(b.Put("addr", Blob(r, 0)).has_value());
    const auto start = Clock::now();
    auto fenced = b.Fence(kShort);
    const double took = SecondsSince(start);
    ASSERT_FALSE(fenced.has_value()) << "rank " << r;
    EXPECT_EQ(fenced.error().code(), Errc::kTimeout) << fenced.error().ToString();
    EXPECT_THAT(fenced.error().message(), HasSubstr("rank 3 did not arrive"))
        << "rank " << r << ": " << fenced.error().ToString();
    EXPECT_GE(took, 0.29);
    EXPECT_LT(took, 3.0);

    // Broken from now on; Get still answers (no round completed: not found).
    auto again = b.Fence(kLong);
    ASSERT_FALSE(again.has_value());
    EXPECT_EQ(again.error(), fenced.error());
    EXPECT_EQ(b.Put("k", Blob(r, 1)).error(), fenced.error());
    EXPECT_EQ(b.Get(r, "addr").error().code(), Errc::kNotFound);
  });
}

TEST_P(BootstrapTest, OpensFromASpec) {
  const std::string spec = GetParam() == Kind::kDirectory
                               ? fmt::format("dir:{}", (dir_.path() / "sub").string())
                               : std::string("tcp:127.0.0.1:0");
  auto boot = OpenBootstrap(spec, 0, 1, kShort);
  ASSERT_TRUE(boot.has_value()) << boot.error().ToString();
  ASSERT_TRUE((*boot)->Put("k", Blob(0, 0)).has_value());
  ASSERT_TRUE((*boot)->Fence(kLong).has_value());
  EXPECT_EQ((*boot)->Get(0, "k").value(), Blob(0, 0));
}

std::string ParamName(const ::testing::TestParamInfo<Kind>& kind) {
  return std::string(KindName(kind.param));
}

INSTANTIATE_TEST_SUITE_P(Backends, BootstrapTest, ::testing::Values(Kind::kDirectory, Kind::kTcp),
                         ParamName);

// ---- specs, addresses and messages

TEST(BootstrapSpecTest, MalformedSpecsAreInvalid) {
  for (const std::string_view spec :
       {"", "dir:", "tcp:", "nfs:/x", "tcp:localhost", "tcp:localhost:", "tcp::80",
        "tcp:localhost:65536", "tcp:localhost:-1", "tcp:localhost:80x", "tcp:::1:80",
        "tcp:[::1]80"}) {
    auto boot = OpenBootstrap(spec, 0, 1, kShort);
    ASSERT_FALSE(boot.has_value()) << spec;
    EXPECT_EQ(boot.error().code(), Errc::kInvalidArgument)
        << spec << ": " << boot.error().ToString();
  }
}

TEST(BootstrapSpecTest, OnlyRankZeroMayNamePortZero) {
  auto boot = OpenTcpBootstrap("127.0.0.1:0", 1, 2, kShort);
  ASSERT_FALSE(boot.has_value());
  EXPECT_EQ(boot.error().code(), Errc::kInvalidArgument);
  EXPECT_THAT(boot.error().message(), HasSubstr("port 0"));
}

TEST(BootstrapSpecTest, ParsesHostPort) {
  auto v4 = ParseHostPort("node7:4000");
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(v4->host, "node7");
  EXPECT_EQ(v4->port, 4000);
  EXPECT_EQ(v4->ToString(), "node7:4000");
  auto v6 = ParseHostPort("[fe80::1]:65535");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->host, "fe80::1");
  EXPECT_EQ(v6->port, 65535);
  EXPECT_EQ(v6->ToString(), "[fe80::1]:65535");
}

TEST(BootstrapSpecTest, DescribesRanks) {
  EXPECT_EQ(DescribeRanks({3}), "rank 3");
  EXPECT_EQ(DescribeRanks({9, 1, 4, 5, 6}), "ranks 1, 4-6, 9");
  std::vector<int> many;
  for (int r = 0; r < 100; r += 2) many.push_back(r);
  EXPECT_EQ(DescribeRanks(many),
            "ranks 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, ... (50 in all)");
}

// ---- the shared directory

TEST(DirectoryBootstrapTest, RefusesADirectoryHoldingThisRanksFiles) {
  testing::TempDir dir;
  {
    auto first = OpenDirectoryBootstrap(dir.path(), 0, 1);
    ASSERT_TRUE(first.has_value());
    ASSERT_TRUE((*first)->Fence(kLong).has_value());
  }
  auto again = OpenDirectoryBootstrap(dir.path(), 0, 1);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Errc::kAlreadyExists);
  EXPECT_THAT(again.error().message(), HasSubstr("fresh directory"));
}

TEST(DirectoryBootstrapTest, KeepsOnlyTheLastTwoRoundsOfFiles) {
  testing::TempDir dir;
  auto boot = OpenDirectoryBootstrap(dir.path(), 0, 1);
  ASSERT_TRUE(boot.has_value());
  for (int round = 0; round < 5; ++round) ASSERT_TRUE((*boot)->Fence(kLong).has_value());
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    names.push_back(e.path().filename().string());
  }
  std::ranges::sort(names);
  EXPECT_EQ(names, (std::vector<std::string>{"round-3.rank-0", "round-4.rank-0"}));
}

TEST(DirectoryBootstrapTest, AGarbledFileIsCorrupt) {
  testing::TempDir dir;
  auto boot = OpenDirectoryBootstrap(dir.path(), 0, 2);
  ASSERT_TRUE(boot.has_value());
  // Rank 1 "arrives" with a file that is no RankFile.
  std::ofstream(dir.path() / "round-0.rank-1") << "\xff\xff\xff\xff garbage";
  ASSERT_TRUE((*boot)->Fence(kLong).has_value());
  auto got = (*boot)->Get(1, "addr");
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), Errc::kCorrupt);
  EXPECT_THAT(got.error().message(), HasSubstr("round-0.rank-1"));
}

// ---- the TCP rendezvous

// A free port: rank 0 of a throwaway job picks one and lets it go.
std::uint16_t FreePort() {
  auto probe = OpenTcpBootstrap("127.0.0.1:0", 0, 1, kShort);
  EXPECT_TRUE(probe.has_value());
  return probe ? (*probe)->port() : 0;
}

TEST(TcpBootstrapTest, RankZeroMayStartAfterTheOthers) {
  constexpr int kSize = 4;
  const std::uint16_t port = FreePort();
  ASSERT_NE(port, 0);
  const std::string at = fmt::format("127.0.0.1:{}", port);
  OnRanks(AllRanks(kSize), [&](int r) {
    // Rank 0 comes 300 ms late; the others keep trying to connect meanwhile.
    if (r == 0) std::this_thread::sleep_for(milliseconds(300));
    auto boot = OpenTcpBootstrap(at, r, kSize, kLong);
    ASSERT_TRUE(boot.has_value()) << "rank " << r << ": " << boot.error().ToString();
    EXPECT_EQ((*boot)->port(), port);
    ASSERT_TRUE((*boot)->Put("addr", Blob(r, 0)).has_value());
    const auto fenced = (*boot)->Fence(kLong);
    ASSERT_TRUE(fenced.has_value()) << "rank " << r << ": " << fenced.error().ToString();
    for (int peer = 0; peer < kSize; ++peer) {
      EXPECT_EQ((*boot)->Get(peer, "addr").value(), Blob(peer, 0));
    }
  });
}

TEST(TcpBootstrapTest, NoRankZeroIsUnavailableAfterTheConnectTimeout) {
  const std::uint16_t port = FreePort();
  ASSERT_NE(port, 0);
  const auto start = Clock::now();
  auto boot = OpenTcpBootstrap(fmt::format("127.0.0.1:{}", port), 1, 2, milliseconds(200));
  const double took = SecondsSince(start);
  ASSERT_FALSE(boot.has_value());
  EXPECT_EQ(boot.error().code(), Errc::kUnavailable) << boot.error().ToString();
  EXPECT_THAT(boot.error().message(), HasSubstr("rank 0 unreachable within 200 ms"));
  EXPECT_GE(took, 0.19);
  EXPECT_LT(took, 2.0);
}

// Connections that are no rank of the job (garbage, a huge length, a
// version from the future, silence) are dropped; the job goes on.
TEST(TcpBootstrapTest, GarbageConnectionsDoNotDisturbRankZero) {
  constexpr int kSize = 3;
  auto root = OpenTcpBootstrap("127.0.0.1:0", 0, kSize, kShort);
  ASSERT_TRUE(root.has_value());
  const HostPort at{"127.0.0.1", (*root)->port()};
  const Deadline soon = Clock::now() + kLong;

  std::vector<UniqueFd> strangers;
  auto stranger = [&](std::string_view bytes) {
    auto fd = ConnectTcp(at, soon);
    ASSERT_TRUE(fd.has_value());
    if (!bytes.empty()) {
      ASSERT_EQ(::send(fd->get(), bytes.data(), bytes.size(), MSG_NOSIGNAL),
                static_cast<ssize_t>(bytes.size()));
    }
    strangers.push_back(std::move(*fd));
  };
  stranger("GET / HTTP/1.0\r\n\r\n");                               // a huge length
  stranger(std::string("\0\0\0\x06\xff\xff\xff\xff\xff\xff", 10));  // not a Frame
  stranger(std::string("\0\0\0\x02\x08\x01", 6));                   // a frame, no hello
  stranger("");                                                     // silence
  {
    bootstrap::Frame future;
    future.set_version(99);
    future.mutable_hello()->set_rank(1);
    future.mutable_hello()->set_size(kSize);
    const std::string payload = future.SerializeAsString();
    auto fd = ConnectTcp(at, soon);
    ASSERT_TRUE(fd.has_value());
    ASSERT_TRUE(SendFrame(fd->get(), payload, soon, "rank 0").has_value());
    strangers.push_back(std::move(*fd));
  }
  {
    bootstrap::Frame wrong_size;
    wrong_size.set_version(1);
    wrong_size.mutable_hello()->set_rank(2);
    wrong_size.mutable_hello()->set_size(kSize + 5);
    auto fd = ConnectTcp(at, soon);
    ASSERT_TRUE(fd.has_value());
    ASSERT_TRUE(SendFrame(fd->get(), wrong_size.SerializeAsString(), soon, "rank 0").has_value());
    strangers.push_back(std::move(*fd));
  }

  std::vector<std::unique_ptr<Bootstrap>> boots;
  boots.push_back(std::move(*root));
  for (int r = 1; r < kSize; ++r) {
    auto boot = OpenTcpBootstrap(at.ToString(), r, kSize, kLong);
    ASSERT_TRUE(boot.has_value());
    boots.push_back(std::move(*boot));
  }
  OnRanks(AllRanks(kSize), [&](int r) {
    ASSERT_TRUE(boots[r]->Put("addr", Blob(r, 0)).has_value());
    const auto fenced = boots[r]->Fence(kLong);
    ASSERT_TRUE(fenced.has_value()) << "rank " << r << ": " << fenced.error().ToString();
    EXPECT_EQ(boots[r]->Get((r + 1) % kSize, "addr").value(), Blob((r + 1) % kSize, 0));
  });

  // The version from the future heard why it was dropped.
  FrameReader reader(4096);
  auto why = ReceiveFrame(strangers[4].get(), reader, Clock::now() + kLong, "rank 0");
  ASSERT_TRUE(why.has_value()) << why.error().ToString();
  bootstrap::Frame frame;
  ASSERT_TRUE(frame.ParseFromString(*why));
  ASSERT_TRUE(frame.has_error());
  EXPECT_THAT(frame.error(), HasSubstr("version 99"));
}

// A connection that never says which rank it is does not hold a descriptor
// at rank 0 for the job's lifetime: it is told why and closed after the hello
// timeout (2 s); past 64 waiting, the oldest are closed at once, so a flood
// of them cannot keep a rank out.
TEST(TcpBootstrapTest, SilentConnectionsAreDroppedAndCapped) {
  constexpr int kSize = 2;
  auto root = OpenTcpBootstrap("127.0.0.1:0", 0, kSize, kShort);
  ASSERT_TRUE(root.has_value());
  const HostPort at{"127.0.0.1", (*root)->port()};
  const Deadline soon = Clock::now() + kLong;
  std::vector<UniqueFd> silent;
  for (int i = 0; i < 70; ++i) {
    auto fd = ConnectTcp(at, soon);
    ASSERT_TRUE(fd.has_value());
    silent.push_back(std::move(*fd));
  }
  auto one = OpenTcpBootstrap(at.ToString(), 1, kSize, kLong);
  ASSERT_TRUE(one.has_value());
  std::vector<std::unique_ptr<Bootstrap>> boots;
  boots.push_back(std::move(*root));
  boots.push_back(std::move(*one));
  OnRanks(AllRanks(kSize), [&](int r) {
    // Rank 1 arrives late: rank 0 serves (and times out the silent ones)
    // meanwhile.
    if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    const auto fenced = boots[r]->Fence(kLong);
    ASSERT_TRUE(fenced.has_value()) << "rank " << r << ": " << fenced.error().ToString();
  });
  int told = 0;
  int closed = 0;
  for (auto& fd : silent) {
    FrameReader reader(4096);
    auto why =
        ReceiveFrame(fd.get(), reader, Clock::now() + std::chrono::milliseconds(500), "rank 0");
    if (why.has_value()) {
      bootstrap::Frame frame;
      ASSERT_TRUE(frame.ParseFromString(*why));
      EXPECT_THAT(frame.error(), HasSubstr("no hello within"));
      ++told;
    } else {
      ++closed;  // over the cap: closed without a word
    }
  }
  // 70 silent and rank 1 were accepted in one go: the 7 oldest made room.
  EXPECT_EQ(told, 63);
  EXPECT_EQ(closed, 7);
}

TEST(TcpBootstrapTest, ARankThatNeverConnectedIsNamedSo) {
  constexpr int kSize = 3;
  auto root = OpenTcpBootstrap("127.0.0.1:0", 0, kSize, kShort);
  ASSERT_TRUE(root.has_value());
  auto one = OpenTcpBootstrap(fmt::format("127.0.0.1:{}", (*root)->port()), 1, kSize, kLong);
  ASSERT_TRUE(one.has_value());
  std::thread member([&] { EXPECT_FALSE((*one)->Fence(kShort).has_value()); });
  auto fenced = (*root)->Fence(kShort);
  member.join();
  ASSERT_FALSE(fenced.has_value());
  EXPECT_EQ(fenced.error().code(), Errc::kTimeout);
  EXPECT_THAT(fenced.error().message(),
              HasSubstr("rank 2 did not arrive within 300 ms (rank 2 never connected)"));
}

// A second process claiming a rank that is taken is refused and told why;
// the job goes on without it.
TEST(TcpBootstrapTest, ASecondClaimOnARankIsRefused) {
  constexpr int kSize = 3;
  auto root = OpenTcpBootstrap("127.0.0.1:0", 0, kSize, kShort);
  ASSERT_TRUE(root.has_value());
  const std::string at = fmt::format("127.0.0.1:{}", (*root)->port());
  std::vector<std::unique_ptr<Bootstrap>> boots;
  boots.push_back(std::move(*root));
  for (const int r : {1, 2, 1}) {  // the second rank 1 connects last
    auto boot = OpenTcpBootstrap(at, r, kSize, kLong);
    ASSERT_TRUE(boot.has_value());
    boots.push_back(std::move(*boot));
  }
  OnRanks({0, 1, 2, 3}, [&](int i) {
    auto fenced = boots[i]->Fence(kLong);
    if (i < 3) {
      EXPECT_TRUE(fenced.has_value()) << "rank " << i << ": " << fenced.error().ToString();
      return;
    }
    ASSERT_FALSE(fenced.has_value());
    EXPECT_EQ(fenced.error().code(), Errc::kAlreadyExists) << fenced.error().ToString();
    EXPECT_THAT(fenced.error().message(), HasSubstr("a second connection claiming rank 1"));
  });
}

// A fake rank 0 that answers a rank's arrival with `reply`.
Error FenceAgainstFakeRankZero(std::string_view reply) {
  auto listener = ListenTcp({"127.0.0.1", 0});
  EXPECT_TRUE(listener.has_value());
  if (!listener) return listener.error();
  auto member = OpenTcpBootstrap(fmt::format("127.0.0.1:{}", listener->port), 1, 2, kLong);
  EXPECT_TRUE(member.has_value());
  if (!member) return member.error();

  std::thread fake([&] {
    UniqueFd fd;
    const Deadline deadline = Clock::now() + kLong;
    while (!fd.valid() && Clock::now() < deadline) {
      ASSERT_TRUE(WaitFor(listener->fd.get(), POLLIN, deadline).has_value());
      auto accepted = AcceptTcp(listener->fd.get());
      ASSERT_TRUE(accepted.has_value());
      fd = std::move(*accepted);
    }
    FrameReader reader(1 << 20);
    ASSERT_TRUE(ReceiveFrame(fd.get(), reader, deadline, "rank 1").has_value());  // hello
    ASSERT_TRUE(ReceiveFrame(fd.get(), reader, deadline, "rank 1").has_value());  // arrive
    ASSERT_EQ(::send(fd.get(), reply.data(), reply.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(reply.size()));
    // Hold the connection until the rank has judged the reply.
    std::this_thread::sleep_for(milliseconds(200));
  });
  auto fenced = (*member)->Fence(kLong);
  fake.join();
  EXPECT_FALSE(fenced.has_value());
  return fenced ? Error(Errc::kInternal, "fence succeeded") : fenced.error();
}

TEST(TcpBootstrapTest, GarbageFromRankZeroIsAnErrorNotACrash) {
  const Error huge = FenceAgainstFakeRankZero(std::string("\xff\xff\xff\xff", 4));
  EXPECT_EQ(huge.code(), Errc::kProtocol) << huge.ToString();
  EXPECT_THAT(huge.message(), HasSubstr("rank 0"));

  const Error garbled = FenceAgainstFakeRankZero(std::string("\0\0\0\x04\xff\xff\xff\xff", 8));
  EXPECT_EQ(garbled.code(), Errc::kCorrupt) << garbled.ToString();
  EXPECT_THAT(garbled.message(), HasSubstr("rank 0"));

  bootstrap::Frame wrong_round;
  wrong_round.set_version(1);
  wrong_round.mutable_table()->set_round(7);
  const std::string payload = wrong_round.SerializeAsString();
  std::string frame(4, '\0');
  frame[3] = static_cast<char>(payload.size());
  const Error round = FenceAgainstFakeRankZero(frame + payload);
  EXPECT_EQ(round.code(), Errc::kProtocol) << round.ToString();
  EXPECT_THAT(round.message(), HasSubstr("round 7"));
}

// Rank 3 leaves (its object is destroyed, closing its socket) while the
// others wait in the fence: they fail at once, naming it, instead of waiting
// out their 20 s.
TEST(TcpBootstrapTest, ARankThatLeavesFailsTheFenceForEveryone) {
  constexpr int kSize = 4;
  auto root = OpenTcpBootstrap("127.0.0.1:0", 0, kSize, kShort);
  ASSERT_TRUE(root.has_value());
  std::vector<std::unique_ptr<Bootstrap>> boots;
  boots.push_back(std::move(*root));
  const std::string at = fmt::format("127.0.0.1:{}", static_cast<TcpBootstrap&>(*boots[0]).port());
  for (int r = 1; r < kSize; ++r) {
    auto boot = OpenTcpBootstrap(at, r, kSize, kLong);
    ASSERT_TRUE(boot.has_value());
    boots.push_back(std::move(*boot));
  }
  std::thread leaver([&] {
    std::this_thread::sleep_for(milliseconds(200));
    boots[3].reset();
  });
  OnRanks({0, 1, 2}, [&](int r) {
    const auto start = Clock::now();
    auto fenced = boots[r]->Fence(kLong);
    ASSERT_FALSE(fenced.has_value()) << "rank " << r;
    EXPECT_EQ(fenced.error().code(), Errc::kUnavailable) << fenced.error().ToString();
    EXPECT_THAT(fenced.error().message(), HasSubstr("rank 3 closed its connection"))
        << "rank " << r << ": " << fenced.error().ToString();
    EXPECT_LT(SecondsSince(start), 5.0);
  });
  leaver.join();
}

TEST(TcpBootstrapTest, RankZeroLeavingFailsTheFenceForEveryone) {
  constexpr int kSize = 4;
  auto root = OpenTcpBootstrap("127.0.0.1:0", 0, kSize, kShort);
  ASSERT_TRUE(root.has_value());
  const std::string at = fmt::format("127.0.0.1:{}", (*root)->port());
  std::vector<std::unique_ptr<Bootstrap>> boots(kSize);
  for (int r = 1; r < kSize; ++r) {
    auto boot = OpenTcpBootstrap(at, r, kSize, kLong);
    ASSERT_TRUE(boot.has_value());
    boots[r] = std::move(*boot);
  }
  std::thread leaver([&] {
    std::this_thread::sleep_for(milliseconds(200));
    root->reset();
  });
  OnRanks({1, 2, 3}, [&](int r) {
    const auto start = Clock::now();
    auto fenced = boots[r]->Fence(kLong);
    ASSERT_FALSE(fenced.has_value()) << "rank " << r;
    EXPECT_EQ(fenced.error().code(), Errc::kUnavailable) << fenced.error().ToString();
    EXPECT_THAT(fenced.error().message(), HasSubstr("rank 0")) << fenced.error().ToString();
    EXPECT_LT(SecondsSince(start), 5.0);
  });
  leaver.join();
}

// A real process as rank 3, killed with SIGKILL after it arrived at the
// fence and before the round completes.
TEST(TcpBootstrapTest, AKilledRankFailsTheFenceForEveryone) {
  constexpr int kSize = 4;
  auto root = OpenTcpBootstrap("127.0.0.1:0", 0, kSize, kShort);
  ASSERT_TRUE(root.has_value());
  const std::string at = fmt::format("127.0.0.1:{}", (*root)->port());
  std::vector<std::unique_ptr<Bootstrap>> boots(kSize);
  boots[0] = std::move(*root);
  for (int r = 1; r < 3; ++r) {
    auto boot = OpenTcpBootstrap(at, r, kSize, kLong);
    ASSERT_TRUE(boot.has_value());
    boots[r] = std::move(*boot);
  }

  // Forked before any thread of this test starts; the child only talks TCP,
  // and says when it has joined through a pipe.
  std::array<int, 2> joined{};
  ASSERT_EQ(::pipe(joined.data()), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(joined[0]);
    auto boot = OpenTcpBootstrap(at, 3, kSize, kLong);
    if (!boot) ::_exit(2);
    (void)(*boot)->Put("addr", Blob(3, 0));
    (void)!::write(joined[1], "j", 1);
    (void)(*boot)->Fence(kLong);  // blocks: ranks 1 and 2 have not arrived
    ::_exit(3);
  }
  ::close(joined[1]);
  char byte = 0;
  const ssize_t got = ::read(joined[0], &byte, 1);
  ::close(joined[0]);

  std::vector<Status> results(kSize);
  std::thread rank0([&] { results[0] = boots[0]->Fence(kLong); });
  std::this_thread::sleep_for(milliseconds(200));  // rank 3 arrives at the fence
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  ASSERT_EQ(got, 1) << "rank 3 did not join";
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "rank 3 exited with " << WEXITSTATUS(wstatus);

  const auto start = Clock::now();
  OnRanks({1, 2}, [&](int r) { results[r] = boots[r]->Fence(kLong); });
  rank0.join();
  EXPECT_LT(SecondsSince(start), 5.0);
  for (int r = 0; r < 3; ++r) {
    ASSERT_FALSE(results[r].has_value()) << "rank " << r;
    EXPECT_EQ(results[r].error().code(), Errc::kUnavailable) << results[r].error().ToString();
    EXPECT_THAT(results[r].error().message(), HasSubstr("rank 3 closed its connection"))
        << "rank " << r << ": " << results[r].error().ToString();
  }
}

}  // namespace
}  // namespace roam::transport
