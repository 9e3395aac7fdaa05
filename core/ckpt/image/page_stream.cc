#include "core/ckpt/image/page_stream.h"

#include <fcntl.h>
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include "core/ckpt/image/byte_order.h"
#include "core/ckpt/image/file_io.h"

namespace roam::ckpt {
namespace {

constexpr std::uint32_t FourCc(const char (&s)[5]) {
  return static_cast<std::uint32_t>(s[0]) | static_cast<std::uint32_t>(s[1]) << 8 |
         static_cast<std::uint32_t>(s[2]) << 16 | static_cast<std::uint32_t>(s[3]) << 24;
}

constexpr char kFileMagic[8] = {'R', 'O', 'A', 'M', 'P', 'A', 'G', 'E'};
constexpr std::size_t kFileHeaderSize = 16;
constexpr std::uint32_t kRecordMagic = FourCc("PREC");
constexpr std::size_t kRecordHeaderSize = 28;
constexpr std::size_t kRecordSeededBytes = 20;  // magic, vaddr, npages, reserved
constexpr std::uint32_t kTrailerMagic = FourCc("PEND");
constexpr std::size_t kTrailerSize = 32;
// Large writes keep syscalls and page-cache locking off the profile.
constexpr std::size_t kWriteBufferSize = 4 << 20;

// XXH3 through libxxhash's runtime dispatch (AVX-512/AVX2 where the CPU has
// them): the same values as the portable entry points, 1 GiB hashed in
// ~115 ms instead of ~190 ms on this VM. Capture hashes every page inside
// the frozen window, and a restore hashes every page it reads.
std::uint64_t Hash(const void* data, std::size_t size, std::uint64_t seed) {
#if defined(__x86_64__)
  return XXH3_64bits_withSeed_dispatch(data, size, seed);
#else
  return XXH3_64bits_withSeed(data, size, seed);
#endif
}

// The checksum of a record whose header (magic..reserved filled in) is at `header`.
std::uint64_t RecordChecksum(const std::byte* header, std::span<const std::byte> payload) {
  const std::uint64_t seed = Hash(header, kRecordSeededBytes, 0);
  return Hash(payload.data(), payload.size(), seed);
}

// Folds a whole record header (checksum included) into the trailer's chain.
std::uint64_t ChainHeader(std::uint64_t chain, const std::byte* header) {
  return Hash(header, kRecordHeaderSize, chain);
}

Status CheckRun(std::uint64_t vaddr, std::span<const std::byte> pages) {
  if (vaddr % kPageSize != 0 || pages.empty() || pages.size() % kPageSize != 0 ||
      pages.size() > std::numeric_limits<std::uint64_t>::max() - vaddr) {
    return MakeError(Errc::kInvalidArgument, "bad page run at {:#x} of {} bytes", vaddr,
                     pages.size());
  }
  return Ok();
}

Status CheckPageRequest(std::uint64_t vaddr, std::span<std::byte> out) {
  if (vaddr % kPageSize != 0 || out.size() != kPageSize) {
    return MakeError(Errc::kInvalidArgument, "ReadPage({:#x}) with a {}-byte buffer", vaddr,
                     out.size());
  }
  return Ok();
}

// One record of the stream, known from its header; its payload is verified
// on first use.
struct Record {
  enum class Payload : std::uint8_t { kUnchecked, kGood, kBad };
  std::uint64_t vaddr;
  std::size_t offset;  // of the record header in the stream
  std::uint32_t npages;
  Payload payload;
};

class PageStreamReader final : public PageSource {
 public:
  PageStreamReader(std::span<const std::byte> bytes, std::string name)
      : bytes_(bytes), name_(std::move(name)) {}
  PageStreamReader(MappedFile file, std::string name)
      : file_(std::move(file)), bytes_(file_->bytes()), name_(std::move(name)) {}

  // The header, then every record header and the trailer (BuildIndex).
  Status Open();
  Status ForEach(const RunFn& fn) override;
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;
  std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> Extent() const override {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
    for (const auto& r : records_) {
      AppendRange(runs, r.vaddr, r.vaddr + std::uint64_t{r.npages} * kPageSize);
    }
    return runs;
  }

