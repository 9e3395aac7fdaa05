#include "launch/daemon/event_loop.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "roam/base/unique_fd.h"
#include "roam/transport/fake.h"
#include "roam/transport/transport.h"

namespace roam::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Pipe {
  UniqueFd read;
  UniqueFd write;
};

Pipe MakePipe() {
  std::array<int, 2> fds{-1, -1};
  EXPECT_EQ(::pipe2(fds.data(), O_CLOEXEC | O_NONBLOCK), 0);
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

void WriteByte(const Pipe& p) { ASSERT_EQ(::write(p.write.get(), "x", 1), 1); }

class EventLoopTest : public testing::Test {
 protected:
  void SetUp() override {
    auto loop = EventLoop::Create();
    ASSERT_TRUE(loop.has_value()) << loop.error().ToString();
    loop_ = std::move(*loop);
  }

  // Runs iterations until `done` holds or `limit` passes; true if done.
  bool RunUntil(const std::function<bool()>& done, milliseconds limit) {
    const Clock::time_point deadline = Clock::now() + limit;
    while (!done()) {
      if (Clock::now() >= deadline) return false;
      Status s = loop_->RunOnce(milliseconds(10));
      EXPECT_TRUE(s.has_value()) << s.error().ToString();
    }
    return true;
  }

  // Runs iterations for `span` regardless.
  void RunFor(milliseconds span) {
    (void)RunUntil([] { return false; }, span);
  }

  std::unique_ptr<EventLoop> loop_;
};

TEST_F(EventLoopTest, PipeReadinessCallsCallbackWithEpollin) {
  Pipe p = MakePipe();
  std::vector<std::uint32_t> seen;
  auto id = loop_->Watch(p.read.get(), EPOLLIN, [&](std::uint32_t ev) { seen.push_back(ev); });
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  ASSERT_TRUE(loop_->RunOnce(milliseconds(0)).has_value());
  EXPECT_TRUE(seen.empty()) << "callback ran with nothing to read";
  WriteByte(p);
  ASSERT_TRUE(RunUntil([&] { return !seen.empty(); }, milliseconds(2000)));
  EXPECT_NE(seen[0] & EPOLLIN, 0u);
  ASSERT_TRUE(loop_->Unwatch(*id).has_value());
  EXPECT_EQ(loop_->Unwatch(*id).error().code(), Errc::kNotFound);
}

TEST_F(EventLoopTest, WatchRefusesEdgeTriggeredAndDuplicates) {
  Pipe p = MakePipe();
  EXPECT_EQ(loop_->Watch(p.read.get(), EPOLLIN | EPOLLET, [](std::uint32_t) {}).error().code(),
            Errc::kInvalidArgument);
  ASSERT_TRUE(loop_->Watch(p.read.get(), EPOLLIN, [](std::uint32_t) {}).has_value());
  EXPECT_EQ(loop_->Watch(p.read.get(), EPOLLIN, [](std::uint32_t) {}).error().code(),
            Errc::kAlreadyExists);
}

TEST_F(EventLoopTest, UnwatchInsideOwnCallback) {
  Pipe p = MakePipe();
  WriteByte(p);  // stays readable: level-triggered would call again and again
  int calls = 0;
  WatchId id;
  auto watched = loop_->Watch(p.read.get(), EPOLLIN, [&](std::uint32_t) {
    ++calls;
    EXPECT_TRUE(loop_->Unwatch(id).has_value());
  });
  ASSERT_TRUE(watched.has_value());
  id = *watched;
  RunFor(milliseconds(50));
  EXPECT_EQ(calls, 1);
}

TEST_F(EventLoopTest, UnwatchOfAnotherFdInTheSameBatchKeepsItsCallbackFromRunning) {
  Pipe a = MakePipe();
  Pipe b = MakePipe();
  // Both readable before the loop waits, so one epoll_wait returns both.
  WriteByte(a);
  WriteByte(b);
  int calls = 0;
  WatchId id_a;
  WatchId id_b;
  // epoll does not promise an order: whichever runs first removes and
  // closes the other.
  auto on_a = [&](std::uint32_t) {
    ++calls;
    EXPECT_TRUE(loop_->Unwatch(id_b).has_value());
    b.read.reset();
    EXPECT_TRUE(loop_->Unwatch(id_a).has_value());
  };
  auto on_b = [&](std::uint32_t) {
    ++calls;
    EXPECT_TRUE(loop_->Unwatch(id_a).has_value());
    a.read.reset();
    EXPECT_TRUE(loop_->Unwatch(id_b).has_value());
  };
  id_a = *loop_->Watch(a.read.get(), EPOLLIN, on_a);
  id_b = *loop_->Watch(b.read.get(), EPOLLIN, on_b);
  ASSERT_TRUE(loop_->RunOnce(milliseconds(1000)).has_value());
  EXPECT_EQ(calls, 1);
  RunFor(milliseconds(20));
  EXPECT_EQ(calls, 1);
}

TEST_F(EventLoopTest, OneShotTimerFiresOnce) {
  int fired = 0;
  const Clock::time_point start = Clock::now();
  Clock::time_point when;
  auto id = loop_->AddTimer(milliseconds(20), milliseconds(0), [&] {
    ++fired;
    when = Clock::now();
  });
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  ASSERT_TRUE(RunUntil([&] { return fired > 0; }, milliseconds(2000)));
  EXPECT_GE(when - start, milliseconds(20));
  RunFor(milliseconds(100));
  EXPECT_EQ(fired, 1);
  EXPECT_EQ(loop_->CancelTimer(*id).error().code(), Errc::kNotFound);
}

TEST_F(EventLoopTest, ZeroDelayTimerFires) {
  int fired = 0;
  ASSERT_TRUE(loop_->AddTimer(milliseconds(0), milliseconds(0), [&] { ++fired; }).has_value());
  ASSERT_TRUE(RunUntil([&] { return fired > 0; }, milliseconds(1000)));
}

TEST_F(EventLoopTest, PeriodicTimerFiresAboutOncePerPeriod) {
  int fired = 0;
  auto id = loop_->AddTimer(milliseconds(10), milliseconds(10), [&] { ++fired; });
  ASSERT_TRUE(id.has_value());
  RunFor(milliseconds(300));
  // ~30 expected; loose for a noisy 2-vCPU VM (overruns coalesce).
  EXPECT_GE(fired, 8);
  EXPECT_LE(fired, 31);
  ASSERT_TRUE(loop_->CancelTimer(*id).has_value());
  const int at_cancel = fired;
  RunFor(milliseconds(50));
  EXPECT_EQ(fired, at_cancel);
}

TEST_F(EventLoopTest, TimerCancelledInsideItsCallback) {
  int fired = 0;
  TimerId id;
  auto added = loop_->AddTimer(milliseconds(1), milliseconds(2), [&] {
    if (++fired == 3) {
      EXPECT_TRUE(loop_->CancelTimer(id).has_value());
    }
  });
  ASSERT_TRUE(added.has_value());
  id = *added;
  ASSERT_TRUE(RunUntil([&] { return fired >= 3; }, milliseconds(2000)));
  RunFor(milliseconds(50));
  EXPECT_EQ(fired, 3);
}

TEST_F(EventLoopTest, TimerCancelledByAnotherInTheSameBatch) {
  int fired_a = 0;
  int fired_b = 0;
  TimerId a;
  TimerId b;
  a = *loop_->AddTimer(milliseconds(5), milliseconds(0), [&] {
    ++fired_a;
    (void)loop_->CancelTimer(b);
  });
  b = *loop_->AddTimer(milliseconds(5), milliseconds(0), [&] {
    ++fired_b;
    (void)loop_->CancelTimer(a);
  });
  // Both expire before the loop looks.
  ::usleep(20'000);
  ASSERT_TRUE(loop_->RunOnce(milliseconds(1000)).has_value());
  RunFor(milliseconds(30));
  EXPECT_EQ(fired_a + fired_b, 1);
}

volatile std::sig_atomic_t g_handler_ran = 0;
void CountingHandler(int /*signo*/) { g_handler_ran = 1; }

TEST_F(EventLoopTest, SignalArrivesThroughSignalfdNotAHandler) {
  // A handler that would count the signal if it were delivered the old way.
  struct sigaction sa = {};
  struct sigaction old = {};
  sa.sa_handler = CountingHandler;
  ASSERT_EQ(::sigaction(SIGUSR1, &sa, &old), 0);
  sigset_t old_mask;
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, nullptr, &old_mask), 0);

  std::vector<int> received;
  auto id = loop_->OnSignal(SIGUSR1, [&](const signalfd_siginfo& info) {
    received.push_back(static_cast<int>(info.ssi_signo));
  });
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  EXPECT_EQ(loop_->OnSignal(SIGUSR1, [](const signalfd_siginfo&) {}).error().code(),
            Errc::kAlreadyExists);
  EXPECT_EQ(loop_->OnSignal(SIGKILL, [](const signalfd_siginfo&) {}).error().code(),
            Errc::kInvalidArgument);
  ASSERT_EQ(::raise(SIGUSR1), 0);
  EXPECT_TRUE(RunUntil([&] { return !received.empty(); }, milliseconds(2000)));
  EXPECT_EQ(received, std::vector<int>{SIGUSR1});
  EXPECT_EQ(g_handler_ran, 0);

  ASSERT_TRUE(loop_->CancelSignal(*id).has_value());
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr), 0);
  ASSERT_EQ(::sigaction(SIGUSR1, &old, nullptr), 0);
}

