#include "core/ckpt/image/page_stream.h"

#include <xxhash.h>

#include <sys/mman.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/test_util.h"

namespace roam::ckpt {
namespace {

using Bytes = std::vector<std::byte>;
using Runs = std::vector<std::pair<std::uint64_t, Bytes>>;

Bytes RandomPages(std::size_t npages, std::uint32_t seed) {
  std::mt19937_64 rng(seed);
  Bytes out(npages * kPageSize);
  for (std::size_t i = 0; i < out.size(); i += 8) {
    const std::uint64_t v = rng();
    std::memcpy(&out[i], &v, 8);
  }
  return out;
}

template <typename T>
void Put(Bytes& out, T value) {
  const auto* p = reinterpret_cast<const std::byte*>(&value);
  out.insert(out.end(), p, p + sizeof value);
}

// The page file format, written from its specification in page_stream.h,
// independently of the library's writer: it crafts streams that the writer
// refuses to produce (overlapping, unaligned, oversized records). Each run is
// one record; `version` 1 chains the record checksums instead of the headers.
Bytes Encode(const Runs& runs, std::uint32_t version = kPageFormatVersion) {
  Bytes out;
  for (char c : std::string_view("ROAMPAGE")) out.push_back(std::byte(c));
  Put<std::uint32_t>(out, version);
  Put<std::uint32_t>(out, kPageSize);
  std::uint64_t chain = 0;
  std::uint64_t pages = 0;
  for (const auto& [vaddr, payload] : runs) {
    const std::size_t at = out.size();
    Put<std::uint32_t>(out, 0x43455250);  // "PREC"
    Put<std::uint64_t>(out, vaddr);
    Put<std::uint32_t>(out, static_cast<std::uint32_t>(payload.size() / kPageSize));
    Put<std::uint32_t>(out, 0);
    const std::uint64_t sum =
        XXH3_64bits_withSeed(payload.data(), payload.size(), XXH3_64bits(&out[at], 20));
    Put<std::uint64_t>(out, sum);
    chain = version == 1 ? XXH3_64bits_withSeed(&sum, 8, chain)
                         : XXH3_64bits_withSeed(&out[at], 28, chain);
    out.insert(out.end(), payload.begin(), payload.end());
    pages += payload.size() / kPageSize;
  }
  Put<std::uint32_t>(out, 0x444e4550);  // "PEND"
  Put<std::uint32_t>(out, 0);
  Put<std::uint64_t>(out, runs.size());
  Put<std::uint64_t>(out, pages);
  Put<std::uint64_t>(out, chain);
  return out;
}

// Adjacent runs joined: what a stream holds, whatever its record sizes.
Runs Coalesce(const Runs& runs) {
  Runs out;
  for (const auto& [vaddr, pages] : runs) {
    if (!out.empty() && out.back().first + out.back().second.size() == vaddr) {
      out.back().second.insert(out.back().second.end(), pages.begin(), pages.end());
    } else {
      out.emplace_back(vaddr, pages);
    }
  }
  return out;
}

// Reads a whole stream; the error of whichever step failed.
Result<Runs> Decode(std::span<const std::byte> bytes) {
  ROAM_ASSIGN_OR_RETURN(auto source, OpenPageStream(bytes));
  Runs runs;
  ROAM_TRY(source->ForEach([&runs](std::uint64_t vaddr, std::span<const std::byte> pages) {
    runs.emplace_back(vaddr, Bytes(pages.begin(), pages.end()));
    return Ok();
  }));
  return runs;
}

// Damage to the structure: refused when the stream is opened.
void ExpectRefusedAtOpen(std::span<const std::byte> bytes, Errc code, std::string_view why) {
  const auto source = OpenPageStream(bytes);
  ASSERT_FALSE(source.has_value()) << why;
  EXPECT_EQ(source.error().code(), code) << why << ": " << source.error().ToString();
}

// Reads every page of `runs` through ReadPage; the first error.
Status ReadEveryPage(PageSource& source, const Runs& runs) {
  std::byte page[kPageSize];
  for (const auto& [vaddr, pages] : runs) {
    for (std::size_t i = 0; i < pages.size() / kPageSize; ++i) {
      ROAM_ASSIGN_OR_RETURN(const bool hit, source.ReadPage(vaddr + i * kPageSize, page));
      if (!hit || std::memcmp(page, &pages[i * kPageSize], kPageSize) != 0) {
        return MakeError(Errc::kInternal, "page {:#x} reads wrong", vaddr + i * kPageSize);
      }
    }
  }
  return Ok();
}

Bytes ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return Bytes(reinterpret_cast<std::byte*>(chars.data()),
               reinterpret_cast<std::byte*>(chars.data()) + chars.size());
}

void WriteFile(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

class PageStreamTest : public ::testing::Test {
 protected:
  std::filesystem::path path() const { return dir_.path() / "pages.img"; }

  void WriteRuns(const Runs& runs) {
    auto sink = OpenPageFileWriter(path());
    ASSERT_TRUE(sink.has_value()) << sink.error().ToString();
    for (const auto& [vaddr, pages] : runs) ASSERT_TRUE((*sink)->Add(vaddr, pages).has_value());
    ASSERT_TRUE((*sink)->Finish().has_value());
  }

  roam::testing::TempDir dir_;
  // Small: a record of one page at 0x1000 and one of two pages at 0x5000.
  const Runs small_ = {{0x1000, RandomPages(1, 1)}, {0x5000, RandomPages(2, 2)}};
};

TEST_F(PageStreamTest, FileRoundTripKeepsEveryRun) {
  const Runs runs = {{0x400000, RandomPages(3, 1)},
                     {0x403000, RandomPages(1, 2)},            // adjacent to the previous run
                     {0x7f0000000000, RandomPages(16384, 3)},  // 64 MiB
                     {0x7ffffffde000, RandomPages(2, 4)}};
  WriteRuns(runs);
  auto source = OpenPageFileReader(path());
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  Runs got;
  ASSERT_TRUE((*source)
                  ->ForEach([&got](std::uint64_t vaddr, std::span<const std::byte> pages) {
                    got.emplace_back(vaddr, Bytes(pages.begin(), pages.end()));
                    return Ok();
                  })
                  .has_value());
  for (const auto& [vaddr, pages] : got) EXPECT_LE(pages.size(), kMaxRecordPages * kPageSize);
  EXPECT_TRUE(Coalesce(got) == Coalesce(runs));
}

TEST_F(PageStreamTest, WriterMatchesTheSpecifiedFormat) {
  WriteRuns(small_);
  EXPECT_TRUE(ReadFile(path()) == Encode(small_));
  WriteRuns({});
  EXPECT_TRUE(ReadFile(path()) == Encode({}));
}

TEST_F(PageStreamTest, ReadPageHitsAndMisses) {
  WriteRuns(small_);
  auto source = OpenPageFileReader(path());
  ASSERT_TRUE(source.has_value());
  std::byte page[kPageSize];
  for (const auto& [vaddr, pages] : small_) {
    for (std::size_t i = 0; i < pages.size() / kPageSize; ++i) {
      auto hit = (*source)->ReadPage(vaddr + i * kPageSize, page);
      ASSERT_TRUE(hit.has_value() && *hit);
      EXPECT_EQ(std::memcmp(page, &pages[i * kPageSize], kPageSize), 0);
    }
  }
  for (std::uint64_t miss : {0x0ul, 0x2000ul, 0x4000ul, 0x7000ul, 0x7ffffffff000ul}) {
    auto hit = (*source)->ReadPage(miss, page);
    ASSERT_TRUE(hit.has_value());
    EXPECT_FALSE(*hit) << miss;
  }
  EXPECT_EQ((*source)->ReadPage(0x1001, page).error().code(), Errc::kInvalidArgument);
}

// Adjacent records (a long run is several) come back as one range.
TEST_F(PageStreamTest, ExtentComesFromTheIndex) {
  const Runs runs = {
      {0x10000, RandomPages(100, 1)}, {0x84000, RandomPages(2, 2)}, {0x86000, RandomPages(1, 3)}};
  WriteRuns(runs);
  auto source = OpenPageFileReader(path());
  ASSERT_TRUE(source.has_value()) << source.error().ToString();
  const auto extent = (*source)->Extent();
  ASSERT_TRUE(extent.has_value());
  EXPECT_EQ(*extent, (std::vector<std::pair<std::uint64_t, std::uint64_t>>{
                         {0x10000, 0x10000 + 100 * kPageSize}, {0x84000, 0x87000}}));
}

TEST_F(PageStreamTest, WriterRefusesBadRuns) {
  auto sink = OpenPageFileWriter(path());
  ASSERT_TRUE(sink.has_value());
  const Bytes page = RandomPages(1, 1);
  ASSERT_TRUE((*sink)->Add(0x10000, page).has_value());
  EXPECT_EQ((*sink)->Add(0x20001, page).error().code(), Errc::kInvalidArgument);  // unaligned
  EXPECT_EQ((*sink)->Add(0x20000, std::span(page).first(100)).error().code(),
            Errc::kInvalidArgument);                                              // partial page
  EXPECT_EQ((*sink)->Add(0x10000, page).error().code(), Errc::kInvalidArgument);  // overlap
  EXPECT_EQ((*sink)->Add(0x8000, page).error().code(), Errc::kInvalidArgument);   // backwards
  ASSERT_TRUE((*sink)->Finish().has_value());
  EXPECT_EQ((*sink)->Add(0x30000, page).error().code(), Errc::kInvalidArgument);  // finished
}

TEST_F(PageStreamTest, UnfinishedOrEmptyFileIsCorrupt) {
  {
    auto sink = OpenPageFileWriter(path());
    ASSERT_TRUE(sink.has_value());
    ASSERT_TRUE((*sink)->Add(0x1000, RandomPages(1, 1)).has_value());
  }  // destroyed without Finish: a crash mid-capture
  auto source = OpenPageFileReader(path());
  ASSERT_FALSE(source.has_value());
  EXPECT_EQ(source.error().code(), Errc::kCorrupt);
  EXPECT_NE(source.error().message().find(path().string()), std::string::npos);

  WriteFile(path(), {});
  source = OpenPageFileReader(path());
  ASSERT_FALSE(source.has_value());
  EXPECT_EQ(source.error().code(), Errc::kCorrupt);
  EXPECT_EQ(OpenPageFileReader(dir_.path() / "absent").error().code(), Errc::kNotFound);
}

TEST_F(PageStreamTest, TruncationAnywhereIsCorrupt) {
  const Bytes good = Encode(small_);
  ASSERT_TRUE(Decode(good).has_value());
  // Header, first record header, first payload, second record, trailer.
  ASSERT_EQ(good.size(), 12392u);
  for (std::size_t cut : {0,    1,    8,    15,   16,   17,   30,    43,    44,    45,    2000,
                          4139, 4140, 4141, 4167, 4168, 8000, 12359, 12360, 12361, 12380, 12391}) {
    ASSERT_LT(cut, good.size());
    ExpectRefusedAtOpen(std::span(good).first(cut), Errc::kCorrupt, fmt::format("cut at {}", cut));
  }
}

// A flip in the structure (header, record header, trailer) is refused at
// open; a flip in a payload is found when its record is read, by ForEach or
// by ReadPage of one of its pages, and the other record still reads.
TEST_F(PageStreamTest, EveryFlippedByteIsDetected) {
  const Bytes good = Encode(small_);
  // Payloads: record 0 at [44, 4140), record 1 at [4168, 12360).
  const std::pair<std::size_t, std::size_t> payloads[2] = {{44, 4140}, {4168, 12360}};
  for (std::size_t i = 0; i < good.size(); ++i) {
    Bytes bad = good;
    bad[i] ^= std::byte{0x20};
    const std::string why = fmt::format("flip at {}", i);
    int damaged = -1;
    for (int r = 0; r < 2; ++r) {
      if (i >= payloads[r].first && i < payloads[r].second) damaged = r;
    }
    if (damaged < 0) {
      // Flips in the version or page size fields read as a different format.
      const Errc want = (i >= 8 && i < 16) ? Errc::kIncompatible : Errc::kCorrupt;
      ExpectRefusedAtOpen(bad, want, why);
    } else {
      auto source = OpenPageStream(bad);
      ASSERT_TRUE(source.has_value()) << why << ": " << source.error().ToString();
      const Runs hit = {small_[static_cast<std::size_t>(damaged)]};
      const Runs spared = {small_[static_cast<std::size_t>(1 - damaged)]};
      const Status read = ReadEveryPage(**source, hit);
      ASSERT_FALSE(read.has_value()) << why;
      EXPECT_EQ(read.error().code(), Errc::kCorrupt) << why << ": " << read.error().ToString();
      EXPECT_TRUE(ReadEveryPage(**source, spared).has_value()) << why;
      // It stays bad, and ForEach refuses the stream.
      EXPECT_FALSE(ReadEveryPage(**source, hit).has_value()) << why;
      const auto runs = Decode(bad);
      ASSERT_FALSE(runs.has_value()) << why;
      EXPECT_EQ(runs.error().code(), Errc::kCorrupt) << why;
    }
    if (::testing::Test::HasFailure()) return;
  }
}

// Opening reads the record headers only: with a payload page made
// unreadable, the stream still opens and every other record reads.
TEST_F(PageStreamTest, IndexIsBuiltFromRecordHeadersOnly) {
  const Runs runs = {{0x1000, RandomPages(1, 1)}, {0x5000, RandomPages(1, 2)}};
  const Bytes encoded = Encode(runs);
  // Place the stream so that record 1's payload (at byte 4168) fills one page.
  const std::size_t shift = kPageSize - 4168 % kPageSize;
  const std::size_t length = shift + encoded.size();
  void* mem = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* base = static_cast<std::byte*>(mem);
  std::memcpy(base + shift, encoded.data(), encoded.size());
  std::byte* hidden = base + shift + 4168;
  ASSERT_EQ(reinterpret_cast<std::uintptr_t>(hidden) % kPageSize, 0u);
  ASSERT_EQ(::mprotect(hidden, kPageSize, PROT_NONE), 0);
  {
    auto source = OpenPageStream(std::span(base + shift, encoded.size()));
    ASSERT_TRUE(source.has_value()) << source.error().ToString();
    EXPECT_TRUE(ReadEveryPage(**source, {runs[0]}).has_value());
    std::byte page[kPageSize];
    const auto miss = (*source)->ReadPage(0x3000, page);
    ASSERT_TRUE(miss.has_value());
    EXPECT_FALSE(*miss);
  }
  ASSERT_EQ(::mprotect(hidden, kPageSize, PROT_READ), 0);
  {
    auto source = OpenPageStream(std::span(base + shift, encoded.size()));
    ASSERT_TRUE(source.has_value());
    EXPECT_TRUE(ReadEveryPage(**source, runs).has_value());
  }
  ::munmap(mem, length);
}

TEST_F(PageStreamTest, TruncatedFileIsRefusedAtOpen) {
  WriteRuns({{0x10000, RandomPages(200, 1)}, {0x400000, RandomPages(3, 2)}});
  const Bytes good = ReadFile(path());
  // Inside a payload, at a record boundary, inside the trailer.
  for (std::size_t cut :
       {std::size_t{5000}, std::size_t{16 + 28 + kMaxRecordPages * kPageSize}, good.size() - 1}) {
    WriteFile(path(), std::span(good).first(cut));
    const auto source = OpenPageFileReader(path());
    ASSERT_FALSE(source.has_value()) << cut;
    EXPECT_EQ(source.error().code(), Errc::kCorrupt) << source.error().ToString();
  }
}

TEST_F(PageStreamTest, WriterBoundsRecords) {
  const Bytes big = RandomPages(200, 1);     // written without copying
  const Bytes small = RandomPages(3, 2);     // gathered in the buffer
  const Bytes large = RandomPages(1100, 3);  // more records than one writev holds
  WriteRuns({{0x10000, big}, {0x400000, small}, {0x800000, large}});
  Runs records;
  const auto split = [&records](std::uint64_t vaddr, const Bytes& pages) {
    for (std::size_t at = 0; at < pages.size(); at += kMaxRecordPages * kPageSize) {
      const std::size_t n = std::min<std::size_t>(pages.size() - at, kMaxRecordPages * kPageSize);
      records.emplace_back(vaddr + at, Bytes(pages.begin() + static_cast<std::ptrdiff_t>(at),
                                             pages.begin() + static_cast<std::ptrdiff_t>(at + n)));
    }
  };
  split(0x10000, big);
  split(0x400000, small);
  split(0x800000, large);
  EXPECT_EQ(records.size(), 4u + 1u + 18u);
  EXPECT_TRUE(ReadFile(path()) == Encode(records));
}

TEST_F(PageStreamTest, OtherVersionsAreIncompatible) {
  for (std::uint32_t version : {1u, 3u}) {
    const auto runs = Decode(Encode(small_, version));
    ASSERT_FALSE(runs.has_value());
    EXPECT_EQ(runs.error().code(), Errc::kIncompatible);
    EXPECT_NE(
        runs.error().message().find(fmt::format("format version {}, this roam reads 2", version)),
        std::string::npos)
        << runs.error().ToString();
  }
}

TEST_F(PageStreamTest, MisplacedRecordsAreCorrupt) {
  const Bytes a = RandomPages(2, 1);
  const Bytes b = RandomPages(1, 2);
  ExpectRefusedAtOpen(Encode({{0x5000, a}, {0x6000, b}}), Errc::kCorrupt, "overlapping");
  ExpectRefusedAtOpen(Encode({{0x5000, a}, {0x1000, b}}), Errc::kCorrupt, "unsorted");
  ExpectRefusedAtOpen(Encode({{0x5000, a}, {0x5000, b}}), Errc::kCorrupt, "duplicate");
  ExpectRefusedAtOpen(Encode({{0x5800, a}}), Errc::kCorrupt, "unaligned");
  ExpectRefusedAtOpen(Encode({{0xfffffffffffff000, a}}), Errc::kCorrupt, "wraps");
  ExpectRefusedAtOpen(Encode({{0x5000, {}}}), Errc::kCorrupt, "empty record");
  ExpectRefusedAtOpen(Encode({{0x5000, RandomPages(kMaxRecordPages + 1, 3)}}), Errc::kCorrupt,
                      "oversized record");
  Bytes trailing = Encode({{0x5000, a}});
  trailing.push_back(std::byte{0});
  ExpectRefusedAtOpen(trailing, Errc::kCorrupt, "bytes after the trailer");
  const auto adjacent = Decode(Encode({{0x5000, a}, {0x7000, b}}));
  EXPECT_TRUE(adjacent.has_value()) << adjacent.error().ToString();
}

TEST_F(PageStreamTest, OversizedRecordIsRefusedBeforeItsPayload) {
  Bytes bad = Encode({{0x5000, RandomPages(1, 1)}});
  const std::uint32_t npages = kMaxRecordPages + 1;
  std::memcpy(&bad[16 + 12], &npages, 4);
  const auto runs = Decode(bad);
  ASSERT_FALSE(runs.has_value());
  EXPECT_NE(runs.error().message().find("byte 16: record 0: 65 pages (allowed 1..64)"),
            std::string::npos)
      << runs.error().ToString();
}

TEST(MemoryPageStoreTest, StoresRunsInAddressOrder) {
  MemoryPageStore store;
  const Bytes a = RandomPages(2, 1);
  const Bytes b = RandomPages(1, 2);
  ASSERT_TRUE(store.Add(0x9000, b).has_value());
  ASSERT_TRUE(store.Add(0x1000, a).has_value());
  EXPECT_EQ(store.Add(0x2000, b).error().code(), Errc::kInvalidArgument);  // overlaps a
  EXPECT_EQ(store.Add(0x8000, a).error().code(), Errc::kInvalidArgument);  // overlaps b
  EXPECT_EQ(store.page_count(), 3u);
  Runs got;
  ASSERT_TRUE(store
                  .ForEach([&got](std::uint64_t vaddr, std::span<const std::byte> pages) {
                    got.emplace_back(vaddr, Bytes(pages.begin(), pages.end()));
                    return Ok();
                  })
                  .has_value());
  EXPECT_TRUE(got == (Runs{{0x1000, a}, {0x9000, b}}));
  std::byte page[kPageSize];
  ASSERT_TRUE(*store.ReadPage(0x2000, page));
  EXPECT_EQ(std::memcmp(page, &a[kPageSize], kPageSize), 0);
  EXPECT_FALSE(*store.ReadPage(0x3000, page));
  EXPECT_FALSE(*store.ReadPage(0x0, page));
  ASSERT_TRUE(store.Finish().has_value());
  EXPECT_FALSE(store.Add(0x20000, a).has_value());
}

TEST(MemoryPageStoreTest, CallbackErrorStopsTheWalk) {
  MemoryPageStore store;
  ASSERT_TRUE(store.Add(0x1000, RandomPages(1, 1)).has_value());
  ASSERT_TRUE(store.Add(0x3000, RandomPages(1, 2)).has_value());
  int calls = 0;
  const Status walked = store.ForEach([&calls](std::uint64_t, std::span<const std::byte>) {
    ++calls;
    return Status(MakeError(Errc::kCancelled, "stop"));
  });
  EXPECT_EQ(walked.error().code(), Errc::kCancelled);
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace roam::ckpt
