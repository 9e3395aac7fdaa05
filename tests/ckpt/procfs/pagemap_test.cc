#include "core/ckpt/procfs/pagemap.h"

#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include <gtest/gtest.h>

namespace roam::ckpt::procfs {
namespace {

constexpr uint64_t kEntry = (uint64_t{1} << 63) | (uint64_t{1} << 56) | 0x12345;
static_assert(IsPresent(kEntry) && !IsSwapped(kEntry) && !IsFileOrSharedAnon(kEntry));
static_assert(IsExclusive(kEntry) && !IsSoftDirty(kEntry) && Pfn(kEntry) == 0x12345);
static_assert(IsSwapped(uint64_t{1} << 62) && IsFileOrSharedAnon(uint64_t{1} << 61));
static_assert(IsSoftDirty(uint64_t{1} << 55) && Pfn(~uint64_t{0}) == (uint64_t{1} << 55) - 1);

// An anonymous mapping, unmapped on every path out of a test.
class Mapping final {
 public:
  Mapping(size_t size, int prot) : size_(size) {
    addr_ = mmap(nullptr, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  ~Mapping() {
    if (addr_ != MAP_FAILED) munmap(addr_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  bool ok() const { return addr_ != MAP_FAILED; }
  char* data() const { return static_cast<char*>(addr_); }
  uint64_t address() const { return reinterpret_cast<uint64_t>(addr_); }

 private:
  size_t size_;
  void* addr_;
};

TEST(PagemapTest, TouchedPageIsPresentAndFreshMappingIsNot) {
  auto reader = PagemapReader::Open(getpid());
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();

  std::vector<char> heap(3 * kPageSize);  // malloc'd, and touched: zero-filled
  auto entries = reader->Read(reinterpret_cast<uint64_t>(heap.data()) + kPageSize, 1);
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_TRUE(IsPresent((*entries)[0]));
  EXPECT_FALSE(IsFileOrSharedAnon((*entries)[0]));

  Mapping fresh(2 * kPageSize, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(fresh.ok());
  entries = reader->Read(fresh.address(), 2);
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  EXPECT_FALSE(IsPresent((*entries)[0]));
  EXPECT_FALSE(IsPresent((*entries)[1]));

  fresh.data()[kPageSize] = 1;
  entries = reader->Read(fresh.address(), 2);
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  EXPECT_FALSE(IsPresent((*entries)[0]));
  EXPECT_TRUE(IsPresent((*entries)[1]));
}

// Written pages come as runs, a page only read is the shared zero page,
// and the runs agree with the per-page entries.
TEST(PagemapTest, ScanGivesRunsOfPresentPages) {
  auto reader = PagemapReader::Open(getpid());
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  Mapping m(16 * kPageSize, PROT_READ | PROT_WRITE);
  ASSERT_TRUE(m.ok());
  for (int i : {2, 3, 4, 9}) m.data()[i * kPageSize] = 1;
  volatile char sink = m.data()[12 * kPageSize];  // read fault: zero page
  (void)sink;

  auto ranges = reader->Scan(m.address(), m.address() + 16 * kPageSize);
  ASSERT_TRUE(ranges.has_value()) << ranges.error().ToString();
  std::vector<std::pair<uint64_t, uint64_t>> written, zero;
  for (const auto& r : *ranges) {
    EXPECT_TRUE(r.present);
    EXPECT_FALSE(r.file);
    (r.zero_pfn ? zero : written)
        .emplace_back((r.start - m.address()) / kPageSize, (r.end - m.address()) / kPageSize);
  }
  EXPECT_EQ(written, (std::vector<std::pair<uint64_t, uint64_t>>{{2, 5}, {9, 10}}));
  EXPECT_EQ(zero, (std::vector<std::pair<uint64_t, uint64_t>>{{12, 13}}));

  // The libc text is file pages.
  auto text = reader->Scan(reinterpret_cast<uint64_t>(&getpid) & ~(kPageSize - 1),
                           (reinterpret_cast<uint64_t>(&getpid) & ~(kPageSize - 1)) + kPageSize);
  ASSERT_TRUE(text.has_value()) << text.error().ToString();
  ASSERT_EQ(text->size(), 1u);
  EXPECT_TRUE((*text)[0].file);
}

TEST(PagemapTest, ReadsAGibibyteRange) {
  constexpr size_t kSize = size_t{1} << 30;
  Mapping reserved(kSize, PROT_NONE);
  ASSERT_TRUE(reserved.ok());
  auto reader = PagemapReader::Open(getpid());
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  auto entries = reader->Read(reserved.address(), kSize / kPageSize);
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  ASSERT_EQ(entries->size(), kSize / kPageSize);
  for (const uint64_t entry : *entries) ASSERT_FALSE(IsPresent(entry));
}

TEST(PagemapTest, RangePastTheAddressSpaceIsInvalid) {
  auto reader = PagemapReader::Open(getpid());
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  auto entries = reader->Read(0xffffffffff600000, 1);  // [vsyscall]
  ASSERT_FALSE(entries.has_value());
  EXPECT_EQ(entries.error().code(), Errc::kInvalidArgument);
  entries = reader->Read(0xfffffffffffff000, ~size_t{0});
  ASSERT_FALSE(entries.has_value());
  EXPECT_EQ(entries.error().code(), Errc::kInvalidArgument);
}

TEST(PagemapTest, MovedReaderKeepsWorking) {
  auto opened = PagemapReader::Open(getpid());
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  PagemapReader reader = std::move(*opened);
  PagemapReader other = std::move(reader);
  EXPECT_EQ(other.pid(), getpid());
  const int local = 0;
  auto entries = other.Read(reinterpret_cast<uint64_t>(&local), 1);
  ASSERT_TRUE(entries.has_value()) << entries.error().ToString();
  EXPECT_TRUE(IsPresent((*entries)[0]));
}

}  // namespace
}  // namespace roam::ckpt::procfs
