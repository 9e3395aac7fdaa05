// What only the fake backend does: determinism, its progress model (a put
// lands when the target progresses), and fault injection. What every backend
// must do is the conformance suite's business.
#include "roam/transport/fake.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include <gtest/gtest.h>

#include "transport/wire/wire.h"

namespace roam::transport {
namespace {

using namespace std::chrono_literals;

Bytes ToBytes(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

std::string ToString(ByteView b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

template <typename T>
testing::AssertionResult FailsWith(const Result<T>& result, Errc code) {
  if (result.has_value()) {
    return testing::AssertionFailure() << "succeeded; expected " << ErrcName(code);
  }
  if (result.error().code() != code) {
    return testing::AssertionFailure()
           << result.error().ToString() << "; expected " << ErrcName(code);
  }
  return testing::AssertionSuccess();
}

// Where a completion puts its outcome. Shared with the completion, so that a
// completion the backend (wrongly) ran late would not write freed memory.
template <typename T>
using Slot = std::shared_ptr<std::optional<T>>;

template <typename T>
Slot<T> NewSlot() {
  return std::make_shared<std::optional<T>>();
}

Completion Into(const Slot<Status>& slot) {
  return [slot](Status s) { *slot = std::move(s); };
}

ReplyHandler Into(const Slot<Result<Bytes>>& slot) {
  return [slot](Result<Bytes> r) { *slot = std::move(r); };
}

// Progresses the fabrics round-robin until a whole round does nothing.
void Settle(std::initializer_list<Fabric*> fabrics) {
  for (int round = 0; round < 100; ++round) {
    unsigned events = 0;
    for (Fabric* f : fabrics) events += f->Progress();
    if (events == 0) return;
  }
  ADD_FAILURE() << "fabrics still busy after 100 rounds";
}

// A RemoteKey of no backend at all.
class StrangerKey final : public RemoteKey {
 public:
  std::uint64_t base() const override { return 0; }
  std::uint64_t length() const override { return std::numeric_limits<std::uint64_t>::max(); }
};

class FakeNetworkTest : public testing::Test {
 protected:
  using TimePoint = FakeNetwork::Clock::time_point;

  static FakeNetwork::Options OptionsWithClock(TimePoint* now, std::uint64_t seed) {
    FakeNetwork::Options options;
    options.seed = seed;
    options.now = [now] { return *now; };
    return options;
  }

  static std::unique_ptr<Fabric> AddNode(FakeNetwork& net, const std::string& name,
                                         std::size_t max_outstanding = 4096) {
    FabricOptions options;
    options.name = name;
    options.max_outstanding = max_outstanding;
    auto fabric = net.AddNode(options);
    EXPECT_TRUE(fabric.has_value()) << fabric.error().ToString();
    return fabric.has_value() ? std::move(*fabric) : nullptr;
  }
  std::unique_ptr<Fabric> AddNode(const std::string& name, std::size_t max_outstanding = 4096) {
    return AddNode(net_, name, max_outstanding);
  }

  static std::unique_ptr<Endpoint> Connect(Fabric& from, const Fabric& to) {
    auto address = to.Address();
    EXPECT_TRUE(address.has_value()) << address.error().ToString();
    if (!address.has_value()) return nullptr;
    auto ep = from.Connect(*address);
    EXPECT_TRUE(ep.has_value()) << ep.error().ToString();
    return ep.has_value() ? std::move(*ep) : nullptr;
  }

  static std::unique_ptr<RemoteKey> KeyFor(Endpoint& ep, const MemoryRegion& region) {
    auto packed = region.PackKey();
    EXPECT_TRUE(packed.has_value()) << packed.error().ToString();
    if (!packed.has_value()) return nullptr;
    auto key = ep.UnpackKey(*packed);
    EXPECT_TRUE(key.has_value()) << key.error().ToString();
    return key.has_value() ? std::move(*key) : nullptr;
  }

  static std::unique_ptr<MemoryRegion> Allocate(Fabric& fabric, std::size_t bytes) {
    auto region = fabric.Allocate(bytes);
    EXPECT_TRUE(region.has_value()) << region.error().ToString();
    return region.has_value() ? std::move(*region) : nullptr;
  }

  static std::uint64_t Addr(const MemoryRegion& region, std::size_t offset = 0) {
    return reinterpret_cast<std::uintptr_t>(region.data()) + offset;
  }

  TimePoint now_{};
  FakeNetwork net_{OptionsWithClock(&now_, 7)};
};

TEST_F(FakeNetworkTest, AdvertisesFaultInjectionAndDeterminismOnly) {
  auto a = AddNode("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->backend(), "fake");
  EXPECT_EQ(a->name(), "a");
  EXPECT_TRUE(a->capabilities().Has(Capability::kFaultInjection));
  EXPECT_TRUE(a->capabilities().Has(Capability::kDeterministic));
  EXPECT_FALSE(a->capabilities().Has(Capability::kCrossProcess));
  EXPECT_EQ(a->event_fd(), -1);
}

TEST_F(FakeNetworkTest, NodeNamesAreUniqueWhileTheirFabricIsOpen) {
  auto a = AddNode("a");
  FabricOptions options;
  options.name = "a";
  EXPECT_TRUE(FailsWith(net_.AddNode(options), Errc::kAlreadyExists));
  options.name = "";
  EXPECT_TRUE(FailsWith(net_.AddNode(options), Errc::kInvalidArgument));
  a.reset();
  options.name = "a";
  EXPECT_TRUE(net_.AddNode(options).has_value());
}

TEST_F(FakeNetworkTest, AllocatedRegionsArePageAlignedAndZero) {
  auto a = AddNode("a");
  auto region = Allocate(*a, 10000);
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->size(), 10000u);
  EXPECT_EQ(Addr(*region) % 4096, 0u);
  for (std::byte b : region->bytes()) ASSERT_EQ(b, std::byte{0});
  EXPECT_TRUE(FailsWith(a->Allocate(0), Errc::kInvalidArgument));
}

// Small regions are carved from mappings the network shares among its
// nodes: each still comes zeroed (a freed one that is handed out again
// was written), faulted in, on its own pages, and not in a forked child.
TEST_F(FakeNetworkTest, SmallRegionsKeepAllocatesPromisesWhenReused) {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  auto a = AddNode("a");
  auto b = AddNode("b");
  std::vector<std::unique_ptr<MemoryRegion>> regions;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    regions.clear();
    for (Fabric* f : {a.get(), b.get(), a.get()}) {
      auto region = Allocate(*f, 3 * page + 7);
      ASSERT_NE(region, nullptr);
      EXPECT_EQ(Addr(*region) % page, 0u);
      std::vector<unsigned char> resident(4);
      ASSERT_EQ(mincore(region->data(), region->size(), resident.data()), 0);
      for (unsigned char r : resident) EXPECT_TRUE(r & 1) << "a page not faulted in";
      for (std::byte x : region->bytes()) ASSERT_EQ(x, std::byte{0});
      std::fill(region->data(), region->data() + region->size(), std::byte{0x5a});
      regions.push_back(std::move(region));
    }
    // No two share a page.
    for (std::size_t i = 0; i < regions.size(); ++i) {
      for (std::size_t j = i + 1; j < regions.size(); ++j) {
        const auto lo = std::min(Addr(*regions[i]), Addr(*regions[j]));
        const auto hi = std::max(Addr(*regions[i]), Addr(*regions[j]));
        EXPECT_GE(hi - lo, 4 * page);
      }
    }
  }
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // ENOMEM: nothing is mapped there in the child.
    const int rc = madvise(regions[0]->data(), regions[0]->size(), MADV_NORMAL);
    _exit(rc != 0 && errno == ENOMEM ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child has the region mapped";
}

TEST_F(FakeNetworkTest, APutLandsOnlyWhenTheTargetProgresses) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto region = Allocate(*b, 64);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  Bytes src = ToBytes("hello");
  auto put_done = NewSlot<Status>();
  auto flushed = NewSlot<Status>();
  ASSERT_TRUE(ep->Put(src, Addr(*region, 8), *key, Into(put_done)).has_value());
  ASSERT_TRUE(ep->Flush(Into(flushed)).has_value());
  // Completions never run inside the call that started them.
  EXPECT_FALSE(put_done->has_value());
  // The put copied `src` when it was issued.
  src[0] = std::byte{'J'};
  EXPECT_EQ(net_.in_flight(), 1u);

  for (int i = 0; i < 3; ++i) a->Progress();
  ASSERT_TRUE(put_done->has_value());
  EXPECT_TRUE(put_done->value().has_value());
  EXPECT_FALSE(flushed->has_value());
  EXPECT_EQ(region->data()[8], std::byte{0});

  EXPECT_EQ(b->Progress(), 1u);
  EXPECT_EQ(ToString(region->bytes().subspan(8, 5)), "hello");
  EXPECT_FALSE(flushed->has_value());  // the ack is on its way back

  a->Progress();
  ASSERT_TRUE(flushed->has_value());
  EXPECT_TRUE(flushed->value().has_value());
  EXPECT_EQ(net_.in_flight(), 0u);
}

// PutSource::kReadAtLanding: the put reads its source when it lands, and
// its completion comes with the ack.
class ReadAtLandingTest : public FakeNetworkTest {
 protected:
  static FakeNetwork::Options ReadAtLanding(TimePoint* now) {
    FakeNetwork::Options options = OptionsWithClock(now, 7);
    options.put_source = FakeNetwork::PutSource::kReadAtLanding;
    return options;
  }
  FakeNetwork landing_{ReadAtLanding(&now_)};
};

TEST_F(ReadAtLandingTest, APutReadsItsSourceWhereItLandsAndCompletesWithItsAck) {
  auto a = AddNode(landing_, "a");
  auto b = AddNode(landing_, "b");
  auto region = Allocate(*b, 64);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  Bytes src = ToBytes("hello");
  auto put_done = NewSlot<Status>();
  auto flushed = NewSlot<Status>();
  ASSERT_TRUE(ep->Put(src, Addr(*region, 8), *key, Into(put_done)).has_value());
  ASSERT_TRUE(ep->Flush(Into(flushed)).has_value());
  // Until the target progresses the source is still the caller's.
  for (int i = 0; i < 3; ++i) a->Progress();
  EXPECT_FALSE(put_done->has_value());
  EXPECT_EQ(region->data()[8], std::byte{0});
  src[0] = std::byte{'J'};

  EXPECT_EQ(b->Progress(), 1u);
  EXPECT_EQ(ToString(region->bytes().subspan(8, 5)), "Jello");
  EXPECT_FALSE(put_done->has_value());  // the ack is on its way back

  a->Progress();
  ASSERT_TRUE(put_done->has_value());
  EXPECT_TRUE(put_done->value().has_value());
  ASSERT_TRUE(flushed->has_value());
  EXPECT_TRUE(flushed->value().has_value());
  EXPECT_EQ(landing_.in_flight(), 0u);
}

TEST_F(ReadAtLandingTest, APutOnTheWireWhenItsEndpointIsDestroyedLandsAsItWas) {
  auto a = AddNode(landing_, "a");
  auto b = AddNode(landing_, "b");
  auto region = Allocate(*b, 64);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  auto src = std::make_unique<Bytes>(ToBytes("kept"));
  auto put_done = NewSlot<Status>();
  ASSERT_TRUE(ep->Put(*src, Addr(*region), *key, Into(put_done)).has_value());
  key.reset();
  ep.reset();
  // The source is the caller's again once the endpoint is gone: the put
  // copied it then.
  (*src)[0] = std::byte{'X'};
  src.reset();
  EXPECT_EQ(landing_.in_flight(), 1u);
  Settle({a.get(), b.get()});
  EXPECT_EQ(ToString(region->bytes().subspan(0, 4)), "kept");
  EXPECT_FALSE(put_done->has_value());
  EXPECT_EQ(landing_.in_flight(), 0u);
}

TEST_F(ReadAtLandingTest, APutOnTheWireWhenItsEndpointFailsLandsAsItWas) {
  auto a = AddNode(landing_, "a");  // peer_timeout: the default 5 s
  auto b = AddNode(landing_, "b");
  auto region = Allocate(*b, 64);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  Bytes src = ToBytes("late");
  auto put_done = NewSlot<Status>();
  ASSERT_TRUE(ep->Put(src, Addr(*region), *key, Into(put_done)).has_value());
  // b does not progress: past peer_timeout a declares it dead, and the
  // put's completion hands the source back.
  for (int i = 0; i < 7; ++i) {
    now_ += 1s;
    a->Progress();
  }
  ASSERT_TRUE(put_done->has_value());
  EXPECT_TRUE(FailsWith(**put_done, Errc::kUnavailable));
  src[0] = std::byte{'X'};
  // The put was still on the wire: it lands when b progresses, as it was.
  b->Progress();
  EXPECT_EQ(ToString(region->bytes().subspan(0, 4)), "late");
}

TEST_F(FakeNetworkTest, AFlushWithNothingInFlightCompletesAtTheNextProgress) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto ep = Connect(*a, *b);
  auto flushed = NewSlot<Status>();
  ASSERT_TRUE(ep->Flush(Into(flushed)).has_value());
  EXPECT_FALSE(flushed->has_value());
  EXPECT_FALSE(a->Arm());
  a->Progress();
  ASSERT_TRUE(flushed->has_value());
  EXPECT_TRUE(flushed->value().has_value());
  EXPECT_TRUE(a->Arm());
}

TEST_F(FakeNetworkTest, AGetReadsThePeersMemoryWhenBothProgress) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto region = Allocate(*b, 64);
  std::memcpy(region->data() + 4, "world", 5);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  std::vector<std::byte> dst(5);
  auto got = NewSlot<Status>();
  ASSERT_TRUE(ep->Get(dst, Addr(*region, 4), *key, Into(got)).has_value());
  a->Progress();
  EXPECT_FALSE(got->has_value());
  EXPECT_FALSE(b->Arm());
  b->Progress();
  EXPECT_FALSE(got->has_value());
  a->Progress();
  ASSERT_TRUE(got->has_value());
  EXPECT_TRUE(got->value().has_value());
  EXPECT_EQ(ToString(dst), "world");
}

TEST_F(FakeNetworkTest, RequestsReachTheHandlerAndRepliesOrErrorsComeBack) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  b->Handle(
      7, [](const Message& m) -> Result<Bytes> { return ToBytes("re: " + ToString(m.payload)); });
  b->Handle(8, [](const Message&) -> Result<Bytes> {
    return MakeError(Errc::kPermissionDenied, "not you");
  });
  auto ep = Connect(*a, *b);
  auto echoed = NewSlot<Result<Bytes>>();
  auto refused = NewSlot<Result<Bytes>>();
  auto unhandled = NewSlot<Result<Bytes>>();
  ASSERT_TRUE(ep->Request(7, ToBytes("ping"), 1s, Into(echoed)).has_value());
  ASSERT_TRUE(ep->Request(8, {}, 1s, Into(refused)).has_value());
  ASSERT_TRUE(ep->Request(9, {}, 1s, Into(unhandled)).has_value());
  Settle({a.get(), b.get()});
  ASSERT_TRUE(echoed->has_value() && refused->has_value() && unhandled->has_value());
  ASSERT_TRUE(echoed->value().has_value()) << echoed->value().error().ToString();
  EXPECT_EQ(ToString(echoed->value().value()), "re: ping");
  ASSERT_TRUE(FailsWith(**refused, Errc::kPermissionDenied));
  EXPECT_EQ(refused->value().error().message(), "not you");
  EXPECT_TRUE(FailsWith(**unhandled, Errc::kNotFound));

