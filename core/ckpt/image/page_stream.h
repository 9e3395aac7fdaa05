// The page contents of a process image as a stream of records, each a run of
// whole pages at a virtual address. Producers write through a PageSink,
// consumers read through a PageSource; the file format below is one pair of
// implementations, MemoryPageStore another (tests, a daemon's staging area),
// and a network stream can be a third.
//
// Page file format, version 1 (little-endian, no padding):
//   header   "ROAMPAGE"  format version u32 (= 1)  page size u32 (= 4096)
//   record*  magic u32 "PREC"  vaddr u64  npages u32  reserved u32 (= 0)
//            checksum u64  payload (npages * 4096 bytes)
//   trailer  magic u32 "PEND"  reserved u32 (= 0)  record count u64
//            total pages u64  stream checksum u64
// Checksums are XXH3_64bits. A record's checksum covers its payload, seeded
// with XXH3_64bits of its first 20 header bytes (magic..reserved), so a
// corrupted vaddr or npages cannot move good pages elsewhere. The stream
// checksum chains the record checksums: c = XXH3_64bits_withSeed(record
// checksum as 8 LE bytes, c), starting from 0. Records are strictly
// increasing and non-overlapping, 1..262144 pages (1 GiB) each; pages not in
// the stream are all-zero or unmapped. The trailer is the last thing in the
// file, so truncation anywhere is detected.
//
// Thread-safety: sinks and sources are used by one thread at a time (a
// source builds its ReadPage index lazily). Lifetime: a span handed to a
// ForEach callback is valid only during that call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt {

inline constexpr std::size_t kPageSize = 4096;
inline constexpr std::uint32_t kPageFormatVersion = 1;
inline constexpr std::uint32_t kMaxRecordPages = (1u << 30) / kPageSize;

class PageSink {
 public:
  virtual ~PageSink() = default;
  // `vaddr` page-aligned, `pages` a non-empty multiple of kPageSize; runs come
  // in increasing address order and do not overlap (adjacent ones may be
  // passed in one call or several). Violations are kInvalidArgument.
  virtual Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) = 0;
  // Completes the stream (a file writes its trailer and is fsync'ed). A stream
  // never finished reads back as corrupt.
  virtual Status Finish() = 0;
};

class PageSource {
 public:
  using RunFn = std::function<Status(std::uint64_t vaddr, std::span<const std::byte> pages)>;
  virtual ~PageSource() = default;
  // Calls `fn` for each run in address order and stops at its first error,
  // which is returned as is. A stream is validated as it is read: `fn` may have
  // seen earlier runs before an error, so treat the whole stream as failed.
  virtual Status ForEach(const RunFn& fn) = 0;
  // Copies the page at `vaddr` into `out4k` (kPageSize bytes) and returns
  // true, or returns false if the stream has no such page.
  virtual Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) = 0;
};

// Pages held in memory, in any order of Add (overlap is still refused).
class MemoryPageStore final : public PageSink, public PageSource {
 public:
  MemoryPageStore() = default;
  MemoryPageStore(const MemoryPageStore&) = delete;
  MemoryPageStore& operator=(const MemoryPageStore&) = delete;

  Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) override;
  Status Finish() override;
  Status ForEach(const RunFn& fn) override;
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;

  std::uint64_t page_count() const { return page_count_; }

 private:
  std::map<std::uint64_t, std::vector<std::byte>> runs_;  // by start address
  std::uint64_t page_count_ = 0;
  bool finished_ = false;
};

// Writes a page file at `path` (created 0600, truncated if it exists).
Result<std::unique_ptr<PageSink>> OpenPageFileWriter(const std::filesystem::path& path);

// Reads a page file; the header and the trailer's presence are checked here,
// everything else by ForEach and by the pass that builds ReadPage's index.
// The file is mapped: it must not be truncated while the source lives.
Result<std::unique_ptr<PageSource>> OpenPageFileReader(const std::filesystem::path& path);

// The same reader over an encoded stream in memory (a received buffer, a fuzz
// input); `bytes` must outlive the source. `name` prefixes error messages.
Result<std::unique_ptr<PageSource>> OpenPageStream(std::span<const std::byte> bytes,
                                                   std::string name = "page stream");

}  // namespace roam::ckpt