 private:
  template <typename... Args>
  Error Corrupt(std::size_t offset, fmt::format_string<Args...> format, Args&&... args) const {
    return MakeError(Errc::kCorrupt, "{}: byte {}: {}", name_, offset,
                     fmt::format(format, std::forward<Args>(args)...));
  }
  Status CheckHeader() const;
  Status BuildIndex();
  std::span<const std::byte> PayloadOf(const Record& r) const {
    return bytes_.subspan(r.offset + kRecordHeaderSize, std::size_t{r.npages} * kPageSize);
  }
  Status Verify(std::size_t index);

  std::optional<MappedFile> file_;  // when reading a file: holds bytes_
  std::span<const std::byte> bytes_;
  std::string name_;
  std::vector<Record> records_;  // in address order
};

Status PageStreamReader::Open() {
  ROAM_TRY(CheckHeader());
  return BuildIndex();
}

Status PageStreamReader::CheckHeader() const {
  if (bytes_.size() < kFileHeaderSize + kTrailerSize) {
    return Corrupt(0, "{} bytes, too short for a header and a trailer", bytes_.size());
  }
  if (std::memcmp(bytes_.data(), kFileMagic, sizeof kFileMagic) != 0) {
    return Corrupt(0, "not a roam page stream (bad magic)");
  }
  if (const auto version = GetLe<std::uint32_t>(&bytes_[8]); version != kPageFormatVersion) {
    return MakeError(Errc::kIncompatible,
                     "{}: page stream format version {}, this roam reads {} (checkpoint the "
                     "process again with this roam)",
                     name_, version, kPageFormatVersion);
  }
  if (const auto page_size = GetLe<std::uint32_t>(&bytes_[12]); page_size != kPageSize) {
    return MakeError(Errc::kIncompatible, "{}: page size {}, this roam supports {}", name_,
                     page_size, kPageSize);
  }
  // Cheap early refusal of a truncated file; BuildIndex checks the trailer fully.
  const std::size_t trailer = bytes_.size() - kTrailerSize;
  if (GetLe<std::uint32_t>(&bytes_[trailer]) != kTrailerMagic) {
    return Corrupt(trailer, "no trailer at the end (truncated or unfinished stream)");
  }
  return Ok();
}

// Seeks from record header to record header: the payloads are not read, so
// this costs one touch of the stream per record (256 KiB of pages).
Status PageStreamReader::BuildIndex() {
  const std::byte* const p = bytes_.data();
  const std::size_t size = bytes_.size();
  std::size_t off = kFileHeaderSize;
  std::uint64_t next_vaddr = 0;  // lowest address the next record may start at
  std::uint64_t pages = 0;
  std::uint64_t chain = 0;
  std::vector<Record> records;
  records.reserve((size - kFileHeaderSize) / (kRecordHeaderSize + kMaxRecordPages * kPageSize) + 1);
  for (;;) {
    const std::size_t n = records.size();
    if (size - off < 4) return Corrupt(off, "truncated: neither a record nor the trailer");
    // A file's headers are read with pread: touching them through the
    // mapping would fault once per record.
    std::array<std::byte, kRecordHeaderSize> header{};
    const std::size_t have = std::min(size - off, kRecordHeaderSize);
    if (file_) {
      ROAM_TRY(file_->ReadAt(off, std::span(header).first(have)));
    } else {
      std::memcpy(header.data(), p + off, have);
    }
    const auto magic = GetLe<std::uint32_t>(header.data());
    if (magic == kTrailerMagic) break;
    if (magic != kRecordMagic) return Corrupt(off, "record {}: bad magic {:#x}", n, magic);
    if (have < kRecordHeaderSize) return Corrupt(off, "truncated record {} header", n);
    const auto vaddr = GetLe<std::uint64_t>(&header[4]);
    const auto npages = GetLe<std::uint32_t>(&header[12]);
    const auto reserved = GetLe<std::uint32_t>(&header[16]);
    if (reserved != 0) return Corrupt(off, "record {}: reserved field is {}", n, reserved);
    if (vaddr % kPageSize != 0) {
      return Corrupt(off, "record {}: vaddr {:#x} is not page-aligned", n, vaddr);
    }
    if (npages == 0 || npages > kMaxRecordPages) {
      return Corrupt(off, "record {}: {} pages (allowed 1..{})", n, npages, kMaxRecordPages);
    }
    const std::uint64_t length = std::uint64_t{npages} * kPageSize;
    if (vaddr < next_vaddr) {
      return Corrupt(off, "record {}: vaddr {:#x} is below the end of the previous record {:#x}", n,
                     vaddr, next_vaddr);
    }
    if (length > std::numeric_limits<std::uint64_t>::max() - vaddr) {
      return Corrupt(off, "record {}: run at {:#x} wraps the address space", n, vaddr);
    }
    if (size - off - kRecordHeaderSize < length) {
      return Corrupt(off, "record {}: truncated payload ({} pages, {} bytes left)", n, npages,
                     size - off - kRecordHeaderSize);
    }
    chain = ChainHeader(chain, header.data());
    records.push_back({vaddr, off, npages, Record::Payload::kUnchecked});
    pages += npages;
    next_vaddr = vaddr + length;
    off += kRecordHeaderSize + length;
  }
  if (size - off != kTrailerSize) {
    return Corrupt(off, "trailer is {} bytes, expected {}", size - off, kTrailerSize);
  }
  const auto reserved = GetLe<std::uint32_t>(p + off + 4);
  const auto want_records = GetLe<std::uint64_t>(p + off + 8);
  const auto want_pages = GetLe<std::uint64_t>(p + off + 16);
  const auto want_chain = GetLe<std::uint64_t>(p + off + 24);
  if (reserved != 0 || want_records != records.size() || want_pages != pages ||
      want_chain != chain) {
    return Corrupt(off,
                   "trailer does not match the stream (reserved {}, records {} of {}, pages {} "
                   "of {}, header chain {:#x} of {:#x})",
                   reserved, records.size(), want_records, pages, want_pages, chain, want_chain);
  }
  records_ = std::move(records);
  return Ok();
}

Status PageStreamReader::Verify(std::size_t index) {
  Record& r = records_[index];
  if (r.payload == Record::Payload::kGood) return Ok();
  const std::byte* header = bytes_.data() + r.offset;
  const auto stored = GetLe<std::uint64_t>(header + kRecordSeededBytes);
  const std::uint64_t computed = RecordChecksum(header, PayloadOf(r));
  if (computed != stored) {
    r.payload = Record::Payload::kBad;  // rehashed on every later read: it stays bad
    return Corrupt(r.offset, "record {} at {:#x}: checksum {:#x}, computed {:#x}", index, r.vaddr,
                   stored, computed);
  }
  r.payload = Record::Payload::kGood;
  return Ok();
}

Status PageStreamReader::ForEach(const RunFn& fn) {
  for (std::size_t i = 0; i < records_.size(); ++i) {
    ROAM_TRY(Verify(i));
    ROAM_TRY(fn(records_[i].vaddr, PayloadOf(records_[i])));
  }
  return Ok();
}

Result<bool> PageStreamReader::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  ROAM_TRY(CheckPageRequest(vaddr, out4k));
  // The last record starting at or below vaddr is the only one that can hold it.
  auto it = std::upper_bound(records_.begin(), records_.end(), vaddr,
                             [](std::uint64_t v, const Record& r) { return v < r.vaddr; });
  if (it == records_.begin()) return false;
  --it;
  const std::uint64_t offset = vaddr - it->vaddr;
  if (offset >= std::uint64_t{it->npages} * kPageSize) return false;
  ROAM_TRY(Verify(static_cast<std::size_t>(it - records_.begin())));
  std::memcpy(out4k.data(), PayloadOf(*it).data() + offset, kPageSize);
  return true;
}

class PageFileWriter final : public PageSink {
 public:
  PageFileWriter(UniqueFd fd, std::filesystem::path path, bool reserved)
      : fd_(std::move(fd)), path_(std::move(path)), reserved_(reserved) {
    buffer_.reserve(kWriteBufferSize);
    std::byte header[kFileHeaderSize];
    std::memcpy(header, kFileMagic, sizeof kFileMagic);
    PutLe(header + 8, kPageFormatVersion);
    PutLe(header + 12, static_cast<std::uint32_t>(kPageSize));
    buffer_.insert(buffer_.end(), header, header + sizeof header);
  }

