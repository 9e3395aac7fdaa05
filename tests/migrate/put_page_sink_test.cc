// The migration's data path without a process: PutPageSink puts pages over
// UCX (tcp, loopback) into a region a peer thread allocated and progresses,
// and StagedRuns reads them back there as the restore would. A send ring
// much smaller than the pages makes flow control turn it over many times;
// a pre-copy's final pass puts what changed and refers to the rest where
// its rounds put it.
#include "core/migrate/put_page_sink.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/migrate/staged_runs.h"
#include "roam/transport/transport.h"

namespace roam::migrate {
namespace {

using namespace std::chrono_literals;
constexpr std::size_t kPage = ckpt::kPageSize;

// A peer node: its fabric and staging region, progressed on its own thread
// until the test has put everything.
class Peer {
 public:
  explicit Peer(std::size_t staging_bytes) {
    std::promise<Status> opened;
    auto ready = opened.get_future();
    thread_ = std::thread([&, staging_bytes] {
      auto fabric = transport::OpenFabric("ucx", {.name = "peer"});
      if (!fabric) return opened.set_value(fabric.error());
      fabric_ = std::move(*fabric);
      auto region = fabric_->Allocate(staging_bytes);
      if (!region) return opened.set_value(region.error());
      region_ = std::move(*region);
      auto address = fabric_->Address();
      auto key = region_->PackKey();
      if (!address || !key) return opened.set_value(MakeError(Errc::kInternal, "address/key"));
      address_ = *address;
      key_ = *key;
      opened.set_value(Ok());
      while (!stop_) {
        if (std::chrono::steady_clock::now() < paused_until_.load()) {
          std::this_thread::sleep_for(1ms);
          continue;
        }
        if (fabric_->Progress() == 0) std::this_thread::sleep_for(20us);
      }
    });
    status_ = ready.get();
  }
  ~Peer() {
    Stop();
    region_.reset();
    fabric_.reset();
  }
  // After this the test thread owns the region (the peer no longer runs).
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  // The peer stops progressing for a while: puts to it stall (tcp).
  void PauseFor(std::chrono::milliseconds pause) {
    paused_until_ = std::chrono::steady_clock::now() + pause;
  }

  const Status& status() const { return status_; }
  const transport::Bytes& address() const { return address_; }
  const transport::Bytes& key() const { return key_; }
  std::span<const std::byte> staging() const { return region_->bytes(); }

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<std::chrono::steady_clock::time_point> paused_until_{};
  Status status_;
  std::unique_ptr<transport::Fabric> fabric_;
  std::unique_ptr<transport::MemoryRegion> region_;
  transport::Bytes address_;
  transport::Bytes key_;
};

// Page `i` of generation `gen`: every byte says which.
void Fill(std::span<std::byte> page, std::uint64_t i, std::uint64_t gen) {
  for (std::size_t b = 0; b < kPage; b += sizeof(std::uint64_t)) {
    const std::uint64_t v = (gen << 48) ^ (i << 16) ^ b;
    std::memcpy(page.data() + b, &v, sizeof(v));
  }
}

class PutPageSinkTest : public ::testing::Test {
 protected:
  void Open(std::size_t staging_bytes) {
    // Two workers of one process would otherwise use shared memory.
    ::setenv("UCX_TLS", "tcp", 1);
    peer_ = std::make_unique<Peer>(staging_bytes);
    ASSERT_TRUE(peer_->status().has_value()) << peer_->status().error().ToString();
    auto fabric = transport::OpenFabric("ucx", {.name = "source"});
    ASSERT_TRUE(fabric.has_value()) << fabric.error().ToString();
    fabric_ = std::move(*fabric);
    auto ep = fabric_->Connect(peer_->address());
    ASSERT_TRUE(ep.has_value()) << ep.error().ToString();
    ep_ = std::move(*ep);
    auto key = ep_->UnpackKey(peer_->key());
    ASSERT_TRUE(key.has_value()) << key.error().ToString();
    key_ = std::move(*key);
    auto ring = fabric_->Allocate(kRingBytes);
    ASSERT_TRUE(ring.has_value()) << ring.error().ToString();
    ring_ = std::move(*ring);
    // One put completes the connection's wire-up: UCX 1.13 asserts (and
    // aborts) when an endpoint still wiring up over tcp is closed while its
    // peer progresses, which a test that puts nothing would do.
    Status put = transport::PutAndFlush(*fabric_, *ep_, ring_->bytes().subspan(0, 8), key_->base(),
                                        *key_, 10s);
    ASSERT_TRUE(put.has_value()) << put.error().ToString();
  }
  void TearDown() override {
    key_.reset();
    ep_.reset();
    ring_.reset();
    fabric_.reset();
    peer_.reset();
  }