  const Bytes huge(kMaxMessageBytes + 1);
  EXPECT_TRUE(FailsWith(ep->Request(7, huge, 1s, {}), Errc::kInvalidArgument));
}

TEST_F(FakeNetworkTest, DelayIsHonouredOnTheNetworksClockAndKeepsOrder) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto region = Allocate(*b, 8);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  ASSERT_TRUE(net_.SetFaults("a", "b", {.drop = 0.0, .delay = 10ms}).has_value());
  const Bytes first{std::byte{1}};
  const Bytes second{std::byte{2}};
  ASSERT_TRUE(ep->Put(first, Addr(*region), *key).has_value());
  // Without the delay the second put would be due at once; it still may not
  // overtake the first.
  ASSERT_TRUE(net_.SetFaults("a", "b", {}).has_value());
  ASSERT_TRUE(ep->Put(second, Addr(*region), *key).has_value());
  auto flushed = NewSlot<Status>();
  ASSERT_TRUE(ep->Flush(Into(flushed)).has_value());

  Settle({a.get(), b.get()});
  EXPECT_EQ(region->data()[0], std::byte{0});
  now_ += 9ms;
  Settle({a.get(), b.get()});
  EXPECT_EQ(region->data()[0], std::byte{0});
  EXPECT_TRUE(b->Arm());
  now_ += 1ms;
  EXPECT_FALSE(b->Arm());
  EXPECT_EQ(b->Progress(), 2u);
  EXPECT_EQ(region->data()[0], std::byte{2});
  a->Progress();
  ASSERT_TRUE(flushed->has_value());
  EXPECT_TRUE(flushed->value().has_value());
}