  Status Add(std::uint64_t vaddr, std::span<const std::byte> pages) override {
    ROAM_TRY(CheckUsable());
    ROAM_TRY(CheckRun(vaddr, pages));
    if (vaddr < next_vaddr_) {
      return MakeError(Errc::kInvalidArgument, "{}: run at {:#x} is below the previous end {:#x}",
                       path_.string(), vaddr, next_vaddr_);
    }
    next_vaddr_ = vaddr + pages.size();
    if (pages.size() < kDirectWriteMin) {
      // Small runs are gathered in the buffer.
      while (!pages.empty()) {
        const std::size_t length = std::min<std::size_t>(pages.size(), kMaxRecordBytes);
        std::array<std::byte, kRecordHeaderSize> header;
        RecordHeader(vaddr, pages.first(length), header);
        ROAM_TRY(Remember(Append(header)));
        ROAM_TRY(Remember(Append(pages.first(length))));
        vaddr += length;
        pages = pages.subspan(length);
      }
      return Ok();
    }
    // Large runs go from the caller's memory to the file in one writev per
    // batch of records (the buffer first): no payload byte is copied here.
    while (!pages.empty()) {
      const std::size_t nrecords = std::min<std::size_t>(
          (pages.size() + kMaxRecordBytes - 1) / kMaxRecordBytes, kRecordsPerWrite);
      headers_.resize(nrecords);
      parts_.clear();
      parts_.push_back(buffer_);
      for (std::size_t i = 0; i < nrecords; ++i) {
        const std::size_t length = std::min<std::size_t>(pages.size(), kMaxRecordBytes);
        RecordHeader(vaddr, pages.first(length), headers_[i]);
        parts_.push_back(headers_[i]);
        parts_.push_back(pages.first(length));
        vaddr += length;
        pages = pages.subspan(length);
      }
      ROAM_TRY(Remember(WriteAllV(fd_.get(), parts_, path_)));
      buffer_.clear();
    }
    return Ok();
  }