  std::unique_ptr<PutPageSink> Sink(std::uint64_t capacity) {
    return std::make_unique<PutPageSink>(
        *fabric_, *ep_, *key_, capacity, ring_->bytes(),
        PutPageSink::Options{.timeout = 10s, .expected_bytes = 0, .progress = {}});
  }

  // Ends the sink and the peer: the staging as the target would read it.
  Result<std::unique_ptr<StagedRuns>> Land(std::unique_ptr<PutPageSink> sink) {
    const auto runs = sink->runs();
    sink.reset();
    peer_->Stop();
    return StagedRuns::Create(peer_->staging(), runs);
  }

  // What the restore would read at `vaddr` (empty: no page there).
  static std::vector<std::byte> Read(StagedRuns& pages, std::uint64_t vaddr) {
    std::vector<std::byte> out(kPage);
    auto found = pages.ReadPage(vaddr, out);
    EXPECT_TRUE(found.has_value()) << found.error().ToString();
    return found.has_value() && *found ? out : std::vector<std::byte>();
  }

  static constexpr std::size_t kRingBytes = std::size_t{64} << 10;  // 16 pages
  std::unique_ptr<Peer> peer_;
  std::unique_ptr<transport::Fabric> fabric_;
  std::unique_ptr<transport::Endpoint> ep_;
  std::unique_ptr<transport::RemoteKey> key_;
  std::unique_ptr<transport::MemoryRegion> ring_;
};

TEST_F(PutPageSinkTest, SmallRingCarriesEveryPageToWhereTheRunTableSays) {
  ASSERT_NO_FATAL_FAILURE(Open(std::size_t{8} << 20));
  auto sink = Sink(std::size_t{8} << 20);
  constexpr std::uint64_t kBase = 0x7f0000000000;
  // 1000 pages from a buffer of the caller's (through the ring, in pieces).
  std::vector<std::byte> buffer(1000 * kPage);
  for (std::uint64_t i = 0; i < 1000; ++i) Fill({buffer.data() + i * kPage, kPage}, i, 1);
  // The peer stalls: the ring fills, and the sink must wait for it.
  peer_->PauseFor(300ms);
  ASSERT_TRUE(sink->Add(kBase, buffer).has_value());
  // Read into the ring's tail, with a gap (zero pages a capture skips).
  for (std::uint64_t round = 0; round < 40; ++round) {
    const std::uint64_t first = 2000 + round * 8;
    auto tail = sink->WritableTail(8 * kPage);
    ASSERT_EQ(tail.size(), 8 * kPage);
    for (std::uint64_t i = 0; i < 8; ++i) Fill(tail.subspan(i * kPage, kPage), first + i, 1);
    ASSERT_TRUE(sink->Add(kBase + first * kPage, tail.subspan(0, 3 * kPage)).has_value());
    ASSERT_TRUE(sink->Add(kBase + (first + 5) * kPage, tail.subspan(5 * kPage)).has_value());
  }
  ASSERT_TRUE(sink->Finish().has_value());
  EXPECT_EQ(sink->bytes_sent(), (1000 + 40 * 6) * kPage);
  EXPECT_GT(sink->most_in_flight(), 0u);
  EXPECT_LE(sink->most_in_flight(), kRingBytes) << "puts held more than the ring";
  auto pages = Land(std::move(sink));
  ASSERT_TRUE(pages.has_value()) << pages.error().ToString();
  std::vector<std::byte> expected(kPage);
  for (std::uint64_t i : {0, 1, 511, 999, 2000, 2002, 2005, 2007, 2319}) {
    SCOPED_TRACE(i);
    Fill(expected, i, 1);
    EXPECT_EQ(Read(**pages, kBase + i * kPage), expected);
  }
  for (std::uint64_t i : {1000, 2003, 2004, 2318 - 3}) {
    EXPECT_TRUE(Read(**pages, kBase + i * kPage).empty()) << i << " was never added";
  }
  std::uint64_t seen = 0;
  ASSERT_TRUE((*pages)
                  ->ForEach([&](std::uint64_t, std::span<const std::byte> run) -> Status {
                    seen += run.size();
                    return Ok();
                  })
                  .has_value());
  EXPECT_EQ(seen, (1000 + 40 * 6) * kPage);
}

TEST_F(PutPageSinkTest, PreCopyFinalPassRefersKeptPagesToTheirNewestRound) {
  ASSERT_NO_FATAL_FAILURE(Open(std::size_t{1} << 20));
  auto sink = Sink(std::size_t{1} << 20);
  constexpr std::uint64_t kBase = 0x400000;
  std::vector<std::byte> memory(8 * kPage);
  for (std::uint64_t i = 0; i < 8; ++i) Fill({memory.data() + i * kPage, kPage}, i, 1);
  const auto pages = [&](std::uint64_t first, std::uint64_t n) {
    return std::span<const std::byte>(memory).subspan(first * kPage, n * kPage);
  };

  sink->StartPass(PutPageSink::Pass::kRound);
  ASSERT_TRUE(sink->Add(kBase, memory).has_value());
  EXPECT_EQ(sink->bytes_sent(), 8 * kPage);
  const auto kept = sink->AddKept(kBase, kPage);
  ASSERT_FALSE(kept.has_value()) << "kept pages only in a final pass";
  EXPECT_EQ(kept.error().code(), Errc::kInvalidArgument);
  // Pages 2 and 3 were written before the next round: only they travel again.
  Fill({memory.data() + 2 * kPage, kPage}, 2, 2);
  Fill({memory.data() + 3 * kPage, kPage}, 3, 2);
  sink->StartPass(PutPageSink::Pass::kRound);
  ASSERT_TRUE(sink->Add(kBase + 2 * kPage, pages(2, 2)).has_value());
  EXPECT_EQ(sink->bytes_sent(), 10 * kPage);
  // Frozen: page 5 written since, page 7 dropped (not in the capture), the
  // rest kept from the round that last put it.
  Fill({memory.data() + 5 * kPage, kPage}, 5, 3);
  sink->StartPass(PutPageSink::Pass::kFinal);
  ASSERT_TRUE(sink->AddKept(kBase, 5 * kPage).has_value());
  ASSERT_TRUE(sink->Add(kBase + 5 * kPage, pages(5, 1)).has_value());
  ASSERT_TRUE(sink->AddKept(kBase + 6 * kPage, kPage).has_value());
  const auto unknown = sink->AddKept(kBase + 8 * kPage, kPage);
  ASSERT_FALSE(unknown.has_value()) << "no round put page 8";
  EXPECT_EQ(unknown.error().code(), Errc::kInternal) << unknown.error().ToString();
  ASSERT_TRUE(sink->Finish().has_value());
  EXPECT_EQ(sink->bytes_sent(), 11 * kPage) << "only page 5 travels frozen";
  auto landed = Land(std::move(sink));
  ASSERT_TRUE(landed.has_value()) << landed.error().ToString();
  for (std::uint64_t i = 0; i < 7; ++i) {
    SCOPED_TRACE(i);
    const auto want = pages(i, 1);
    EXPECT_EQ(Read(**landed, kBase + i * kPage), std::vector<std::byte>(want.begin(), want.end()));
  }
  EXPECT_TRUE(Read(**landed, kBase + 7 * kPage).empty())
      << "a dropped page must not come back from an earlier round";
}

TEST_F(PutPageSinkTest, MoreThanTheStagingHoldsIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(Open(std::size_t{1} << 20));
  auto sink = Sink(8 * kPage);
  std::vector<std::byte> memory(16 * kPage, std::byte{1});
  auto added = sink->Add(0x400000, memory);
  ASSERT_FALSE(added.has_value());
  EXPECT_EQ(added.error().code(), Errc::kResourceExhausted) << added.error().ToString();
}

TEST(StagedRunsTest, RefusesRunsOutsideTheStagingOrOutOfOrder) {
  std::vector<std::byte> staging(4 * kPage);
  EXPECT_FALSE(StagedRuns::Create(staging, {{0x1000, 2 * kPage, 3 * kPage}}).has_value());
  EXPECT_FALSE(
      StagedRuns::Create(staging, {{0x5000, kPage, 0}, {0x4000, kPage, kPage}}).has_value());
  EXPECT_FALSE(StagedRuns::Create(staging, {{0x1000, 0, 0}}).has_value());
  EXPECT_TRUE(
      StagedRuns::Create(staging, {{0x1000, kPage, 3 * kPage}, {0x9000, kPage, 0}}).has_value());
}

}  // namespace
}  // namespace roam::migrate
