#include "core/ckpt/image/image_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <system_error>

#include "core/ckpt/image/byte_order.h"
#include "core/ckpt/image/file_io.h"

namespace roam::ckpt {
namespace {

namespace fs = std::filesystem;
using roam::image::Fd;
using roam::image::Image;
using roam::image::Vma;

constexpr char kMetaMagic[8] = {'R', 'O', 'A', 'M', 'I', 'M', 'G', '\0'};
constexpr std::size_t kMetaHeaderSize = 28;

// x86-64 user space ends below 2^47 (4-level paging; roam does not restore
// 5-level-paging processes that map above it). The vsyscall page is the one
// kernel-fixed mapping above it that /proc/PID/maps shows.
constexpr std::uint64_t kUserSpaceEnd = 0x0000800000000000;
constexpr std::uint64_t kVsyscallStart = 0xffffffffff600000;
constexpr std::uint64_t kPage = 4096;
constexpr std::size_t kMaxXstateBytes = 16 << 10;
constexpr std::size_t kMaxPipeData = 1 << 20;  // pipes buffer at most 1 MiB by default
constexpr std::size_t kSiginfoBytes = 128;
constexpr int kMaxSignal = 64;

template <typename... Args>
Error Invalid(fmt::format_string<Args...> format, Args&&... args) {
  return MakeError(Errc::kCorrupt, format, std::forward<Args>(args)...);
}

Status CheckFileIndex(std::int32_t index, const Image& meta, std::string_view what) {
  if (index == -1 || (index >= 0 && index < meta.compat().mapped_files_size())) return Ok();
  return Invalid("{}: file_index {} out of range (-1 or 0..{})", what, index,
                 meta.compat().mapped_files_size() - 1);
}

Status CheckSiginfos(const google::protobuf::RepeatedPtrField<std::string>& infos,
                     std::string_view what) {
  for (const std::string& info : infos) {
    if (info.size() != kSiginfoBytes) {
      return Invalid("{}: pending siginfo of {} bytes, expected {}", what, info.size(),
                     kSiginfoBytes);
    }
  }
  return Ok();
}

Status ValidateThreads(const Image& meta) {
  if (meta.threads_size() == 0) return Invalid("image has no threads");
  std::set<std::int32_t> tids;
  for (int i = 0; i < meta.threads_size(); ++i) {
    const auto& thread = meta.threads(i);
    const std::string what = fmt::format("thread {} (tid {})", i, thread.tid());
    if (thread.tid() <= 0) return Invalid("{}: tid must be positive", what);
    if (!tids.insert(thread.tid()).second) return Invalid("{}: duplicate tid", what);
    if (!thread.has_x86()) return Invalid("{}: no x86 register record", what);
    const std::size_t xstate = thread.x86().xstate().size();
    if (xstate == 0 || xstate > kMaxXstateBytes) {
      return Invalid("{}: xstate of {} bytes (allowed 1..{})", what, xstate, kMaxXstateBytes);
    }
    ROAM_TRY(CheckSiginfos(thread.pending_signals(), what));
  }
  return Ok();
}

Status ValidateVmas(const Image& meta) {
  std::uint64_t prev_end = 0;
  for (int i = 0; i < meta.vmas_size(); ++i) {
    const Vma& vma = meta.vmas(i);
    const std::string what = fmt::format("vma {} [{:#x}, {:#x})", i, vma.start(), vma.end());
    if (vma.start() >= vma.end()) return Invalid("{}: empty or inverted", what);
    if (vma.start() % kPage != 0 || vma.end() % kPage != 0) {
      return Invalid("{}: not page-aligned", what);
    }
    if (vma.start() < prev_end) return Invalid("{}: unsorted or overlapping", what);
    prev_end = vma.end();
    if (!Vma::Kind_IsValid(vma.kind()) || vma.kind() == Vma::KIND_UNSPECIFIED) {
      return Invalid("{}: unknown kind {}", what, static_cast<int>(vma.kind()));
    }
    if (vma.kind() == Vma::VSYSCALL) {
      if (vma.start() != kVsyscallStart || vma.end() != kVsyscallStart + kPage) {
        return Invalid("{}: vsyscall not at {:#x}", what, kVsyscallStart);
      }
    } else if (vma.end() > kUserSpaceEnd) {
      return Invalid("{}: beyond user space ({:#x})", what, kUserSpaceEnd);
    }
    ROAM_TRY(CheckFileIndex(vma.file_index(), meta, what));
  }
  return Ok();
}

Status ValidateFds(const Image& meta) {
  std::set<std::int32_t> fds;
  for (const Fd& fd : meta.fds()) {
    const std::string what = fmt::format("fd {}", fd.fd());
    if (fd.fd() < 0) return Invalid("{}: negative", what);
    if (!fds.insert(fd.fd()).second) return Invalid("{}: duplicate", what);
    if (!Fd::Kind_IsValid(fd.kind()) || fd.kind() == Fd::KIND_UNSPECIFIED) {
      return Invalid("{}: unknown kind {}", what, static_cast<int>(fd.kind()));
    }
    if (!fd.pipe_data().empty() && (fd.kind() != Fd::PIPE || fd.pipe_write_end())) {
      return Invalid("{}: pipe data on a record that is not a pipe's read end", what);
    }
    if (fd.pipe_data().size() > kMaxPipeData) {
      return Invalid("{}: {} bytes of pipe data (at most {})", what, fd.pipe_data().size(),
                     kMaxPipeData);
    }
    ROAM_TRY(CheckFileIndex(fd.file_index(), meta, what));
  }
  return Ok();
}

// The meta.img header for a payload.
std::string Header(std::string_view payload) {
  std::string header(kMetaHeaderSize, '\0');
  auto* p = reinterpret_cast<std::byte*>(header.data());
  std::memcpy(p, kMetaMagic, sizeof kMetaMagic);
  PutLe(p + 8, kImageFormatVersion);
  PutLe(p + 12, std::uint64_t{payload.size()});
  PutLe(p + 20, std::uint64_t{XXH3_64bits(payload.data(), payload.size())});
  return header;
}

Status WriteFileDurably(const fs::path& path, std::string_view a, std::string_view b) {
  const fs::path tmp = fs::path(path).concat(".tmp");
  Status written = [&]() -> Status {
    ROAM_ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600));
    ROAM_TRY(WriteAll(fd.get(), std::as_bytes(std::span(a)), tmp));
    ROAM_TRY(WriteAll(fd.get(), std::as_bytes(std::span(b)), tmp));
    ROAM_TRY(SyncFile(fd.get(), tmp));
    ROAM_TRY(fd.Close(tmp));
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      return ErrnoError(errno, "rename {} to {}", tmp.string(), path.string());
    }
    // The rename is durable only once the directory is.
    ROAM_ASSIGN_OR_RETURN(UniqueFd dir, OpenFile(path.parent_path(), O_RDONLY | O_DIRECTORY));
    return SyncFile(dir.get(), path.parent_path());
  }();
  if (!written) ::unlink(tmp.c_str());  // best effort; the error to report is the first one
  return written;
}

}  // namespace