  Status Finish() override {
    ROAM_TRY(CheckUsable());
    std::byte trailer[kTrailerSize];
    PutLe(trailer, kTrailerMagic);
    PutLe(trailer + 4, std::uint32_t{0});
    PutLe(trailer + 8, records_);
    PutLe(trailer + 16, pages_);
    PutLe(trailer + 24, chain_);
    finished_ = true;
    return Remember([&]() -> Status {
      ROAM_TRY(Append(trailer));
      ROAM_TRY(Flush());
      if (reserved_) {
        // The reservation extended the file: cut it where the stream ends.
        const off_t end = ::lseek(fd_.get(), 0, SEEK_CUR);
        if (end < 0 || ::ftruncate(fd_.get(), end) != 0) {
          return ErrnoError(errno, "trim {}", path_.string());
        }
      }
      ROAM_TRY(SyncFile(fd_.get(), path_));
      return fd_.Close(path_);
    }());
  }

 private:
  static constexpr std::size_t kMaxRecordBytes = std::size_t{kMaxRecordPages} * kPageSize;
  // Runs at least this long are written without copying them.
  static constexpr std::size_t kDirectWriteMin = 64 << 10;
  // Records per writev: 1 + 2 * 500 parts, under IOV_MAX (1024).
  static constexpr std::size_t kRecordsPerWrite = 500;

  Status CheckUsable() const {
    if (error_) return *error_;
    if (finished_) return MakeError(Errc::kInvalidArgument, "{}: already finished", path_.string());
    return Ok();
  }
  // A failed write leaves the file in an unknown state: every later call fails.
  Status Remember(Status status) {
    if (!status) error_ = status.error();
    return status;
  }

