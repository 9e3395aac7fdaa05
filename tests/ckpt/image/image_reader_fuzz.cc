// The image readers on hostile bytes: the page stream parser and the
// meta.img decoder never crash, errors stay one line, a stream that opened
// fails later only for a damaged payload, ReadPage agrees with ForEach about
// what a stream holds, and accepted metadata is valid and
// survives re-encoding. Checksums stop random mutations early, so each input
// is also decoded as a meta.img payload under a correct header: that reaches
// the protobuf parser and ValidateImageMeta.
#include <xxhash.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "core/ckpt/image/image_dir.h"
#include "core/ckpt/image/page_stream.h"
#include "roam/base/check.h"

namespace {

using roam::Ok;
using roam::ckpt::kPageSize;

void CheckOneLine(const roam::Error& error) {
  ROAM_CHECK(error.ToString().find('\n') == std::string::npos, "multi-line error");
}

void FuzzPageStream(std::span<const std::byte> bytes) {
  auto source = roam::ckpt::OpenPageStream(bytes);
  if (!source) return CheckOneLine(source.error());
  struct Probe {
    std::uint64_t vaddr;
    std::array<std::byte, kPageSize> last_page;
  };
  std::vector<Probe> probes;  // the last page of the first few runs
  std::uint64_t next = 0;     // end of the last run seen
  const roam::Status walked =
      (*source)->ForEach([&](std::uint64_t vaddr, std::span<const std::byte> pages) {
        ROAM_CHECK(vaddr % kPageSize == 0 && !pages.empty() && pages.size() % kPageSize == 0);
        ROAM_CHECK(pages.size() <= roam::ckpt::kMaxRecordPages * kPageSize && vaddr >= next);
        next = vaddr + pages.size();
        if (probes.size() < 4) {
          Probe& probe = probes.emplace_back();
          probe.vaddr = vaddr + pages.size() - kPageSize;
          std::memcpy(probe.last_page.data(), pages.data() + pages.size() - kPageSize, kPageSize);
        }
        return Ok();
      });
  // The structure was checked at open: only a payload can be refused now,
  // and a damaged payload spoils its own record only.
  if (!walked) {
    CheckOneLine(walked.error());
    ROAM_CHECK(walked.error().code() == roam::Errc::kCorrupt &&
                   walked.error().message().find("checksum") != std::string::npos,
               "ForEach refused an opened stream for its structure");
    const auto again = (*source)->ForEach([](auto, auto) { return Ok(); });
    ROAM_CHECK(!again && again.error() == walked.error(), "a refused stream became good");
  }
  std::array<std::byte, kPageSize> page;
  for (const Probe& probe : probes) {
    const auto hit = (*source)->ReadPage(probe.vaddr, page);
    ROAM_CHECK(hit && *hit && page == probe.last_page, "ReadPage disagrees at {:#x}", probe.vaddr);
  }
  const auto beyond = (*source)->ReadPage(next, page);
  if (!beyond) CheckOneLine(beyond.error());
  if (walked) ROAM_CHECK(beyond.has_value(), "ReadPage failed on a good stream");
}

void FuzzImageMeta(std::span<const std::byte> bytes) {
  const auto meta = roam::ckpt::DecodeImageMeta(bytes);
  if (!meta) return CheckOneLine(meta.error());
  ROAM_CHECK_OK(roam::ckpt::ValidateImageMeta(*meta));
  const std::string again = roam::ckpt::EncodeImageMeta(*meta);
  const auto decoded = roam::ckpt::DecodeImageMeta(std::as_bytes(std::span(again)));
  ROAM_CHECK(decoded && decoded->SerializeAsString() == meta->SerializeAsString(),
             "re-encoding changed the image");
}

// `payload` framed as a version-1 meta.img with a correct checksum.
std::string Framed(std::span<const std::byte> payload) {
  std::string out("ROAMIMG\0", 8);
  const std::uint32_t version = roam::ckpt::kImageFormatVersion;
  const std::uint64_t length = payload.size();
  const std::uint64_t sum = XXH3_64bits(payload.data(), payload.size());
  out.append(reinterpret_cast<const char*>(&version), sizeof version);
  out.append(reinterpret_cast<const char*>(&length), sizeof length);
  out.append(reinterpret_cast<const char*>(&sum), sizeof sum);
  out.append(reinterpret_cast<const char*>(payload.data()), payload.size());
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  FuzzPageStream(bytes);
  FuzzImageMeta(bytes);
  const std::string framed = Framed(bytes);
  FuzzImageMeta(std::as_bytes(std::span(framed)));
  return 0;
}
