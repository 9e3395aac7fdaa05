// The transport conformance suite: one set of tests over every backend and
// placement (tests/transport/harness.h), skipping what a backend lacks.
// What landed is checked by the peer itself (it checksums its own memory on
// request), never only by the initiator's completions.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "roam/transport/transport.h"
#include "tests/transport/harness.h"
#include "tests/transport/peer_service.h"

namespace roam::transport::testing {
namespace {

using std::chrono::milliseconds;
constexpr milliseconds kTimeout{20000};
constexpr std::size_t kMiB = std::size_t{1} << 20;

class TransportConformanceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto harness = MakeHarness(GetParam());
    if (!harness.has_value() && harness.error().code() == Errc::kUnsupported) {
      GTEST_SKIP() << harness.error().ToString();
    }
    ASSERT_TRUE(harness.has_value()) << harness.error().ToString();
    h_ = std::move(*harness);
    auto ep = h_->ConnectToPeer();
    ASSERT_TRUE(ep.has_value()) << ep.error().ToString();
    ep_ = std::move(*ep);
    auto packed = Call(*ep_, kKey, {});
    ASSERT_TRUE(packed.has_value()) << packed.error().ToString();
    packed_key_ = *packed;
    auto key = ep_->UnpackKey(packed_key_);
    ASSERT_TRUE(key.has_value()) << key.error().ToString();
    key_ = std::move(*key);
  }

  void TearDown() override {
    key_.reset();
    ep_.reset();
    h_.reset();
  }

  std::uint64_t Remote(std::uint64_t offset) const { return key_->base() + offset; }

  Result<Bytes> Call(Endpoint& ep, std::uint16_t tag, ByteView payload,
                     milliseconds timeout = kTimeout) {
    auto reply = std::make_shared<std::optional<Result<Bytes>>>();
    ROAM_TRY(
        ep.Request(tag, payload, timeout, [reply](Result<Bytes> r) { *reply = std::move(r); }));
    ROAM_TRY(h_->Wait([&] { return reply->has_value(); }, timeout + milliseconds(2000)));
    return std::move(**reply);
  }

  // Runs `start` with a completion and waits for it.
  Status Complete(const std::function<Status(Completion)>& start, milliseconds timeout = kTimeout) {
    auto result = std::make_shared<std::optional<Status>>();
    ROAM_TRY(start([result](Status s) { *result = std::move(s); }));
    ROAM_TRY(h_->Wait([&] { return result->has_value(); }, timeout));
    return **result;
  }
  Status Flush(Endpoint& ep) {
    return Complete([&](Completion done) { return ep.Flush(std::move(done)); });
  }
  Status GetInto(std::span<std::byte> dst, std::uint64_t offset) {
    return Complete([&](Completion done) { return ep_->Get(dst, Remote(offset), *key_, done); });
  }
  Result<std::uint64_t> RemoteChecksum(std::uint64_t offset, std::uint64_t length) {
    ROAM_ASSIGN_OR_RETURN(Bytes reply, Call(*ep_, kChecksum, ToBytes(Range{offset, length, 0})));
    return FromBytes<std::uint64_t>(reply);
  }

  std::unique_ptr<Harness> h_;
  std::unique_ptr<Endpoint> ep_;
  Bytes packed_key_;
  std::unique_ptr<RemoteKey> key_;
};

Bytes Pattern(std::size_t size, std::uint64_t seed) {
  Bytes out(size);
  FillPattern(out, seed, 0);
  return out;
}

TEST_P(TransportConformanceTest, CapabilitiesSayWhatTheBackendDoes) {
  const Capabilities caps = h_->capabilities();
  const bool fake = h_->local().backend() == "fake";
  EXPECT_EQ(caps.Has(Capability::kCrossProcess), !fake);
  EXPECT_EQ(caps.Has(Capability::kFaultInjection), fake);
  EXPECT_EQ(caps.Has(Capability::kDeterministic), fake);
  EXPECT_EQ(caps.ToString(), fake ? "fault-injection,deterministic" : "cross-process");
  // Only fabrics with an event fd can sleep in poll().
  EXPECT_EQ(h_->local().event_fd() >= 0, !fake);
}