TEST_F(FakeNetworkTest, ADroppedRequestTimesOutOnTheNetworksClock) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  int served = 0;
  b->Handle(1, [&served](const Message&) -> Result<Bytes> {
    ++served;
    return Bytes{};
  });
  auto ep = Connect(*a, *b);
  ASSERT_TRUE(net_.SetFaults("a", "b", {.drop = 1.0, .delay = {}}).has_value());
  auto reply = NewSlot<Result<Bytes>>();
  ASSERT_TRUE(ep->Request(1, {}, 100ms, Into(reply)).has_value());
  EXPECT_EQ(net_.in_flight(), 0u);
  now_ += 99ms;
  Settle({a.get(), b.get()});
  EXPECT_FALSE(reply->has_value());
  now_ += 1ms;
  EXPECT_FALSE(a->Arm());
  a->Progress();
  ASSERT_TRUE(reply->has_value());
  EXPECT_TRUE(FailsWith(**reply, Errc::kTimeout));
  EXPECT_EQ(served, 0);

  // A lost reply ends the same way, after the handler ran.
  ASSERT_TRUE(net_.SetFaults("a", "b", {}).has_value());
  ASSERT_TRUE(net_.SetFaults("b", "a", {.drop = 1.0, .delay = {}}).has_value());
  reply = NewSlot<Result<Bytes>>();
  ASSERT_TRUE(ep->Request(1, {}, 100ms, Into(reply)).has_value());
  Settle({a.get(), b.get()});
  EXPECT_EQ(served, 1);
  EXPECT_FALSE(reply->has_value());
  now_ += 100ms;
  a->Progress();
  ASSERT_TRUE(reply->has_value());
  EXPECT_TRUE(FailsWith(**reply, Errc::kTimeout));
}