  // Fills in the header of a record (at most kMaxRecordPages) and counts it.
  void RecordHeader(std::uint64_t vaddr, std::span<const std::byte> payload,
                    std::array<std::byte, kRecordHeaderSize>& header) {
    PutLe(&header[0], kRecordMagic);
    PutLe(&header[4], vaddr);
    PutLe(&header[12], static_cast<std::uint32_t>(payload.size() / kPageSize));
    PutLe(&header[16], std::uint32_t{0});
    PutLe(&header[20], RecordChecksum(header.data(), payload));
    chain_ = ChainHeader(chain_, header.data());
    ++records_;
    pages_ += payload.size() / kPageSize;
  }

  Status Append(std::span<const std::byte> bytes) {
    if (buffer_.size() + bytes.size() > kWriteBufferSize) ROAM_TRY(Flush());
    buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
    return Ok();
  }

  Status Flush() {
    ROAM_TRY(WriteAll(fd_.get(), buffer_, path_));
    buffer_.clear();
    return Ok();
  }

  UniqueFd fd_;
  std::filesystem::path path_;
  bool reserved_;  // space was allocated ahead: Finish trims the rest
  std::vector<std::byte> buffer_;
  std::vector<std::array<std::byte, kRecordHeaderSize>> headers_;  // of one writev
  std::vector<std::span<const std::byte>> parts_;                  // of one writev
  std::uint64_t next_vaddr_ = 0;
  std::uint64_t records_ = 0;
  std::uint64_t pages_ = 0;
  std::uint64_t chain_ = 0;
  bool finished_ = false;
  std::optional<Error> error_;
};

}  // namespace

Status MemoryPageStore::Add(std::uint64_t vaddr, std::span<const std::byte> pages) {
  if (finished_) return MakeError(Errc::kInvalidArgument, "page store already finished");
  ROAM_TRY(CheckRun(vaddr, pages));
  const std::uint64_t end = vaddr + pages.size();
  const auto next = runs_.lower_bound(vaddr);
  const bool overlaps_next = next != runs_.end() && next->first < end;
  const bool overlaps_prev =
      next != runs_.begin() && std::prev(next)->first + std::prev(next)->second.size() > vaddr;
  if (overlaps_next || overlaps_prev) {
    return MakeError(Errc::kInvalidArgument, "page run at {:#x} overlaps a stored run", vaddr);
  }
  runs_.emplace_hint(next, vaddr, std::vector<std::byte>(pages.begin(), pages.end()));
  page_count_ += pages.size() / kPageSize;
  return Ok();
}

Status MemoryPageStore::Finish() {
  finished_ = true;
  return Ok();
}

Status MemoryPageStore::ForEach(const RunFn& fn) {
  for (const auto& [vaddr, pages] : runs_) ROAM_TRY(fn(vaddr, pages));
  return Ok();
}

Result<bool> MemoryPageStore::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  ROAM_TRY(CheckPageRequest(vaddr, out4k));
  auto it = runs_.upper_bound(vaddr);
  if (it == runs_.begin()) return false;
  --it;
  const std::uint64_t offset = vaddr - it->first;
  if (offset >= it->second.size()) return false;
  std::memcpy(out4k.data(), it->second.data() + offset, kPageSize);
  return true;
}

Result<std::unique_ptr<PageSink>> OpenPageFileWriter(const std::filesystem::path& path,
                                                     std::uint64_t reserve_bytes) {
  ROAM_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_WRONLY | O_CREAT | O_TRUNC, 0600));
  // Best effort: a file system without fallocate just allocates as it goes.
  const bool reserved =
      reserve_bytes != 0 && ::fallocate(fd.get(), 0, 0, static_cast<off_t>(reserve_bytes)) == 0;
  return std::make_unique<PageFileWriter>(std::move(fd), path, reserved);
}

Result<std::unique_ptr<PageSource>> OpenPageStream(std::span<const std::byte> bytes,
                                                   std::string name) {
  auto reader = std::make_unique<PageStreamReader>(bytes, std::move(name));
  ROAM_TRY(reader->Open());
  return reader;
}

Result<std::unique_ptr<PageSource>> OpenPageFileReader(const std::filesystem::path& path) {
  ROAM_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  auto reader = std::make_unique<PageStreamReader>(std::move(file), path.string());
  ROAM_TRY(reader->Open());
  return reader;
}

}  // namespace roam::ckpt