TEST_P(TransportConformanceTest, AllocatedMemoryIsNotInheritedByAFork) {
  auto region = h_->local().Allocate(std::size_t{4} << 20);
  ASSERT_TRUE(region.has_value()) << region.error().ToString();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // ENOMEM: nothing is mapped there in the child.
    const int rc = madvise((*region)->data(), (*region)->size(), MADV_NORMAL);
    _exit(rc != 0 && errno == ENOMEM ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child has the region mapped";
}

TEST_P(TransportConformanceTest, AllocatedMemoryIsZeroFilledAndFaultedIn) {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  // Twice: the second allocation may get back the first's memory, which
  // was written.
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    auto region = h_->local().Allocate(4 * kMiB + 5);
    ASSERT_TRUE(region.has_value()) << region.error().ToString();
    std::byte* data = (*region)->data();
    const std::size_t size = (*region)->size();
    ASSERT_EQ(size, 4 * kMiB + 5);
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(data) % page, 0u);
    std::vector<unsigned char> resident((size + page - 1) / page);
    ASSERT_EQ(mincore(data, size, resident.data()), 0) << std::strerror(errno);
    EXPECT_EQ(
        std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return !(r & 1); }),
        0)
        << "pages not faulted in";
    EXPECT_EQ(std::count(data, data + size, std::byte{0}), static_cast<std::ptrdiff_t>(size));
    std::fill(data, data + size, std::byte{0x5a});
  }
}

TEST_P(TransportConformanceTest, PutAndGetOneByteTo64MiB) {
  std::uint64_t seed = 1;
  for (std::size_t size : {std::size_t{1}, std::size_t{8}, std::size_t{4096},
                           std::size_t{64} * 1024 + 3, kMiB, 64 * kMiB}) {
    SCOPED_TRACE(size);
    const Bytes data = Pattern(size, ++seed);
    ASSERT_TRUE(ep_->Put(data, Remote(0), *key_).has_value());
    ASSERT_TRUE(Flush(*ep_).has_value());
    auto sum = RemoteChecksum(0, size);
    ASSERT_TRUE(sum.has_value()) << sum.error().ToString();
    EXPECT_EQ(*sum, Checksum(data));

    Bytes back(size);
    Status got = GetInto(back, 0);
    ASSERT_TRUE(got.has_value()) << got.error().ToString();
    EXPECT_TRUE(back == data);
  }
}

TEST_P(TransportConformanceTest, UnalignedBuffersAndOffsets) {
  const Bytes data = Pattern(3 * 4096 + 17, 7);
  // Source, remote offset and destination all off any alignment.
  const ByteView src = ByteView(data).subspan(5);
  const std::uint64_t remote_offset = 4093;
  ASSERT_TRUE(ep_->Put(src, Remote(remote_offset), *key_).has_value());
  ASSERT_TRUE(Flush(*ep_).has_value());
  auto sum = RemoteChecksum(remote_offset, src.size());
  ASSERT_TRUE(sum.has_value());
  EXPECT_EQ(*sum, Checksum(src));

  Bytes back(src.size() + 3);
  ASSERT_TRUE(GetInto(std::span(back).subspan(3), remote_offset).has_value());
  EXPECT_TRUE(std::equal(src.begin(), src.end(), back.begin() + 3));
}

TEST_P(TransportConformanceTest, ManyOutstandingPutsThenOneFlush) {
  constexpr std::size_t kCount = 1000;
  constexpr std::size_t kEach = 4096 + 1;  // not page multiples: neighbours share pages
  const Bytes data = Pattern(kCount * kEach, 11);
  std::size_t completed = 0;
  for (std::size_t i = 0; i < kCount; ++i) {
    Status put = ep_->Put(ByteView(data).subspan(i * kEach, kEach), Remote(i * kEach), *key_,
                          [&completed](Status s) { completed += s.has_value(); });
    if (!put.has_value() && put.error().code() == Errc::kResourceExhausted) {
      // Back-pressure: let the backend drain, then issue it again.
      h_->local().Progress();
      --i;
      continue;
    }
    ASSERT_TRUE(put.has_value()) << put.error().ToString();
  }
  ASSERT_TRUE(Flush(*ep_).has_value());
  ASSERT_TRUE(h_->Wait([&] { return completed == kCount; }, kTimeout).has_value())
      << completed << " of " << kCount << " puts completed";
  auto sum = RemoteChecksum(0, data.size());
  ASSERT_TRUE(sum.has_value());
  EXPECT_EQ(*sum, Checksum(data));
}

