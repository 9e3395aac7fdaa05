#include "core/ckpt/image/image_dir.h"

#include <sys/stat.h>
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "core/ckpt/image/page_stream.h"
#include "roam/base/check.h"
#include "tests/support/test_util.h"

namespace roam::ckpt {
namespace {

namespace fs = std::filesystem;
using roam::image::Fd;
using roam::image::Image;
using roam::image::Vma;

Image MinimalImage() {
  Image meta;
  meta.set_format_version(kImageFormatVersion);
  meta.mutable_compat()->set_kernel_release("6.18.0");
  meta.mutable_compat()->set_machine("x86_64");
  meta.mutable_compat()->add_mapped_files()->set_path("/usr/bin/cat");
  meta.set_pid(100);
  meta.set_exe_file_index(0);
  auto* thread = meta.add_threads();
  thread->set_tid(100);
  thread->mutable_x86()->set_rip(0x401000);
  thread->mutable_x86()->set_xstate(std::string(2696, '\x11'));
  auto* text = meta.add_vmas();
  text->set_start(0x400000);
  text->set_end(0x402000);
  text->set_kind(Vma::FILE_PRIVATE);
  text->set_file_index(0);
  auto* stack = meta.add_vmas();
  stack->set_start(0x7ffffffde000);
  stack->set_end(0x7ffffffff000);
  stack->set_kind(Vma::ANONYMOUS);
  stack->set_file_index(-1);
  auto* vsyscall = meta.add_vmas();
  vsyscall->set_start(0xffffffffff600000);
  vsyscall->set_end(0xffffffffff601000);
  vsyscall->set_kind(Vma::VSYSCALL);
  vsyscall->set_file_index(-1);
  auto* pipe = meta.add_fds();
  pipe->set_fd(3);
  pipe->set_kind(Fd::PIPE);
  pipe->set_pipe_data("unread");
  pipe->set_file_index(-1);
  meta.add_sigactions()->set_signo(64);
  return meta;
}

std::vector<std::byte> Bytes(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

// A meta.img whose header fields are given, over any payload.
std::vector<std::byte> Frame(std::string_view payload, std::uint32_t version,
                             std::uint64_t length) {
  std::string out("ROAMIMG\0", 8);
  const std::uint64_t sum = XXH3_64bits(payload.data(), payload.size());
  out.append(reinterpret_cast<const char*>(&version), 4);
  out.append(reinterpret_cast<const char*>(&length), 8);
  out.append(reinterpret_cast<const char*>(&sum), 8);
  return Bytes(out.append(payload));
}

void ExpectCorrupt(std::span<const std::byte> bytes, std::string_view reason) {
  const auto meta = DecodeImageMeta(bytes);
  ASSERT_FALSE(meta.has_value());
  EXPECT_EQ(meta.error().code(), Errc::kCorrupt) << meta.error().ToString();
  EXPECT_NE(meta.error().message().find(reason), std::string::npos) << meta.error().ToString();
}

mode_t ModeOf(const fs::path& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return st.st_mode & 07777;
}

TEST(ImageDirTest, WriteThenReadRoundTrips) {
  roam::testing::TempDir tmp;
  const fs::path dir = tmp.path() / "ckpt";
  const Image meta = MinimalImage();
  ASSERT_TRUE(WriteImage(dir, meta).has_value());
  EXPECT_EQ(ModeOf(dir), 0700u);
  EXPECT_EQ(ModeOf(MetaPath(dir)), 0600u);
  EXPECT_FALSE(fs::exists(dir / "meta.img.tmp"));
  EXPECT_EQ(PagesPath(dir), dir / "pages.img");
  auto read = ReadImageMeta(dir);
  ASSERT_TRUE(read.has_value()) << read.error().ToString();
  EXPECT_EQ(read->SerializeAsString(), meta.SerializeAsString());
}

TEST(ImageDirTest, EmptyDirIsTakenOverAndNonEmptyRefused) {
  roam::testing::TempDir tmp;
  const fs::path dir = tmp.path() / "ckpt";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_TRUE(WriteImage(dir, MinimalImage()).has_value());
  EXPECT_EQ(ModeOf(dir), 0700u);
  const auto again = WriteImage(dir, MinimalImage());
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Errc::kAlreadyExists);
  EXPECT_EQ(WriteImage(MetaPath(dir), MinimalImage()).error().code(), Errc::kAlreadyExists);
}

TEST(ImageDirTest, WriteRefusesBadMetadata) {
  roam::testing::TempDir tmp;
  Image meta = MinimalImage();
  meta.set_format_version(2);
  EXPECT_EQ(WriteImage(tmp.path() / "a", meta).error().code(), Errc::kInvalidArgument);
  meta = MinimalImage();
  meta.clear_threads();
  EXPECT_EQ(WriteImage(tmp.path() / "b", meta).error().code(), Errc::kCorrupt);
  EXPECT_FALSE(fs::exists(tmp.path() / "b"));
}

TEST(ImageDirTest, PathsNeedNotBeUtf8) {
  roam::testing::TempDir tmp;
  Image meta = MinimalImage();
  meta.mutable_fds(0)->set_path("/tmp/caf\xe9");  // Latin-1: a valid Linux path
  ASSERT_TRUE(WriteImage(tmp.path() / "c", meta).has_value());
  auto back = ReadImageMeta(tmp.path() / "c");
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(back->fds(0).path(), "/tmp/caf\xe9");
}

TEST(ImageDirTest, MetaGoesIntoAPreparedDirectoryAfterThePages) {
  roam::testing::TempDir tmp;
  const fs::path dir = tmp.path() / "img";
  ASSERT_TRUE(PrepareImageDir(dir).has_value());
  EXPECT_EQ(ModeOf(dir), 0700u);
  { std::ofstream(PagesPath(dir)) << "pages"; }
  ASSERT_TRUE(WriteImageMeta(dir, MinimalImage()).has_value());
  EXPECT_TRUE(ReadImageMeta(dir).has_value());
  EXPECT_EQ(PrepareImageDir(dir).error().code(), Errc::kAlreadyExists);
}

TEST(ImageDirTest, ReadErrorsNameTheFile) {
  roam::testing::TempDir tmp;
  EXPECT_EQ(ReadImageMeta(tmp.path()).error().code(), Errc::kNotFound);
  std::ofstream(MetaPath(tmp.path())) << "junk";
  const auto meta = ReadImageMeta(tmp.path());
  ASSERT_FALSE(meta.has_value());
  EXPECT_EQ(meta.error().code(), Errc::kCorrupt);
  EXPECT_NE(meta.error().message().find(MetaPath(tmp.path()).string()), std::string::npos);
}

TEST(ImageMetaDecodeTest, TruncationAndFlipsAreDetected) {
  const auto good = Bytes(EncodeImageMeta(MinimalImage()));
  ASSERT_TRUE(DecodeImageMeta(good).has_value());
  for (std::size_t cut = 0; cut < good.size(); ++cut) {
    ASSERT_FALSE(DecodeImageMeta(std::span(good).first(cut)).has_value()) << cut;
  }
  for (std::size_t i = 0; i < good.size(); ++i) {
    auto bad = good;
    bad[i] ^= std::byte{0x01};
    const auto meta = DecodeImageMeta(bad);
    ASSERT_FALSE(meta.has_value()) << i;
    EXPECT_EQ(meta.error().code(), i >= 8 && i < 12 ? Errc::kIncompatible : Errc::kCorrupt) << i;
  }
  ExpectCorrupt({}, "0 bytes, shorter than the 28-byte header");
}

TEST(ImageMetaDecodeTest, HeaderLiesAreRefused) {
  const std::string payload = MinimalImage().SerializeAsString();
  const auto newer = DecodeImageMeta(Frame(payload, 2, payload.size()));
  ASSERT_FALSE(newer.has_value());
  EXPECT_EQ(newer.error().code(), Errc::kIncompatible);
  EXPECT_EQ(newer.error().message(), "image format version 2, this roam reads 1");
  ExpectCorrupt(Frame(payload, 1, payload.size() + 1), "header says");
  ExpectCorrupt(Frame(payload, 1, payload.size() - 1), "header says");
  ExpectCorrupt(Frame(payload, 1, std::uint64_t{1} << 40), "exceeds the limit");
  ExpectCorrupt(Frame("\xff\xff\xff\xff\xff", 1, 5), "not a valid roam.image.Image");
  Image v2 = MinimalImage();
  v2.set_format_version(2);
  const std::string v2_payload = v2.SerializeAsString();
  ExpectCorrupt(Frame(v2_payload, 1, v2_payload.size()), "metadata says format version 2");
  Image invalid = MinimalImage();
  invalid.clear_threads();
  const std::string invalid_payload = invalid.SerializeAsString();
  ExpectCorrupt(Frame(invalid_payload, 1, invalid_payload.size()), "no threads");
}

TEST(ValidateImageMetaTest, RejectsEachViolation) {
  ASSERT_TRUE(ValidateImageMeta(MinimalImage()).has_value());
  const std::vector<std::pair<std::string, std::function<void(Image&)>>> cases = {
      {"no threads", [](Image& m) { m.clear_threads(); }},
      {"no x86 register record", [](Image& m) { m.mutable_threads(0)->clear_x86(); }},
      {"xstate of 0 bytes", [](Image& m) { m.mutable_threads(0)->mutable_x86()->clear_xstate(); }},
      {"xstate of 16385 bytes",
       [](Image& m) { m.mutable_threads(0)->mutable_x86()->set_xstate(std::string(16385, 'x')); }},
      {"tid must be positive", [](Image& m) { m.mutable_threads(0)->set_tid(0); }},
      {"tid must be positive", [](Image& m) { m.mutable_threads(0)->set_tid(-5); }},
      {"duplicate tid", [](Image& m) { m.add_threads()->CopyFrom(m.threads(0)); }},
      {"pending siginfo of 3 bytes",
       [](Image& m) { m.mutable_threads(0)->add_pending_signals("abc"); }},
      {"unsorted or overlapping", [](Image& m) { m.mutable_vmas()->SwapElements(0, 1); }},
      {"unsorted or overlapping", [](Image& m) { m.mutable_vmas(1)->set_start(0x401000); }},
      {"not page-aligned", [](Image& m) { m.mutable_vmas(0)->set_end(0x401800); }},
      {"empty or inverted", [](Image& m) { m.mutable_vmas(0)->set_end(0x400000); }},
      {"beyond user space", [](Image& m) { m.mutable_vmas(1)->set_end(0x800000001000); }},
      {"vsyscall not at", [](Image& m) { m.mutable_vmas(2)->set_end(0xffffffffff602000); }},
      {"unknown kind 0", [](Image& m) { m.mutable_vmas(0)->set_kind(Vma::KIND_UNSPECIFIED); }},
      {"unknown kind 99",
       [](Image& m) { m.mutable_vmas(0)->set_kind(static_cast<Vma::Kind>(99)); }},
      {"file_index 1 out of range", [](Image& m) { m.mutable_vmas(0)->set_file_index(1); }},
      {"file_index -2 out of range", [](Image& m) { m.mutable_fds(0)->set_file_index(-2); }},
      {"exe: file_index 3", [](Image& m) { m.set_exe_file_index(3); }},
      {"negative", [](Image& m) { m.mutable_fds(0)->set_fd(-1); }},
      {"fd 3: duplicate", [](Image& m) { m.add_fds()->CopyFrom(m.fds(0)); }},
      {"unknown kind 0", [](Image& m) { m.mutable_fds(0)->set_kind(Fd::KIND_UNSPECIFIED); }},
      {"not a pipe's read end", [](Image& m) { m.mutable_fds(0)->set_kind(Fd::REGULAR); }},
      {"not a pipe's read end", [](Image& m) { m.mutable_fds(0)->set_pipe_write_end(true); }},
      {"1048577 bytes of pipe data",
       [](Image& m) { m.mutable_fds(0)->set_pipe_data(std::string((1 << 20) + 1, 'p')); }},
      {"signal 0", [](Image& m) { m.add_sigactions()->set_signo(0); }},
      {"signal 65", [](Image& m) { m.add_sigactions()->set_signo(65); }},
      {"no compatibility record", [](Image& m) { m.clear_compat(); }},
      {"no compatibility record", [](Image& m) { m.mutable_compat()->clear_kernel_release(); }},
      {"no compatibility record", [](Image& m) { m.mutable_compat()->clear_machine(); }},
  };
  for (const auto& [reason, mutate] : cases) {
    Image meta = MinimalImage();
    mutate(meta);
    const Status valid = ValidateImageMeta(meta);
    ASSERT_FALSE(valid.has_value()) << reason;
    EXPECT_EQ(valid.error().code(), Errc::kCorrupt) << reason;
    EXPECT_NE(valid.error().message().find(reason), std::string::npos)
        << reason << " vs " << valid.error().ToString();
  }
}

// The fuzz target's seed corpus (tests/ckpt/image/corpus): valid_* files
// decode, the others are refused. ROAM_WRITE_IMAGE_CORPUS=<dir> rewrites them.
// A page file written by the library's writer, as bytes.
std::string PageFile(const std::vector<std::pair<std::uint64_t, std::size_t>>& runs) {
  roam::testing::TempDir tmp;
  const fs::path pages = tmp.path() / "pages.img";
  auto sink = OpenPageFileWriter(pages);
  ROAM_CHECK_OK(sink);
  for (const auto& [vaddr, npages] : runs) {
    std::vector<std::byte> data(npages * kPageSize);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7);
    ROAM_CHECK_OK((*sink)->Add(vaddr, data));
  }
  ROAM_CHECK_OK((*sink)->Finish());
  std::ifstream in(pages, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::pair<std::string, std::vector<std::byte>>> CorpusSeeds() {
  const std::string stream = PageFile({{0x1000, 1}, {0x7ffd0000, 2}});
  auto checksum_flipped = Bytes(stream);
  checksum_flipped[16 + 20] ^= std::byte{1};  // refused at open (header chain)
  auto payload_flipped = Bytes(stream);
  payload_flipped[16 + 28 + 100] ^= std::byte{1};  // opens; refused when read
  const auto meta = Bytes(EncodeImageMeta(MinimalImage()));
  auto meta_v2 = meta;
  meta_v2[8] = std::byte{2};
  return {{"valid_pages", Bytes(stream)},
          {"valid_pages_empty", Bytes(PageFile({}))},
          {"pages_truncated", Bytes(stream.substr(0, 5000))},
          {"pages_bad_checksum", checksum_flipped},
          {"pages_bad_payload", payload_flipped},
          {"valid_meta", meta},
          {"meta_payload_only", Bytes(MinimalImage().SerializeAsString())},
          {"meta_version_2", meta_v2},
          {"meta_truncated", std::vector<std::byte>(meta.begin(), meta.end() - 9)},
          {"empty", {}}};
}

TEST(ImageCorpusTest, SeedsAreWhatTheirNamesSay) {
  const char* out = std::getenv("ROAM_WRITE_IMAGE_CORPUS");
  const fs::path dir = out != nullptr ? out : ROAM_IMAGE_CORPUS_DIR;
  const bool write = out != nullptr;
  for (const auto& [name, bytes] : CorpusSeeds()) {
    if (write) {
      std::ofstream(dir / name, std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()),
                 static_cast<std::streamsize>(bytes.size()));
    }
    std::ifstream in(dir / name, std::ios::binary);
    ASSERT_TRUE(in.good()) << name;
    const std::string stored((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
    EXPECT_TRUE(Bytes(stored) == bytes) << name << " is stale: regenerate the corpus";
    bool valid = DecodeImageMeta(bytes).has_value();
    if (auto source = OpenPageStream(bytes)) {
      valid = valid || (*source)->ForEach([](auto, auto) { return Ok(); }).has_value();
    }
    EXPECT_EQ(valid, name.starts_with("valid_")) << name;
  }
}

}  // namespace
}  // namespace roam::ckpt