fs::path MetaPath(const fs::path& dir) { return dir / "meta.img"; }
fs::path PagesPath(const fs::path& dir) { return dir / "pages.img"; }

std::string EncodeImageMeta(const Image& meta) {
  const std::string payload = meta.SerializeAsString();
  return Header(payload) + payload;
}

Result<Image> DecodeImageMeta(std::span<const std::byte> bytes) {
  if (bytes.size() < kMetaHeaderSize) {
    return Invalid("{} bytes, shorter than the {}-byte header", bytes.size(), kMetaHeaderSize);
  }
  const std::byte* p = bytes.data();
  if (std::memcmp(p, kMetaMagic, sizeof kMetaMagic) != 0) {
    return Invalid("not a roam image (bad magic)");
  }
  if (const auto version = GetLe<std::uint32_t>(p + 8); version != kImageFormatVersion) {
    return MakeError(Errc::kIncompatible, "image format version {}, this roam reads {}", version,
                     kImageFormatVersion);
  }
  const auto length = GetLe<std::uint64_t>(p + 12);
  const auto checksum = GetLe<std::uint64_t>(p + 20);
  if (length > kMaxImageMetaBytes) {
    return Invalid("metadata of {} bytes exceeds the limit of {}", length, kMaxImageMetaBytes);
  }
  const std::size_t have = bytes.size() - kMetaHeaderSize;
  if (have != length) return Invalid("header says {} metadata bytes, found {}", length, have);
  const std::byte* payload = p + kMetaHeaderSize;
  if (const auto computed = XXH3_64bits(payload, length); computed != checksum) {
    return Invalid("metadata checksum {:#x}, computed {:#x}", checksum, computed);
  }
  Image meta;
  if (!meta.ParseFromArray(payload, static_cast<int>(length))) {
    return Invalid("metadata is not a valid roam.image.Image");
  }
  if (meta.format_version() != kImageFormatVersion) {
    return Invalid("metadata says format version {}, header {}", meta.format_version(),
                   kImageFormatVersion);
  }
  ROAM_TRY(ValidateImageMeta(meta));
  return meta;
}

