#include "core/ckpt/image/page_stream.h"

#include <fcntl.h>
#include <xxhash.h>

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

// The checksum of a record whose header (magic..reserved filled in) is at `header`.
std::uint64_t RecordChecksum(const std::byte* header, std::span<const std::byte> payload) {
  const XXH64_hash_t seed = XXH3_64bits(header, kRecordSeededBytes);
  return XXH3_64bits_withSeed(payload.data(), payload.size(), seed);
}

std::uint64_t ChainChecksum(std::uint64_t chain, std::uint64_t record_checksum) {
  std::byte le[8];
  PutLe(le, record_checksum);
  return XXH3_64bits_withSeed(le, sizeof le, chain);
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

// A validated run of the stream, pointing into the encoded bytes.
struct Run {
  std::uint64_t vaddr;
  std::span<const std::byte> pages;
};

class PageStreamReader final : public PageSource {
 public:
  PageStreamReader(std::span<const std::byte> bytes, std::string name)
      : bytes_(bytes), name_(std::move(name)) {}
  PageStreamReader(MappedFile file, std::string name)
      : file_(std::move(file)), bytes_(file_->bytes()), name_(std::move(name)) {}

  Status CheckHeader() const;
  Status ForEach(const RunFn& fn) override { return Walk(fn); }
  Result<bool> ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) override;

 private:
  template <typename... Args>
  Error Corrupt(std::size_t offset, fmt::format_string<Args...> format, Args&&... args) const {
    return MakeError(Errc::kCorrupt, "{}: byte {}: {}", name_, offset,
                     fmt::format(format, std::forward<Args>(args)...));
  }
  Status Walk(const RunFn& fn) const;

  std::optional<MappedFile> file_;  // when reading a file: holds bytes_
  std::span<const std::byte> bytes_;
  std::string name_;
  std::optional<Result<std::vector<Run>>> index_;  // built by the first ReadPage
};

Status PageStreamReader::CheckHeader() const {
  if (bytes_.size() < kFileHeaderSize + kTrailerSize) {
    return Corrupt(0, "{} bytes, too short for a header and a trailer", bytes_.size());
  }
  if (std::memcmp(bytes_.data(), kFileMagic, sizeof kFileMagic) != 0) {
    return Corrupt(0, "not a roam page stream (bad magic)");
  }
  if (const auto version = GetLe<std::uint32_t>(&bytes_[8]); version != kPageFormatVersion) {
    return MakeError(Errc::kIncompatible, "{}: page stream format version {}, this roam reads {}",
                     name_, version, kPageFormatVersion);
  }
  if (const auto page_size = GetLe<std::uint32_t>(&bytes_[12]); page_size != kPageSize) {
    return MakeError(Errc::kIncompatible, "{}: page size {}, this roam supports {}", name_,
                     page_size, kPageSize);
  }
  // Cheap early refusal of a truncated file; Walk checks the trailer fully.
  const std::size_t trailer = bytes_.size() - kTrailerSize;
  if (GetLe<std::uint32_t>(&bytes_[trailer]) != kTrailerMagic) {
    return Corrupt(trailer, "no trailer at the end (truncated or unfinished stream)");
  }
  return Ok();
}