TEST_P(TransportConformanceTest, ManyOutstandingGets) {
  constexpr std::size_t kCount = 256;
  constexpr std::size_t kEach = 8192 + 5;
  ASSERT_TRUE(Call(*ep_, kFill, ToBytes(Range{0, kCount * kEach, 21})).has_value());
  Bytes back(kCount * kEach);
  std::size_t completed = 0;
  for (std::size_t i = 0; i < kCount; ++i) {
    ASSERT_TRUE(ep_->Get(std::span(back).subspan(i * kEach, kEach), Remote(i * kEach), *key_,
                         [&completed](Status s) { completed += s.has_value(); })
                    .has_value());
  }
  ASSERT_TRUE(h_->Wait([&] { return completed == kCount; }, kTimeout).has_value());
  EXPECT_TRUE(back == Pattern(kCount * kEach, 21));
}

TEST_P(TransportConformanceTest, FenceOrdersDataBeforeFlag) {
  constexpr std::uint64_t kFlagOffset = 0;
  constexpr std::uint64_t kDataOffset = 4096;
  constexpr std::size_t kDataBytes = 4 * kMiB;
  for (std::uint64_t round = 1; round <= 5; ++round) {
    SCOPED_TRACE(round);
    const Bytes data = Pattern(kDataBytes, 100 + round);
    const Watch watch{kFlagOffset, round, Range{kDataOffset, kDataBytes, 0}};
    ASSERT_TRUE(Call(*ep_, kWatch, ToBytes(watch)).has_value());
    // A put's source must stay valid until its local completion.
    const Bytes flag = ToBytes(round);
    ASSERT_TRUE(ep_->Put(data, Remote(kDataOffset), *key_).has_value());
    ASSERT_TRUE(ep_->Fence().has_value());
    ASSERT_TRUE(ep_->Put(flag, Remote(kFlagOffset), *key_).has_value());
    ASSERT_TRUE(Flush(*ep_).has_value());
    // What the peer saw when the flag appeared: all of the data.
    auto seen = Call(*ep_, kWatchResult, {});
    ASSERT_TRUE(seen.has_value()) << seen.error().ToString();
    EXPECT_EQ(*FromBytes<std::uint64_t>(*seen), Checksum(data));
  }
}

TEST_P(TransportConformanceTest, FlushMeansRemotelyVisible) {
  // The peer reads its own memory right after the flush completes; no get
  // from this side that could itself push the data through.
  for (std::uint64_t i = 0; i < 20; ++i) {
    const Bytes data = Pattern(64 * 1024, 500 + i);
    ASSERT_TRUE(ep_->Put(data, Remote(i * 4096), *key_).has_value());
    ASSERT_TRUE(Flush(*ep_).has_value());
    auto sum = RemoteChecksum(i * 4096, data.size());
    ASSERT_TRUE(sum.has_value());
    ASSERT_EQ(*sum, Checksum(data)) << "round " << i;
  }
}

TEST_P(TransportConformanceTest, OutOfBoundsIsAClearError) {
  const Bytes data(64);
  Bytes back(64);
  const std::uint64_t end = key_->base() + key_->length();
  for (std::uint64_t addr : {end - 63, end, end + 4096, key_->base() - 1, std::uint64_t{0}}) {
    SCOPED_TRACE(addr);
    Status put = ep_->Put(data, addr, *key_);
    ASSERT_FALSE(put.has_value());
    EXPECT_EQ(put.error().code(), Errc::kInvalidArgument);
    EXPECT_NE(put.error().message().find("outside the region"), std::string::npos)
        << put.error().ToString();
    Status get = ep_->Get(back, addr, *key_);
    ASSERT_FALSE(get.has_value());
    EXPECT_EQ(get.error().code(), Errc::kInvalidArgument);
  }
  // The last byte is fine; the endpoint is unharmed by the refusals.
  ASSERT_TRUE(ep_->Put(ByteView(data).first(1), end - 1, *key_).has_value());
  EXPECT_TRUE(Flush(*ep_).has_value());
}