// Creates dir 0700, or accepts an empty existing directory and makes it 0700.
Status PrepareImageDir(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0) {
    if (errno != EEXIST) return ErrnoError(errno, "mkdir {}", dir.string());
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) return ErrnoError(errno, "stat {}", dir.string());
    if (!S_ISDIR(st.st_mode)) {
      return MakeError(Errc::kAlreadyExists, "{} exists and is not a directory", dir.string());
    }
    std::error_code ec;
    const bool empty = fs::is_empty(dir, ec);
    if (ec) return ErrnoError(ec.value(), "read directory {}", dir.string());
    if (!empty) return MakeError(Errc::kAlreadyExists, "{} exists and is not empty", dir.string());
  }
  // mkdir's mode passes through the umask, and an existing directory keeps
  // its own: set 0700 explicitly either way.
  if (::chmod(dir.c_str(), 0700) != 0) return ErrnoError(errno, "chmod {}", dir.string());
  return Ok();
}

namespace {

// The payload of meta.img, if `meta` may be written.
Result<std::string> CheckedPayload(const Image& meta) {
  if (meta.format_version() != kImageFormatVersion) {
    return MakeError(Errc::kInvalidArgument, "image format version {}, expected {}",
                     meta.format_version(), kImageFormatVersion);
  }
  if (meta.ByteSizeLong() > kMaxImageMetaBytes) {
    return MakeError(Errc::kInvalidArgument, "metadata of {} bytes exceeds the limit of {}",
                     meta.ByteSizeLong(), kMaxImageMetaBytes);
  }
  if (Status valid = ValidateImageMeta(meta); !valid) {
    return valid.error().WithContext("refusing to write an invalid image");
  }
  std::string payload = meta.SerializeAsString();
  // Never write an image that cannot be read back (the cost is one parse of
  // a few KiB).
  if (Image check; !check.ParseFromString(payload)) {
    return MakeError(Errc::kInvalidArgument, "metadata would not read back");
  }
  return payload;
}

Status WriteMetaFile(const fs::path& dir, const std::string& payload) {
  ROAM_TRY(WriteFileDurably(MetaPath(dir), Header(payload), payload));
  // A new directory's own entry is durable only once its parent is synced.
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  ROAM_ASSIGN_OR_RETURN(UniqueFd parent_fd, OpenFile(parent, O_RDONLY | O_DIRECTORY));
  return SyncFile(parent_fd.get(), parent);
}

}  // namespace

Status WriteImageMeta(const fs::path& dir, const Image& meta) {
  ROAM_ASSIGN_OR_RETURN(const std::string payload, CheckedPayload(meta));
  return WriteMetaFile(dir, payload);
}

Status WriteImage(const fs::path& dir, const Image& meta) {
  // Validate before creating anything.
  ROAM_ASSIGN_OR_RETURN(const std::string payload, CheckedPayload(meta));
  ROAM_TRY(PrepareImageDir(dir));
  return WriteMetaFile(dir, payload);
}

Result<Image> ReadImageMeta(const fs::path& dir) {
  const fs::path path = MetaPath(dir);
  ROAM_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  Result<Image> meta = DecodeImageMeta(file.bytes());
  if (!meta) return meta.error().WithContext(path.string());
  return meta;
}

Status ValidateImageMeta(const Image& meta) {
  if (!meta.has_compat() || meta.compat().kernel_release().empty() ||
      meta.compat().machine().empty()) {
    return Invalid("no compatibility record (kernel release and machine)");
  }
  ROAM_TRY(ValidateThreads(meta));
  ROAM_TRY(ValidateVmas(meta));
  ROAM_TRY(ValidateFds(meta));
  for (const auto& action : meta.sigactions()) {
    if (action.signo() < 1 || action.signo() > kMaxSignal) {
      return Invalid("sigaction for signal {} (allowed 1..{})", action.signo(), kMaxSignal);
    }
  }
  ROAM_TRY(CheckSiginfos(meta.shared_pending_signals(), "process"));
  return CheckFileIndex(meta.exe_file_index(), meta, "exe");
}

}  // namespace roam::ckpt