TEST_F(FakeNetworkTest, AFlushAfterADroppedPutFailsAfterThePeerTimeout) {
  auto a = AddNode("a");  // peer_timeout: the default 5 s, on the network's clock
  auto b = AddNode("b");
  auto region = Allocate(*b, 8);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  ASSERT_TRUE(net_.SetFaults("a", "b", {.drop = 1.0, .delay = {}}).has_value());
  auto put_done = NewSlot<Status>();
  auto flushed = NewSlot<Status>();
  ASSERT_TRUE(ep->Put(ToBytes("x"), Addr(*region), *key, Into(put_done)).has_value());
  ASSERT_TRUE(ep->Flush(Into(flushed)).has_value());
  for (int i = 0; i < 4; ++i) {
    now_ += 1s;
    Settle({a.get(), b.get()});
  }
  // The data left the caller's buffer, so the put completed locally; it never
  // landed, so the flush still waits.
  ASSERT_TRUE(put_done->has_value());
  EXPECT_FALSE(flushed->has_value());
  EXPECT_TRUE(ep->status().has_value());
  // Past peer_timeout without an answer: the peer is declared dead.
  for (int i = 0; i < 2; ++i) {
    now_ += 1s;
    Settle({a.get(), b.get()});
  }
  ASSERT_TRUE(flushed->has_value());
  EXPECT_TRUE(FailsWith(**flushed, Errc::kUnavailable));
  EXPECT_TRUE(FailsWith(ep->status(), Errc::kUnavailable));
  EXPECT_EQ(region->data()[0], std::byte{0});
}

// "No limit" is milliseconds::max(): the deadline saturates instead of
// overflowing, and the reply still comes.
TEST_F(FakeNetworkTest, ARequestWithoutATimeLimitGetsItsReply) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  b->Handle(1, [](const Message& m) -> Result<Bytes> {
    return Bytes(m.payload.begin(), m.payload.end());
  });
  auto ep = Connect(*a, *b);
  auto reply = NewSlot<Result<Bytes>>();
  ASSERT_TRUE(
      ep->Request(1, ToBytes("x"), std::chrono::milliseconds::max(), Into(reply)).has_value());
  Settle({a.get(), b.get()});
  ASSERT_TRUE(reply->has_value());
  EXPECT_TRUE(reply->value().has_value());
}

// An endpoint whose peer answers, however slowly, is not declared dead: the
// silence that counts is since the last answer.
TEST_F(FakeNetworkTest, APeerThatKeepsAnsweringStaysAlive) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  b->Handle(1, [](const Message& m) -> Result<Bytes> {
    return Bytes(m.payload.begin(), m.payload.end());
  });
  auto ep = Connect(*a, *b);
  ASSERT_TRUE(net_.SetFaults("b", "a", {.drop = 0.0, .delay = 3s}).has_value());
  for (int i = 0; i < 4; ++i) {
    auto reply = NewSlot<Result<Bytes>>();
    ASSERT_TRUE(ep->Request(1, ToBytes("ping"), 1h, Into(reply)).has_value());
    for (int step = 0; step < 4 && !reply->has_value(); ++step) {
      now_ += 1s;
      Settle({a.get(), b.get()});
    }
    ASSERT_TRUE(reply->has_value()) << "request " << i;
    EXPECT_TRUE(reply->value().has_value());
  }
  EXPECT_TRUE(ep->status().has_value());
}

// Requests 0..63 over a link that drops half; which ones arrive, in order.
std::vector<int> ArrivalsWithSeed(std::uint64_t seed) {
  FakeNetwork::Clock::time_point now{};
  FakeNetwork::Options options;
  options.seed = seed;
  options.now = [&now] { return now; };
  FakeNetwork net(std::move(options));
  FabricOptions fa;
  fa.name = "a";
  FabricOptions fb;
  fb.name = "b";
  auto a = net.AddNode(fa);
  auto b = net.AddNode(fb);
  EXPECT_TRUE(a.has_value() && b.has_value());
  if (!a.has_value() || !b.has_value()) return {};
  std::vector<int> arrived;
  (*b)->Handle(1, [&arrived](const Message& m) -> Result<Bytes> {
    arrived.push_back(static_cast<int>(m.payload[0]));
    return Bytes{};
  });
  EXPECT_TRUE(net.SetFaults("a", "b", {.drop = 0.5, .delay = {}}).has_value());
  auto address = (*b)->Address();
  EXPECT_TRUE(address.has_value());
  auto ep = (*a)->Connect(*address);
  EXPECT_TRUE(ep.has_value());
  if (!ep.has_value()) return {};
  for (int i = 0; i < 64; ++i) {
    EXPECT_TRUE((*ep)->Request(1, Bytes{static_cast<std::byte>(i)}, 1s, {}).has_value());
  }
  Settle({a->get(), b->get()});
  ep->reset();
  return arrived;
}