TEST_F(EventLoopTest, DeferredTasksRunInOrderOnTheNextIteration) {
  std::vector<std::string> order;
  loop_->Defer([&] {
    order.emplace_back("a");
    loop_->Defer([&] { order.emplace_back("c"); });
  });
  loop_->Defer([&] { order.emplace_back("b"); });
  EXPECT_TRUE(order.empty());
  // "c" is pending after a and b ran, so this iteration must not sleep: the
  // 10-second wait would show.
  const Clock::time_point start = Clock::now();
  ASSERT_TRUE(loop_->RunOnce(milliseconds(10'000)).has_value());
  EXPECT_LT(Clock::now() - start, milliseconds(1000));
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b"}));
  ASSERT_TRUE(loop_->RunOnce(milliseconds(0)).has_value());
  EXPECT_EQ(order, (std::vector<std::string>{"a", "b", "c"}));
}

TEST_F(EventLoopTest, StopFromACallbackEndsRun) {
  int ticks = 0;
  ASSERT_TRUE(loop_
                  ->AddTimer(milliseconds(1), milliseconds(1),
                             [&] {
                               if (++ticks == 5) loop_->Stop();
                             })
                  .has_value());
  ASSERT_TRUE(loop_->Run().has_value());
  EXPECT_EQ(ticks, 5);
}

// --- Fabrics --------------------------------------------------------------

constexpr std::uint16_t kEchoTag = 7;
constexpr milliseconds kFabricDeadline{10'000};

transport::Bytes ToBytes(std::string_view s) {
  transport::Bytes b(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) b[i] = static_cast<std::byte>(s[i]);
  return b;
}

class EventLoopFabricTest : public EventLoopTest {
 protected:
  void OpenUcx() {
    ::setenv("UCX_TLS", "tcp", 1);
    auto a = transport::OpenFabric("ucx", transport::FabricOptions{.name = "a"});
    if (!a.has_value() && a.error().code() == Errc::kUnsupported) {
      GTEST_SKIP() << "ucx backend unavailable: " << a.error().ToString();
    }
    ASSERT_TRUE(a.has_value()) << a.error().ToString();
    auto b = transport::OpenFabric("ucx", transport::FabricOptions{.name = "b"});
    ASSERT_TRUE(b.has_value()) << b.error().ToString();
    a_ = std::move(*a);
    b_ = std::move(*b);
  }

  void OpenFake() {
    network_ = std::make_unique<transport::FakeNetwork>();
    auto a = network_->AddNode(transport::FabricOptions{.name = "a"});
    ASSERT_TRUE(a.has_value()) << a.error().ToString();
    auto b = network_->AddNode(transport::FabricOptions{.name = "b"});
    ASSERT_TRUE(b.has_value()) << b.error().ToString();
    a_ = std::move(*a);
    b_ = std::move(*b);
  }

  void ConnectAToB() {
    b_->Handle(kEchoTag, [](const transport::Message& m) -> Result<transport::Bytes> {
      return transport::Bytes(m.payload.begin(), m.payload.end());
    });
    auto address = b_->Address();
    ASSERT_TRUE(address.has_value()) << address.error().ToString();
    auto ep = a_->Connect(*address);
    ASSERT_TRUE(ep.has_value()) << ep.error().ToString();
    ep_ = std::move(*ep);
  }

  // Sends one echo request from a to b and runs the loop (Run, stopped by
  // the reply or a watchdog timer) until the reply arrives.
  std::optional<Result<transport::Bytes>> RequestThroughLoop(milliseconds request_timeout) {
    std::optional<Result<transport::Bytes>> reply;
    const transport::Bytes payload = ToBytes("hello through the loop");
    Status sent = ep_->Request(kEchoTag, payload, request_timeout, [&](Result<transport::Bytes> r) {
      reply = std::move(r);
      loop_->Stop();
    });
    EXPECT_TRUE(sent.has_value()) << sent.error().ToString();
    if (!sent.has_value()) return std::nullopt;
    auto watchdog = loop_->AddTimer(kFabricDeadline, milliseconds(0), [&] { loop_->Stop(); });
    EXPECT_TRUE(watchdog.has_value());
    Status ran = loop_->Run();
    EXPECT_TRUE(ran.has_value()) << ran.error().ToString();
    if (reply.has_value()) (void)loop_->CancelTimer(*watchdog);
    return reply;
  }

  void TearDown() override {
    if (a_) (void)loop_->RemoveFabric(*a_);
    if (b_) (void)loop_->RemoveFabric(*b_);
    ep_.reset();
    a_.reset();
    b_.reset();
  }

  std::unique_ptr<transport::FakeNetwork> network_;
  std::unique_ptr<transport::Fabric> a_;
  std::unique_ptr<transport::Fabric> b_;
  std::unique_ptr<transport::Endpoint> ep_;
};

void ExpectEcho(const std::optional<Result<transport::Bytes>>& reply) {
  ASSERT_TRUE(reply.has_value()) << "no reply within the deadline";
  ASSERT_TRUE(reply->has_value()) << reply->error().ToString();
  EXPECT_EQ(**reply, ToBytes("hello through the loop"));
}

TEST_F(EventLoopFabricTest, UcxRequestAndReplyByRunningTheLoop) {
  OpenUcx();
  if (IsSkipped()) return;
  ASSERT_GE(a_->event_fd(), 0);
  ConnectAToB();
  ASSERT_TRUE(loop_->AddFabric(*a_).has_value());
  ASSERT_TRUE(loop_->AddFabric(*b_).has_value());
  EXPECT_EQ(loop_->AddFabric(*a_).error().code(), Errc::kAlreadyExists);
  ExpectEcho(RequestThroughLoop(milliseconds(5000)));
  // And a second one over the now established connection.
  ExpectEcho(RequestThroughLoop(milliseconds(5000)));
}

TEST_F(EventLoopFabricTest, FakeRequestAndReplyByRunningTheLoop) {
  OpenFake();
  ASSERT_EQ(a_->event_fd(), -1);
  ConnectAToB();
  ASSERT_TRUE(loop_->AddFabric(*a_).has_value());
  ASSERT_TRUE(loop_->AddFabric(*b_).has_value());
  ExpectEcho(RequestThroughLoop(milliseconds(5000)));
}

TEST_F(EventLoopFabricTest, RemovedFabricIsNoLongerProgressed) {
  OpenFake();
  ConnectAToB();
  ASSERT_TRUE(loop_->AddFabric(*a_).has_value());
  ASSERT_TRUE(loop_->AddFabric(*b_).has_value());
  ASSERT_TRUE(loop_->RemoveFabric(*b_).has_value());
  EXPECT_EQ(loop_->RemoveFabric(*b_).error().code(), Errc::kNotFound);
  std::optional<Result<transport::Bytes>> reply;
  ASSERT_TRUE(ep_->Request(kEchoTag, ToBytes("x"), milliseconds(10'000),
                           [&](Result<transport::Bytes> r) { reply = std::move(r); })
                  .has_value());
  RunFor(milliseconds(100));
  EXPECT_FALSE(reply.has_value()) << "b answered although nothing progresses it";
  ASSERT_TRUE(loop_->AddFabric(*b_).has_value());
  ASSERT_TRUE(RunUntil([&] { return reply.has_value(); }, kFabricDeadline));
  EXPECT_TRUE(reply->has_value());
}

// b is not registered, so it never answers; only the loop's progress of a
// (woken by its sleep cap, since nothing else happens) can notice the
// deadline. Without the cap the loop would sleep until the 10 s watchdog.
void ExpectTimeoutThroughLoop(const std::function<std::optional<Result<transport::Bytes>>()>& run) {
  const Clock::time_point start = Clock::now();
  std::optional<Result<transport::Bytes>> reply = run();
  const auto took = Clock::now() - start;
  ASSERT_TRUE(reply.has_value()) << "the request never ended";
  ASSERT_FALSE(reply->has_value()) << "b answered although nothing progresses it";
  EXPECT_EQ(reply->error().code(), Errc::kTimeout) << reply->error().ToString();
  EXPECT_GE(took, milliseconds(190));
  // Well under what UCX itself would wake us for (keepalive, ~2.5 s here).
  EXPECT_LT(took, milliseconds(1500));
}

TEST_F(EventLoopFabricTest, UcxRequestToUnprogressedPeerTimesOutThroughTheLoop) {
  OpenUcx();
  if (IsSkipped()) return;
  ConnectAToB();
  ASSERT_TRUE(loop_->AddFabric(*a_).has_value());
  ExpectTimeoutThroughLoop([&] { return RequestThroughLoop(milliseconds(200)); });
}

// The same over an established connection, where nothing from b wakes a's
// event fd: only the loop's sleep cap gets a progressed in time.
TEST_F(EventLoopFabricTest, UcxRequestToPeerNoLongerProgressedTimesOutThroughTheLoop) {
  OpenUcx();
  if (IsSkipped()) return;
  ConnectAToB();
  ASSERT_TRUE(loop_->AddFabric(*a_).has_value());
  ASSERT_TRUE(loop_->AddFabric(*b_).has_value());
  ExpectEcho(RequestThroughLoop(milliseconds(5000)));
  ASSERT_TRUE(loop_->RemoveFabric(*b_).has_value());
  ExpectTimeoutThroughLoop([&] { return RequestThroughLoop(milliseconds(200)); });
}

TEST_F(EventLoopFabricTest, FakeRequestToUnprogressedPeerTimesOutThroughTheLoop) {
  OpenFake();
  ConnectAToB();
  ASSERT_TRUE(loop_->AddFabric(*a_).has_value());
  ExpectTimeoutThroughLoop([&] { return RequestThroughLoop(milliseconds(200)); });
}

}  // namespace
}  // namespace roam::daemon