TEST_P(TransportConformanceTest, ForeignOrDamagedKeyIsAClearError) {
  auto other = h_->ConnectToPeer();
  ASSERT_TRUE(other.has_value()) << other.error().ToString();
  const Bytes data(8);
  // A key unpacked on another endpoint.
  Status put = (*other)->Put(data, Remote(0), *key_);
  ASSERT_FALSE(put.has_value());
  EXPECT_EQ(put.error().code(), Errc::kInvalidArgument) << put.error().ToString();

  Bytes garbage = packed_key_;
  std::reverse(garbage.begin(), garbage.end());
  auto bad = ep_->UnpackKey(garbage);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Errc::kCorrupt) << bad.error().ToString();
  auto empty = ep_->UnpackKey({});
  ASSERT_FALSE(empty.has_value());
  EXPECT_NE(empty.error().code(), Errc::kInternal);

  auto bad_address = h_->local().Connect(garbage);
  ASSERT_FALSE(bad_address.has_value());
  EXPECT_EQ(bad_address.error().code(), Errc::kCorrupt);
  // The good endpoint still works.
  EXPECT_TRUE(ep_->Put(data, Remote(0), *key_).has_value());
  EXPECT_TRUE(Flush(*ep_).has_value());
}

TEST_P(TransportConformanceTest, RequestsAndRepliesUnderLoad) {
  constexpr int kRequests = 300;
  const Bytes bulk = Pattern(kMiB, 3);
  int replies = 0;
  int wrong = 0;
  for (int i = 0; i < kRequests; ++i) {
    // Puts stream to the peer meanwhile.
    if (i % 10 == 0) {
      ASSERT_TRUE(ep_->Put(bulk, Remote((i / 10 % 32) * kMiB), *key_).has_value());
    }
    const Bytes payload = Pattern(static_cast<std::size_t>(i) * 211 % (64 * 1024), i);
    Status sent = ep_->Request(kEcho, payload, kTimeout, [&, payload](Result<Bytes> reply) {
      ++replies;
      if (!reply.has_value() || *reply != payload) ++wrong;
    });
    ASSERT_TRUE(sent.has_value()) << sent.error().ToString();
  }
  ASSERT_TRUE(h_->Wait([&] { return replies == kRequests; }, kTimeout).has_value())
      << replies << " of " << kRequests << " replies";
  EXPECT_EQ(wrong, 0);
  EXPECT_TRUE(Flush(*ep_).has_value());
}

TEST_P(TransportConformanceTest, ErrorRepliesAreTyped) {
  auto refused = Call(*ep_, kFail, {});
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), Errc::kNotMigratable);
  EXPECT_EQ(refused.error().message(), "refused by request");

  auto unknown = Call(*ep_, 999, {});
  ASSERT_FALSE(unknown.has_value());
  EXPECT_EQ(unknown.error().code(), Errc::kNotFound);

  Bytes too_big(kMaxMessageBytes + 1);
  Status sent = ep_->Request(kEcho, too_big, kTimeout, [](Result<Bytes>) {});
  ASSERT_FALSE(sent.has_value());
  EXPECT_EQ(sent.error().code(), Errc::kInvalidArgument);

  auto largest = Call(*ep_, kEcho, Bytes(kMaxMessageBytes, std::byte{0x5a}));
  ASSERT_TRUE(largest.has_value()) << largest.error().ToString();
  EXPECT_EQ(largest->size(), kMaxMessageBytes);
}

TEST_P(TransportConformanceTest, RequestToAStalledPeerTimesOut) {
  ASSERT_TRUE(Call(*ep_, kPause, ToBytes(std::uint64_t{1500})).has_value());
  const auto start = std::chrono::steady_clock::now();
  auto reply = Call(*ep_, kEcho, ToBytes(std::uint64_t{42}), milliseconds(300));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(reply.has_value());
  EXPECT_EQ(reply.error().code(), Errc::kTimeout) << reply.error().ToString();
  EXPECT_LT(took, milliseconds(1400));
  // Once the peer is back, the endpoint works; the late reply is dropped.
  auto later = Call(*ep_, kEcho, ToBytes(std::uint64_t{43}));
  ASSERT_TRUE(later.has_value()) << later.error().ToString();
  EXPECT_EQ(*FromBytes<std::uint64_t>(*later), 43u);
}