TEST_F(FakeNetworkTest, TheSameSeedDropsTheSameMessages) {
  const std::vector<int> first = ArrivalsWithSeed(42);
  EXPECT_EQ(ArrivalsWithSeed(42), first);
  EXPECT_GT(first.size(), 0u);
  EXPECT_LT(first.size(), 64u);
  EXPECT_TRUE(std::is_sorted(first.begin(), first.end()));
  // 64 fair draws agreeing by chance: 2^-64.
  EXPECT_NE(ArrivalsWithSeed(43), first);
}

// Three senders with different delays to one receiver; who is served when.
std::vector<std::string> ServiceOrder() {
  FakeNetwork::Clock::time_point now{};
  FakeNetwork::Options options;
  options.now = [&now] { return now; };
  FakeNetwork net(std::move(options));
  std::vector<std::unique_ptr<Fabric>> senders;
  std::vector<std::unique_ptr<Endpoint>> eps;
  FabricOptions fd;
  fd.name = "d";
  auto d = net.AddNode(fd);
  EXPECT_TRUE(d.has_value());
  if (!d.has_value()) return {};
  std::vector<std::string> order;
  (*d)->Handle(1, [&order](const Message& m) -> Result<Bytes> {
    order.push_back(ToString(m.payload));
    return Bytes{};
  });
  const std::array<std::pair<std::string, std::chrono::milliseconds>, 3> senders_and_delays = {
      {{"a", 3ms}, {"b", 1ms}, {"c", 2ms}}};
  for (const auto& [name, delay] : senders_and_delays) {
    FabricOptions fo;
    fo.name = name;
    auto f = net.AddNode(fo);
    EXPECT_TRUE(f.has_value());
    if (!f.has_value()) return {};
    EXPECT_TRUE(net.SetFaults(name, "d", {.drop = 0.0, .delay = delay}).has_value());
    auto address = (*d)->Address();
    auto ep = (*f)->Connect(*address);
    EXPECT_TRUE(ep.has_value());
    if (!ep.has_value()) return {};
    senders.push_back(std::move(*f));
    eps.push_back(std::move(*ep));
  }
  for (int round = 0; round < 3; ++round) {
    for (std::size_t i = 0; i < eps.size(); ++i) {
      const std::string payload = senders_and_delays[i].first + std::to_string(round);
      EXPECT_TRUE(eps[i]->Request(1, ToBytes(payload), 1s, {}).has_value());
    }
  }
  now += 5ms;
  (*d)->Progress();
  eps.clear();
  return order;
}

TEST_F(FakeNetworkTest, TheSameScheduleDeliversInTheSameOrder) {
  const std::vector<std::string> order = ServiceOrder();
  EXPECT_EQ(order,
            (std::vector<std::string>{"b0", "b1", "b2", "c0", "c1", "c2", "a0", "a1", "a2"}));
  EXPECT_EQ(ServiceOrder(), order);
}

// A receiver's messages come from a delayed link and an undelayed one; most
// are due in the order sent, some before one sent earlier. Each Progress
// takes those due, by due time and then in send order.
TEST_F(FakeNetworkTest, MessagesDueOutOfSendOrderAreTakenByDueTimeThenSendOrder) {
  auto slow = AddNode("slow");
  auto fast = AddNode("fast");
  auto d = AddNode("d");
  std::vector<std::string> order;
  d->Handle(1, [&order](const Message& m) -> Result<Bytes> {
    order.push_back(ToString(m.payload));
    return Bytes{};
  });
  auto from_slow = Connect(*slow, *d);
  auto from_fast = Connect(*fast, *d);
  ASSERT_TRUE(net_.SetFaults("slow", "d", {.drop = 0.0, .delay = 2ms}).has_value());
  auto send = [](Endpoint& ep, std::string_view payload) {
    EXPECT_TRUE(ep.Request(1, ToBytes(payload), 1s, {}).has_value());
  };

  send(*from_slow, "s0");  // due at 2 ms
  send(*from_fast, "f0");  // due at 0 ms, before s0
  now_ += 1ms;
  send(*from_fast, "f1");  // due at 1 ms
  send(*from_slow, "s1");  // due at 3 ms
  EXPECT_EQ(d->Progress(), 2u);
  EXPECT_EQ(order, (std::vector<std::string>{"f0", "f1"}));

  now_ += 1ms;
  send(*from_fast, "f2");  // due at 2 ms like s0, sent after it
  EXPECT_EQ(d->Progress(), 2u);
  EXPECT_EQ(order, (std::vector<std::string>{"f0", "f1", "s0", "f2"}));

  now_ += 1ms;
  EXPECT_EQ(d->Progress(), 1u);
  EXPECT_EQ(order, (std::vector<std::string>{"f0", "f1", "s0", "f2", "s1"}));
  EXPECT_EQ(net_.in_flight(), 5u);  // the replies
  from_slow.reset();
  from_fast.reset();
}

// Puts, a get, a flush and a request, none answered yet.
struct PendingOps {
  Slot<Status> put = NewSlot<Status>();
  Slot<Status> get = NewSlot<Status>();
  Slot<Status> flush = NewSlot<Status>();
  Slot<Result<Bytes>> reply = NewSlot<Result<Bytes>>();
  std::vector<std::byte> dst = std::vector<std::byte>(4);

