// The page contents of a process image as a stream of records, each a run of
// whole pages at a virtual address. Producers write through a PageSink,
// consumers read through a PageSource; the file format below is one pair of
// implementations, MemoryPageStore another (tests, a daemon's staging area),
// and a network stream can be a third.
//
// Page file format, version 2 (little-endian, no padding):
//   header   "ROAMPAGE"  format version u32 (= 2)  page size u32 (= 4096)
//   record*  magic u32 "PREC"  vaddr u64  npages u32  reserved u32 (= 0)
//            checksum u64  payload (npages * 4096 bytes)
//   trailer  magic u32 "PEND"  reserved u32 (= 0)  record count u64
//            total pages u64  header chain u64
// Checksums are XXH3_64bits. A record's checksum covers its payload, seeded
// with XXH3_64bits of its first 20 header bytes (magic..reserved), so a
// corrupted vaddr or npages cannot move good pages elsewhere. The header
// chain covers every record header whole (28 bytes, its checksum included):
// c = XXH3_64bits_withSeed(header, c), starting from 0. Records are strictly
// increasing and non-overlapping, 1..64 pages (256 KiB) each; pages not in
// the stream are all-zero or unmapped. The trailer is the last thing in the
// file, so truncation anywhere is detected. Version 1 (records up to 1 GiB,
// a chain over the record checksums only) is refused as incompatible.
//
// Two levels of checking, so that a post-copy restore can start without
// hashing the whole payload:
//  - Opening a stream checks its structure: the header, every record header
//    (found by seeking from header to header, no payload read), the trailer's
//    counts and the header chain. A truncated stream, a damaged record header
//    or trailer, or a stray byte between records is refused here, so a
//    source that opened knows exactly which pages exist and where: no page
//    can be silently missing or misplaced.
//  - A record's payload checksum is checked the first time the record is
//    read, by ForEach (every record, in order, before its run is handed out)
//    or by ReadPage (only the record holding the page, once; the result is
//    remembered). A damaged payload makes that call fail with kCorrupt, and
//    every later read of that record too; other records still read.
// Stop-copy restore reads every page through ForEach before the process
// runs, so it still refuses any damage before starting. Post-copy reads
// pages on demand after the process resumed: damage in a payload is found
// only when its record is first served (fault or background stream), and the
// page server then kills the process and poisons its missing pages (see
// LazyPageServer::Wait). Records are bounded so that such a check costs one
// hash of at most 256 KiB on a fault.
//
// Thread-safety: sinks and sources are used by one thread at a time
// (ReadPage remembers which records it verified). Lifetime: a span handed to
// a ForEach callback is valid only during that call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "roam/base/error.h"

namespace roam::ckpt {

inline constexpr std::size_t kPageSize = 4096;
inline constexpr std::uint32_t kPageFormatVersion = 2;
// Whether the kPageSize bytes at `page` are all zero (a capture leaves such
// pages out: an untouched anonymous page reads as zeros anyway).
inline bool IsZeroPage(const std::byte* page) {
  const auto* words = reinterpret_cast<const std::uint64_t*>(page);
  for (std::size_t i = 0; i < kPageSize / sizeof(std::uint64_t); ++i) {
    if (words[i] != 0) return false;
  }
  return true;
}

// Appends [lo, hi) to `ranges` (sorted, disjoint, the last ending at or
// before `lo`), extending the last range instead when it ends at `lo`.
inline void AppendRange(std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges,
                        std::uint64_t lo, std::uint64_t hi) {
  if (!ranges.empty() && ranges.back().second == lo) {
    ranges.back().second = hi;
  } else {
    ranges.emplace_back(lo, hi);
  }
}

// The largest record: what a fault may have to verify before its page is
// served (XXH3 of 256 KiB, ~25-50 us here).
inline constexpr std::uint32_t kMaxRecordPages = 64;

class PageSink {
 public:
  virtual ~PageSink() = default;
  // `vaddr` page-aligned, `pages` a non-empty multiple of kPageSize; runs come
  // in increasing address order and do not overlap (adjacent ones may be
  // passed in one call or several). Violations are kInvalidArgument.
  virtual Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) = 0;
  // Where the sink would like the next `bytes` of pages read into, so that
  // an Add of pages lying there costs no copy; empty if it has no such place
  // (the default). Valid until the next Add.
  virtual std::span<std::byte> WritableTail(std::size_t /*bytes*/) { return {}; }
  // Pages this sink already holds as they are now, from an earlier pass of
  // the same capture (a pre-copy round into it): referred to instead of
  // passed again, in address order with Add's runs. kUnsupported for a sink
  // that keeps no earlier pass (the default).
  virtual Status AddKept(std::uint64_t vaddr, std::uint64_t /*bytes*/) {
    return MakeError(Errc::kUnsupported, "page sink keeps no earlier pass (pages at {:#x})", vaddr);
  }
  // Completes the stream (a file writes its trailer and is fsync'ed). A stream
  // never finished reads back as corrupt.
  virtual Status Finish() = 0;
};