TEST_P(TransportConformanceTest, PeerKilledMidTransferGivesATypedError) {
  auto kill = h_->killer();
  if (!kill) GTEST_SKIP() << GetParam() << " cannot kill its peer";
  // A stream of puts and a request in flight when the peer dies.
  const Bytes bulk = Pattern(kMiB, 9);
  for (std::size_t i = 0; i < 32; ++i) {
    ASSERT_TRUE(ep_->Put(bulk, Remote(i * kMiB), *key_).has_value());
  }
  std::optional<Result<Bytes>> reply;
  ASSERT_TRUE(
      ep_->Request(kEcho, bulk, milliseconds(60000), [&](Result<Bytes> r) { reply = std::move(r); })
          .has_value());
  ASSERT_TRUE(kill().has_value());
  const auto start = std::chrono::steady_clock::now();
  std::optional<Status> flushed;
  Status flush = ep_->Flush([&](Status s) { flushed = std::move(s); });
  if (flush.has_value()) {
    ASSERT_TRUE(
        h_->Wait([&] { return flushed.has_value() && reply.has_value(); }, milliseconds(15000))
            .has_value())
        << "no error within 15 s after the peer died";
  }
  const auto took = std::chrono::steady_clock::now() - start;
  // The request either was answered before the peer died or failed typed.
  if (reply.has_value() && !reply->has_value()) {
    EXPECT_EQ(reply->error().code(), Errc::kUnavailable) << reply->error().ToString();
  }
  const Status& outcome = flush.has_value() ? *flushed : flush;
  ASSERT_FALSE(outcome.has_value()) << "flush to a dead peer succeeded";
  EXPECT_TRUE(outcome.error().code() == Errc::kUnavailable ||
              outcome.error().code() == Errc::kCancelled)
      << outcome.error().ToString();
  ASSERT_FALSE(ep_->status().has_value());
  EXPECT_EQ(ep_->status().error().code(), Errc::kUnavailable);
  // New operations fail at once, naming the peer.
  Status after = ep_->Put(bulk, Remote(0), *key_);
  ASSERT_FALSE(after.has_value());
  EXPECT_EQ(after.error().code(), Errc::kUnavailable);
  EXPECT_LT(took, milliseconds(15000));
}

TEST_P(TransportConformanceTest, DestroyingAnEndpointDropsItsCompletions) {
  auto other = h_->ConnectToPeer();
  ASSERT_TRUE(other.has_value()) << other.error().ToString();
  auto key = (*other)->UnpackKey(packed_key_);
  ASSERT_TRUE(key.has_value()) << key.error().ToString();
  std::unique_ptr<Endpoint> ep = std::move(*other);
  std::unique_ptr<RemoteKey> other_key = std::move(*key);
  const Bytes data = Pattern(4096, 77);
  int ran = 0;
  for (int i = 0; i < 16; ++i) {
    // The first completion to run destroys the endpoint (and its key).
    ASSERT_TRUE(ep->Put(data, Remote(0), *other_key, [&](Status) {
                    ++ran;
                    other_key.reset();
                    ep.reset();
                  }).has_value());
  }
  ASSERT_TRUE(h_->Wait([&] { return ran > 0; }, kTimeout).has_value());
  // Whatever else was queued for it never runs; the fabric goes on.
  ASSERT_TRUE(Flush(*ep_).has_value());
  EXPECT_EQ(ran, 1);
  auto echo = Call(*ep_, kEcho, data);
  ASSERT_TRUE(echo.has_value()) << echo.error().ToString();
}

TEST_P(TransportConformanceTest, PeerThatStopsAnsweringIsDeclaredDead) {
  auto silence = h_->silencer();
  if (!silence) GTEST_SKIP() << GetParam() << " cannot silence its peer";
  // The peer keeps its connections open but answers nothing: no reset
  // arrives, only silence (a stopped process, a cut link, a hung host).
  ASSERT_TRUE(silence().has_value());
  const auto start = std::chrono::steady_clock::now();
  auto reply = Call(*ep_, kEcho, ToBytes(std::uint64_t{7}), milliseconds(60000));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(reply.has_value());
  EXPECT_EQ(reply.error().code(), Errc::kUnavailable) << reply.error().ToString();
  EXPECT_GE(took, kHarnessPeerTimeout - milliseconds(100));
  EXPECT_LT(took, kHarnessPeerTimeout + milliseconds(3000));
  ASSERT_FALSE(ep_->status().has_value());
  EXPECT_EQ(ep_->status().error().code(), Errc::kUnavailable);
  const Bytes data(8);
  Status after = ep_->Put(data, Remote(0), *key_);
  ASSERT_FALSE(after.has_value());
  EXPECT_EQ(after.error().code(), Errc::kUnavailable);
}

INSTANTIATE_TEST_SUITE_P(Backends, TransportConformanceTest, ::testing::ValuesIn(HarnessNames()),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace roam::transport::testing