  void Start(Endpoint& ep, const MemoryRegion& region, const RemoteKey& key) {
    const auto addr = reinterpret_cast<std::uintptr_t>(region.data());
    ASSERT_TRUE(ep.Put(ToBytes("abcd"), addr, key, Into(put)).has_value());
    ASSERT_TRUE(ep.Get(dst, addr, key, Into(get)).has_value());
    ASSERT_TRUE(ep.Flush(Into(flush)).has_value());
    ASSERT_TRUE(ep.Request(1, {}, 1h, Into(reply)).has_value());
  }
  // Every one failed with kUnavailable, whose message has `why`.
  void ExpectUnavailable(std::string_view why) const {
    for (const Slot<Status>& slot : {put, get, flush}) {
      ASSERT_TRUE(slot->has_value());
      ASSERT_TRUE(FailsWith(**slot, Errc::kUnavailable));
      EXPECT_NE(slot->value().error().message().find(why), std::string::npos)
          << slot->value().error().message();
    }
    ASSERT_TRUE(reply->has_value());
    EXPECT_TRUE(FailsWith(**reply, Errc::kUnavailable));
  }
};

void ExpectNewOpsFail(Endpoint& ep, const MemoryRegion& region, const RemoteKey& key) {
  const auto addr = reinterpret_cast<std::uintptr_t>(region.data());
  std::vector<std::byte> dst(1);
  EXPECT_TRUE(FailsWith(ep.status(), Errc::kUnavailable));
  EXPECT_TRUE(FailsWith(ep.Put(dst, addr, key, {}), Errc::kUnavailable));
  EXPECT_TRUE(FailsWith(ep.Get(dst, addr, key, {}), Errc::kUnavailable));
  EXPECT_TRUE(FailsWith(ep.Flush({}), Errc::kUnavailable));
  EXPECT_TRUE(FailsWith(ep.Fence(), Errc::kUnavailable));
  EXPECT_TRUE(FailsWith(ep.Request(1, {}, 1s, {}), Errc::kUnavailable));
}

TEST_F(FakeNetworkTest, DisconnectFailsPendingAndNewOperationsWithinOneProgress) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto c = AddNode("c");
  auto region_b = Allocate(*b, 8);
  auto region_c = Allocate(*c, 8);
  auto ab = Connect(*a, *b);
  auto ac = Connect(*a, *c);
  auto ba = Connect(*b, *a);
  auto key_b = KeyFor(*ab, *region_b);
  auto key_c = KeyFor(*ac, *region_c);
  b->Handle(1, [](const Message&) -> Result<Bytes> { return Bytes{}; });
  c->Handle(1, [](const Message&) -> Result<Bytes> { return Bytes{}; });
  PendingOps to_b;
  to_b.Start(*ab, *region_b, *key_b);
  ASSERT_TRUE(net_.Disconnect("a", "b").has_value());
  EXPECT_EQ(net_.in_flight(), 0u);  // what was on the link is lost with it
  // Issued after the break and before a notices: fails with the rest.
  PendingOps late;
  late.Start(*ab, *region_b, *key_b);
  PendingOps to_c;
  to_c.Start(*ac, *region_c, *key_c);

  EXPECT_FALSE(a->Arm());
  a->Progress();
  to_b.ExpectUnavailable("node b is unreachable: disconnected");
  late.ExpectUnavailable("disconnected");
  ExpectNewOpsFail(*ab, *region_b, *key_b);

  // The other link is untouched.
  EXPECT_TRUE(ac->status().has_value());
  Settle({a.get(), c.get()});
  ASSERT_TRUE(to_c.flush->has_value());
  EXPECT_TRUE(to_c.flush->value().has_value());
  ASSERT_TRUE(to_c.reply->has_value());
  EXPECT_TRUE(to_c.reply->value().has_value());

  // Both directions broke; b learns at its own next Progress.
  EXPECT_TRUE(ba->status().has_value());
  b->Progress();
  EXPECT_TRUE(FailsWith(ba->status(), Errc::kUnavailable));
  EXPECT_TRUE(FailsWith(a->Connect(*b->Address()), Errc::kUnavailable));
}

TEST_F(FakeNetworkTest, KillFailsEndpointsToTheNodeAndItsOwn) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto c = AddNode("c");
  auto region_b = Allocate(*b, 8);
  auto region_c = Allocate(*c, 8);
  auto ab = Connect(*a, *b);
  auto bc = Connect(*b, *c);
  auto key_b = KeyFor(*ab, *region_b);
  auto key_c = KeyFor(*bc, *region_c);
  int served = 0;
  b->Handle(1, [&served](const Message&) -> Result<Bytes> {
    ++served;
    return Bytes{};
  });
  PendingOps from_a;
  from_a.Start(*ab, *region_b, *key_b);
  PendingOps from_b;
  from_b.Start(*bc, *region_c, *key_c);
  ASSERT_TRUE(net_.Kill("b").has_value());
  EXPECT_EQ(net_.in_flight(), 0u);

  a->Progress();
  from_a.ExpectUnavailable("node b is unreachable: killed");
  ExpectNewOpsFail(*ab, *region_b, *key_b);
  EXPECT_TRUE(FailsWith(a->Connect(*b->Address()), Errc::kUnavailable));

  b->Progress();
  from_b.ExpectUnavailable("node c is unreachable: b was killed");
  ExpectNewOpsFail(*bc, *region_c, *key_c);
  c->Progress();
  EXPECT_EQ(served, 0);
  EXPECT_EQ(region_c->data()[0], std::byte{0});
}