Status PageStreamReader::Walk(const RunFn& fn) const {
  const std::byte* const p = bytes_.data();
  const std::size_t size = bytes_.size();
  std::size_t off = kFileHeaderSize;
  std::uint64_t next_vaddr = 0;  // lowest address the next record may start at
  std::uint64_t records = 0;
  std::uint64_t pages = 0;
  std::uint64_t chain = 0;
  for (;;) {
    if (size - off < 4) return Corrupt(off, "truncated: neither a record nor the trailer");
    const auto magic = GetLe<std::uint32_t>(p + off);
    if (magic == kTrailerMagic) break;
    if (magic != kRecordMagic) return Corrupt(off, "record {}: bad magic {:#x}", records, magic);
    if (size - off < kRecordHeaderSize) return Corrupt(off, "truncated record {} header", records);
    const auto vaddr = GetLe<std::uint64_t>(p + off + 4);
    const auto npages = GetLe<std::uint32_t>(p + off + 12);
    const auto reserved = GetLe<std::uint32_t>(p + off + 16);
    const auto stored = GetLe<std::uint64_t>(p + off + 20);
    if (reserved != 0) return Corrupt(off, "record {}: reserved field is {}", records, reserved);
    if (vaddr % kPageSize != 0) {
      return Corrupt(off, "record {}: vaddr {:#x} is not page-aligned", records, vaddr);
    }
    if (npages == 0 || npages > kMaxRecordPages) {
      return Corrupt(off, "record {}: {} pages (allowed 1..{})", records, npages, kMaxRecordPages);
    }
    const std::uint64_t length = std::uint64_t{npages} * kPageSize;
    if (vaddr < next_vaddr) {
      return Corrupt(off, "record {}: vaddr {:#x} is below the end of the previous record {:#x}",
                     records, vaddr, next_vaddr);
    }
    if (length > std::numeric_limits<std::uint64_t>::max() - vaddr) {
      return Corrupt(off, "record {}: run at {:#x} wraps the address space", records, vaddr);
    }
    if (size - off - kRecordHeaderSize < length) {
      return Corrupt(off, "record {}: truncated payload ({} pages, {} bytes left)", records, npages,
                     size - off - kRecordHeaderSize);
    }
    const std::span<const std::byte> payload(p + off + kRecordHeaderSize, length);
    if (const auto computed = RecordChecksum(p + off, payload); computed != stored) {
      return Corrupt(off, "record {} at {:#x}: checksum {:#x}, computed {:#x}", records, vaddr,
                     stored, computed);
    }
    ROAM_TRY(fn(vaddr, payload));
    chain = ChainChecksum(chain, stored);
    ++records;
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
  if (reserved != 0 || want_records != records || want_pages != pages || want_chain != chain) {
    return Corrupt(off,
                   "trailer does not match the stream (reserved {}, records {} of {}, pages {} "
                   "of {}, checksum {:#x} of {:#x})",
                   reserved, records, want_records, pages, want_pages, chain, want_chain);
  }
  return Ok();
}

Result<bool> PageStreamReader::ReadPage(std::uint64_t vaddr, std::span<std::byte> out4k) {
  ROAM_TRY(CheckPageRequest(vaddr, out4k));
  if (!index_) {
    std::vector<Run> runs;
    Status walked = Walk([&runs](std::uint64_t start, std::span<const std::byte> data) {
      runs.push_back({start, data});
      return Ok();
    });
    if (walked) {
      index_ = Result<std::vector<Run>>(std::move(runs));
    } else {
      index_ = Result<std::vector<Run>>(walked.error());  // a bad stream stays bad
    }
  }
  if (!index_->has_value()) return index_->error();
  const std::vector<Run>& runs = **index_;
  // The last run starting at or below vaddr is the only one that can hold it.
  auto it = std::upper_bound(runs.begin(), runs.end(), vaddr,
                             [](std::uint64_t v, const Run& run) { return v < run.vaddr; });
  if (it == runs.begin()) return false;
  --it;
  const std::uint64_t offset = vaddr - it->vaddr;
  if (offset >= it->pages.size()) return false;
  std::memcpy(out4k.data(), it->pages.data() + offset, kPageSize);
  return true;
}

class PageFileWriter final : public PageSink {
 public:
  PageFileWriter(UniqueFd fd, std::filesystem::path path)
      : fd_(std::move(fd)), path_(std::move(path)) {
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
    while (!pages.empty()) {
      const std::size_t length = std::min<std::size_t>(pages.size(), kMaxRecordPages * kPageSize);
      ROAM_TRY(Record(vaddr, pages.first(length)));
      vaddr += length;
      pages = pages.subspan(length);
    }
    next_vaddr_ = vaddr;
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
      ROAM_TRY(SyncFile(fd_.get(), path_));
      return fd_.Close(path_);
    }());
  }

 private:
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

  Status Record(std::uint64_t vaddr, std::span<const std::byte> payload) {
    std::array<std::byte, kRecordHeaderSize> header;
    PutLe(&header[0], kRecordMagic);
    PutLe(&header[4], vaddr);
    PutLe(&header[12], static_cast<std::uint32_t>(payload.size() / kPageSize));
    PutLe(&header[16], std::uint32_t{0});
    const std::uint64_t checksum = RecordChecksum(header.data(), payload);
    PutLe(&header[20], checksum);
    ROAM_TRY(Remember(Append(header)));
    ROAM_TRY(Remember(Append(payload)));
    chain_ = ChainChecksum(chain_, checksum);
    ++records_;
    pages_ += payload.size() / kPageSize;
    return Ok();
  }

  Status Append(std::span<const std::byte> bytes) {
    if (buffer_.size() + bytes.size() > kWriteBufferSize) ROAM_TRY(Flush());
    // Large payloads go straight to the file rather than through the buffer.
    if (bytes.size() >= kWriteBufferSize) return WriteAll(fd_.get(), bytes, path_);
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
  std::vector<std::byte> buffer_;
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

Result<std::unique_ptr<PageSink>> OpenPageFileWriter(const std::filesystem::path& path) {
  ROAM_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(path, O_WRONLY | O_CREAT | O_TRUNC, 0600));
  return std::make_unique<PageFileWriter>(std::move(fd), path);
}

Result<std::unique_ptr<PageSource>> OpenPageStream(std::span<const std::byte> bytes,
                                                   std::string name) {
  auto reader = std::make_unique<PageStreamReader>(bytes, std::move(name));
  ROAM_TRY(reader->CheckHeader());
  return reader;
}

Result<std::unique_ptr<PageSource>> OpenPageFileReader(const std::filesystem::path& path) {
  ROAM_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  auto reader = std::make_unique<PageStreamReader>(std::move(file), path.string());
  ROAM_TRY(reader->CheckHeader());
  return reader;
}

}  // namespace roam::ckpt