class PageSource {
 public:
  using RunFn = std::function<Status(std::uint64_t vaddr, std::span<const std::byte> pages)>;
  virtual ~PageSource() = default;
  // Calls `fn` for each run in address order and stops at its first error,
  // which is returned as is. Each run is verified before `fn` sees it, but
  // `fn` may have seen earlier runs before an error: treat the whole stream as
  // failed.
  virtual Status ForEach(const RunFn& fn) = 0;
  // Copies the page at `vaddr` into `out4k` (kPageSize bytes) and returns
  // true, or returns false if the stream has no such page. Fails (kCorrupt)
  // if the page's own run is damaged; other pages may still read.
  virtual Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) = 0;
  // Where its pages may be, as sorted, disjoint [start, end) ranges, when
  // that is known without reading them (an index); nullopt when it is not.
  // A page outside them is absent; one inside may still be (ReadPage says).
  virtual std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> Extent() const {
    return std::nullopt;
  }
  // Whether the spans ForEach hands out stay valid as long as the source
  // does (pages held in memory): the restore then writes them from several
  // threads at once.
  virtual bool RunsStayValid() const { return false; }
  // A hint: the pages of `ranges` (sorted, disjoint, page-aligned) will be
  // read next, each once, in address order. A source far away asks for them
  // all at once rather than one round trip per run. No-op by default.
  virtual Status Prefetch(std::span<const std::pair<std::uint64_t, std::uint64_t>> /*ranges*/) {
    return Ok();
  }
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
  bool RunsStayValid() const override { return true; }

  std::uint64_t page_count() const { return page_count_; }

 private:
  std::map<std::uint64_t, std::vector<std::byte>> runs_;  // by start address
  std::uint64_t page_count_ = 0;
  bool finished_ = false;
};

// Writes a page file at `path` (created 0600, truncated if it exists).
// `reserve_bytes`: space to allocate now (fallocate, best effort), so that
// writing it later, while a process is frozen, does not allocate: on tmpfs a
// fresh page costs more than copying into it. Finish trims what was not
// used.
Result<std::unique_ptr<PageSink>> OpenPageFileWriter(const std::filesystem::path& path,
                                                     std::uint64_t reserve_bytes = 0);

// Reads a page file. The structure (header, record headers, trailer, header
// chain) is checked here and a damaged or truncated file refused; payloads
// are checked as they are read (see above). The file is mapped: it must not
// be truncated while the source lives.
Result<std::unique_ptr<PageSource>> OpenPageFileReader(const std::filesystem::path& path);

// The same reader over an encoded stream in memory (a received buffer, a fuzz
// input); `bytes` must outlive the source. `name` prefixes error messages.
Result<std::unique_ptr<PageSource>> OpenPageStream(std::span<const std::byte> bytes,
                                                   std::string name = "page stream");

}  // namespace roam::ckpt