TEST_F(FakeNetworkTest, ForeignKeysAndOutOfBoundsAreInvalidArguments) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto c = AddNode("c");
  auto region = Allocate(*b, 16);
  auto ep1 = Connect(*a, *b);
  auto ep2 = Connect(*a, *b);
  auto key1 = KeyFor(*ep1, *region);
  std::vector<std::byte> buf(2);

  const auto foreign = ep2->Put(buf, Addr(*region), *key1, {});
  ASSERT_TRUE(FailsWith(foreign, Errc::kInvalidArgument));
  EXPECT_NE(foreign.error().message().find("foreign key"), std::string::npos);
  EXPECT_TRUE(FailsWith(ep2->Get(buf, Addr(*region), *key1, {}), Errc::kInvalidArgument));
  EXPECT_TRUE(FailsWith(ep1->Put(buf, 0, StrangerKey(), {}), Errc::kInvalidArgument));

  EXPECT_TRUE(FailsWith(ep1->Put(buf, Addr(*region, 15), *key1, {}), Errc::kInvalidArgument));
  EXPECT_TRUE(FailsWith(ep1->Get(buf, Addr(*region) - 1, *key1, {}), Errc::kInvalidArgument));
  EXPECT_TRUE(ep1->Put(buf, Addr(*region, 14), *key1, {}).has_value());

  // A key c packed is no use on the endpoint to b.
  auto region_c = Allocate(*c, 16);
  auto packed_c = region_c->PackKey();
  ASSERT_TRUE(packed_c.has_value());
  const auto wrong_node = ep1->UnpackKey(*packed_c);
  ASSERT_TRUE(FailsWith(wrong_node, Errc::kInvalidArgument));
  EXPECT_EQ(wrong_node.error().message(), "key belongs to node c, not b");
  EXPECT_EQ(net_.in_flight(), 1u);
}

TEST_F(FakeNetworkTest, MaxOutstandingRefusesWithResourceExhaustedUntilProgress) {
  auto a = AddNode("a", 2);
  auto b = AddNode("b");
  auto region = Allocate(*b, 16);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  std::vector<std::byte> buf(1);
  ASSERT_TRUE(ep->Put(buf, Addr(*region), *key).has_value());
  ASSERT_TRUE(ep->Put(buf, Addr(*region), *key).has_value());
  EXPECT_TRUE(FailsWith(ep->Put(buf, Addr(*region), *key), Errc::kResourceExhausted));
  EXPECT_TRUE(FailsWith(ep->Get(buf, Addr(*region), *key), Errc::kResourceExhausted));
  EXPECT_TRUE(FailsWith(ep->Request(1, {}, 1s, {}), Errc::kResourceExhausted));
  a->Progress();  // the puts complete locally
  ASSERT_TRUE(ep->Get(buf, Addr(*region), *key).has_value());
  ASSERT_TRUE(ep->Get(buf, Addr(*region), *key).has_value());
  a->Progress();  // gets wait for the peer
  EXPECT_TRUE(FailsWith(ep->Put(buf, Addr(*region), *key), Errc::kResourceExhausted));
  Settle({a.get(), b.get()});
  EXPECT_TRUE(ep->Put(buf, Addr(*region), *key).has_value());
}

TEST_F(FakeNetworkTest, ARegionDestroyedBeforeThePutArrivesIsNotWritten) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  std::vector<std::byte> memory(32);
  auto registered = b->Register(memory);
  ASSERT_TRUE(registered.has_value());
  auto allocated = Allocate(*b, 32);
  auto ep = Connect(*a, *b);
  auto key_registered = KeyFor(*ep, **registered);
  auto key_allocated = KeyFor(*ep, *allocated);
  const std::uint64_t registered_addr = Addr(**registered);
  const std::uint64_t allocated_addr = Addr(*allocated);

  ASSERT_TRUE(ep->Put(ToBytes("data"), registered_addr, *key_registered).has_value());
  // Freed memory: ASan reports the write if the backend makes one.
  ASSERT_TRUE(ep->Put(ToBytes("data"), allocated_addr, *key_allocated).has_value());
  std::vector<std::byte> dst(4);
  auto got = NewSlot<Status>();
  ASSERT_TRUE(ep->Get(dst, allocated_addr, *key_allocated, Into(got)).has_value());
  auto flushed = NewSlot<Status>();
  ASSERT_TRUE(ep->Flush(Into(flushed)).has_value());
  registered->reset();
  allocated.reset();

  Settle({a.get(), b.get()});
  for (std::byte byte : memory) ASSERT_EQ(byte, std::byte{0});
  ASSERT_TRUE(flushed->has_value());
  ASSERT_TRUE(FailsWith(**flushed, Errc::kInvalidArgument));
  EXPECT_NE(flushed->value().error().message().find("region"), std::string::npos);
  EXPECT_NE(flushed->value().error().message().find("node b"), std::string::npos);
  ASSERT_TRUE(got->has_value());
  EXPECT_TRUE(FailsWith(**got, Errc::kInvalidArgument));
  // Only those operations failed, not the endpoint.
  EXPECT_TRUE(ep->status().has_value());
}

TEST_F(FakeNetworkTest, DestroyingTheInitiatorWithOperationsInFlightIsClean) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto region = Allocate(*b, 8);
  int served = 0;
  b->Handle(1, [&served](const Message&) -> Result<Bytes> {
    ++served;
    return Bytes{};
  });
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  PendingOps ops;
  ops.Start(*ep, *region, *key);
  key.reset();
  ep.reset();
  a.reset();
  EXPECT_EQ(net_.in_flight(), 0u);
  Settle({b.get()});
  EXPECT_FALSE(ops.put->has_value());
  EXPECT_FALSE(ops.get->has_value());
  EXPECT_FALSE(ops.flush->has_value());
  EXPECT_FALSE(ops.reply->has_value());
  EXPECT_EQ(served, 0);
}

TEST_F(FakeNetworkTest, DestroyingTheTargetFailsTheInitiatorsEndpoint) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto region = Allocate(*b, 8);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  PendingOps ops;
  ops.Start(*ep, *region, *key);
  b->Progress();  // the put lands and the get is answered, not yet seen by a
  region.reset();
  b.reset();
  a->Progress();
  // The put and get had their answers in flight, lost with b; all fail alike.
  ops.ExpectUnavailable("node b is unreachable: its fabric was closed");
}

TEST_F(FakeNetworkTest, AReplyToADestroyedEndpointIsDropped) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  int served = 0;
  b->Handle(1, [&served](const Message&) -> Result<Bytes> {
    ++served;
    return Bytes{};
  });
  auto ep = Connect(*a, *b);
  auto reply = NewSlot<Result<Bytes>>();
  ASSERT_TRUE(ep->Request(1, {}, 1s, Into(reply)).has_value());
  ep.reset();
  b->Progress();
  EXPECT_EQ(served, 1);
  EXPECT_EQ(net_.in_flight(), 1u);
  a->Progress();
  EXPECT_EQ(net_.in_flight(), 0u);
  now_ += 1h;
  Settle({a.get(), b.get()});
  EXPECT_FALSE(reply->has_value());
}

TEST_F(FakeNetworkTest, ACompletionMayDestroyItsOwnEndpoint) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto region = Allocate(*b, 8);
  auto ep = Connect(*a, *b);
  auto key = KeyFor(*ep, *region);
  std::vector<std::byte> buf(1);
  int ran = 0;
  auto destroy = [&](const Status&) {
    ++ran;
    key.reset();
    ep.reset();
  };
  ASSERT_TRUE(ep->Put(buf, Addr(*region), *key, destroy).has_value());
  ASSERT_TRUE(ep->Put(buf, Addr(*region), *key, destroy).has_value());
  ASSERT_TRUE(ep->Request(1, {}, 1ms, [&](const Result<Bytes>&) { ++ran; }).has_value());
  ASSERT_TRUE(net_.Kill("b").has_value());
  a->Progress();  // fails everything: the first completion destroys the endpoint
  EXPECT_EQ(ran, 1);
  EXPECT_TRUE(ep == nullptr);
  now_ += 1s;
  a->Progress();
  EXPECT_EQ(ran, 1);
}

TEST_F(FakeNetworkTest, GarbageAddressesAndKeysAreCorruptOtherBackendsIncompatible) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto ep = Connect(*a, *b);
  const Bytes garbage = ToBytes("\xff\xff\xff\xff not protobuf");
  EXPECT_TRUE(FailsWith(a->Connect(garbage), Errc::kCorrupt));
  EXPECT_TRUE(FailsWith(ep->UnpackKey(garbage), Errc::kCorrupt));

  const Bytes some_id{std::byte{1}, std::byte{2}};
  auto ucx_address = wire::EncodeAddress("ucx", "b", some_id);
  ASSERT_TRUE(ucx_address.has_value());
  EXPECT_TRUE(FailsWith(a->Connect(*ucx_address), Errc::kIncompatible));
  auto ucx_key = wire::EncodeKey("ucx", 4096, 16, some_id);
  ASSERT_TRUE(ucx_key.has_value());
  EXPECT_TRUE(FailsWith(ep->UnpackKey(*ucx_key), Errc::kIncompatible));

  // Well-formed wrappers around ids of the wrong size.
  auto short_address = wire::EncodeAddress("fake", "b", some_id);
  ASSERT_TRUE(short_address.has_value());
  EXPECT_TRUE(FailsWith(a->Connect(*short_address), Errc::kCorrupt));
  auto short_key = wire::EncodeKey("fake", 4096, 16, some_id);
  ASSERT_TRUE(short_key.has_value());
  EXPECT_TRUE(FailsWith(ep->UnpackKey(*short_key), Errc::kCorrupt));
}

TEST_F(FakeNetworkTest, KeysOfSeveralRegionsOfANodeEachUnpackToTheirOwn) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto first = Allocate(*b, 64);
  auto second = Allocate(*b, 8192);
  auto ep = Connect(*a, *b);
  // Unpacked again and again, alternately: each key keeps its own region.
  for (int round = 0; round < 3; ++round) {
    for (const MemoryRegion* region : {first.get(), second.get()}) {
      auto key = KeyFor(*ep, *region);
      ASSERT_NE(key, nullptr);
      EXPECT_EQ(key->base(), Addr(*region));
      EXPECT_EQ(key->length(), region->size());
      ASSERT_TRUE(ep->Put(ToBytes("k"), Addr(*region, region->size() - 1), *key).has_value());
      Settle({a.get(), b.get()});
      EXPECT_EQ(region->data()[region->size() - 1], std::byte{'k'});
      region->data()[region->size() - 1] = std::byte{0};
    }
  }
}

TEST_F(FakeNetworkTest, AddressesOfUnknownNodesAreNotFound) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  auto address = b->Address();
  ASSERT_TRUE(address.has_value());
  auto decoded = wire::DecodeAddress(*address, "fake");
  ASSERT_TRUE(decoded.has_value());
  // Same network, a node id nobody has.
  Bytes ids = decoded->backend_address;
  ASSERT_EQ(ids.size(), 16u);
  ids[8] = std::byte{0xee};
  auto unknown = wire::EncodeAddress("fake", "b", ids);
  ASSERT_TRUE(unknown.has_value());
  EXPECT_TRUE(FailsWith(a->Connect(*unknown), Errc::kNotFound));

  // Another network's node.
  FakeNetwork other;
  auto stranger = AddNode(other, "b");
  ASSERT_NE(stranger, nullptr);
  EXPECT_TRUE(FailsWith(a->Connect(*stranger->Address()), Errc::kNotFound));
}

TEST_F(FakeNetworkTest, FaultSettingsAreChecked) {
  auto a = AddNode("a");
  auto b = AddNode("b");
  EXPECT_TRUE(FailsWith(net_.SetFaults("a", "zz", {}), Errc::kNotFound));
  EXPECT_TRUE(
      FailsWith(net_.SetFaults("a", "b", {.drop = 1.5, .delay = {}}), Errc::kInvalidArgument));
  EXPECT_TRUE(
      FailsWith(net_.SetFaults("a", "b", {.drop = -0.1, .delay = {}}), Errc::kInvalidArgument));
  EXPECT_TRUE(FailsWith(net_.SetFaults("a", "b", {.drop = std::nan(""), .delay = {}}),
                        Errc::kInvalidArgument));
  EXPECT_TRUE(FailsWith(net_.Disconnect("a", "zz"), Errc::kNotFound));
  EXPECT_TRUE(FailsWith(net_.Kill("zz"), Errc::kNotFound));
}

}  // namespace
}  // namespace roam::transport
