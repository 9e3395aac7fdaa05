#include "core/ckpt/procfs/maps.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <gtest/gtest.h>

namespace roam::ckpt::procfs {
namespace {

// Copied from /proc/PID/maps of cat(1) on the development machine.
constexpr std::string_view kRealMaps =
    "5578a9496000-5578a949b000 r-xp 00002000 fe:00 247134                     /usr/bin/cat\n"
    "5578b2b9a000-5578b2bbb000 rw-p 00000000 00:00 0                          [heap]\n"
    "7f638bbf8000-7f638bc1a000 rw-p 00000000 00:00 0 \n"
    "7f638be60000-7f638be67000 r--s 00000000 fe:00 332280                     "
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache\n"
    "7f638be6a000-7f638be6e000 r--p 00000000 00:00 0                          [vvar]\n"
    "7f638be6e000-7f638be70000 r--p 00000000 00:00 0                          [vvar_vclock]\n"
    "7f2448099000-7f244809b000 r-xp 00000000 00:00 0                          [vdso]\n"
    "7ffda8ab5000-7ffda8ad6000 rw-p 00000000 00:00 0                          [stack]\n"
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

TEST(MapsTest, ParsesRealLines) {
  auto vmas = ParseMaps(kRealMaps);
  ASSERT_TRUE(vmas.has_value()) << vmas.error().ToString();
  ASSERT_EQ(vmas->size(), 9u);
  const Vma& text = (*vmas)[0];
  EXPECT_EQ(text.start, 0x5578a9496000u);
  EXPECT_EQ(text.end, 0x5578a949b000u);
  EXPECT_TRUE(text.read);
  EXPECT_FALSE(text.write);
  EXPECT_TRUE(text.exec);
  EXPECT_FALSE(text.shared);
  EXPECT_EQ(text.offset, 0x2000u);
  EXPECT_EQ(text.dev_major, 0xfeu);
  EXPECT_EQ(text.dev_minor, 0u);
  EXPECT_EQ(text.inode, 247134u);
  EXPECT_EQ(text.path, "/usr/bin/cat");
  EXPECT_FALSE(text.deleted);
  EXPECT_EQ((*vmas)[1].path, "[heap]");
  EXPECT_EQ((*vmas)[2].path, "");  // anonymous: the line ends in the padding space
  EXPECT_TRUE((*vmas)[3].shared);
  EXPECT_EQ((*vmas)[5].path, "[vvar_vclock]");
  EXPECT_EQ((*vmas)[7].path, "[stack]");
  EXPECT_EQ((*vmas)[7].size(), 0x21000u);
  EXPECT_EQ((*vmas)[8].start, 0xffffffffff600000u);
  EXPECT_FALSE((*vmas)[8].read);
}

TEST(MapsTest, PathsWithSpacesDeletedFilesAndNamedAnonymousMemory) {
  auto vmas = ParseMaps(
      "7f0000000000-7f0000001000 rw-s 00000000 00:01 1234   /tmp/my data file (deleted)\n"
      "7f0000001000-7f0000002000 rw-s 00000000 00:01 1035   /memfd:my mem (deleted)\n"
      "7f0000002000-7f0000003000 rw-p 00000000 00:00 0      [anon:glibc malloc]\n"
      "7f0000003000-7f0000004000 r--p 00001000 103:05 77    /opt/a b/lib.so\n");
  ASSERT_TRUE(vmas.has_value()) << vmas.error().ToString();
  ASSERT_EQ(vmas->size(), 4u);
  EXPECT_EQ((*vmas)[0].path, "/tmp/my data file");
  EXPECT_TRUE((*vmas)[0].deleted);
  EXPECT_EQ((*vmas)[1].path, "/memfd:my mem");
  EXPECT_TRUE((*vmas)[1].deleted);
  EXPECT_EQ((*vmas)[2].path, "[anon:glibc malloc]");
  EXPECT_FALSE((*vmas)[2].deleted);
  EXPECT_EQ((*vmas)[3].path, "/opt/a b/lib.so");
  EXPECT_EQ((*vmas)[3].dev_major, 0x103u);
  EXPECT_EQ((*vmas)[3].dev_minor, 5u);
}

TEST(MapsTest, SpecialMappingsByName) {
  EXPECT_EQ(SpecialOf("[vdso]"), Special::kVdso);
  EXPECT_EQ(SpecialOf("[vvar]"), Special::kVvar);
  EXPECT_EQ(SpecialOf("[vvar_vclock]"), Special::kVvarVclock);
  EXPECT_EQ(SpecialOf("[vsyscall]"), Special::kVsyscall);
  for (const char* other : {"", "[heap]", "[stack]", "/lib/vdso", "[vdso] (deleted)", "[anon:x]"}) {
    EXPECT_EQ(SpecialOf(other), Special::kNone) << other;
  }
  EXPECT_TRUE(InVdsoBlock(Special::kVvarVclock));
  EXPECT_FALSE(InVdsoBlock(Special::kVsyscall));
  EXPECT_FALSE(InVdsoBlock(Special::kNone));
}

TEST(MapsTest, EmptyTextIsNoVmas) {
  auto vmas = ParseMaps("");
  ASSERT_TRUE(vmas.has_value());
  EXPECT_TRUE(vmas->empty());
}

TEST(MapsTest, MalformedLinesAreCorruptWithTheirLineNumber) {
  const std::string good = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n";
  for (const std::string_view bad : {
           "garbage",
           "7f0000001000-7f0000000000 rw-p 00000000 00:00 0",  // end before start
           "7f0000000000-7f0000001000 rwzp 00000000 00:00 0",
           "7f0000000000-7f0000001000 rw-p 0000zz00 00:00 0",
           "7f0000000000-7f0000001000 rw-p 00000000 0000 0",
           "7f0000000000-7f0000001000 rw-p 00000000 00:00",
       }) {
    auto vmas = ParseMaps(good + good + std::string(bad) + "\n");
    ASSERT_FALSE(vmas.has_value()) << bad;
    EXPECT_EQ(vmas.error().code(), Errc::kCorrupt);
    EXPECT_NE(vmas.error().message().find("line 3"), std::string::npos) << vmas.error().ToString();
  }
}

TEST(MapsTest, ReadMapsOfThisProcessFindsTheStackAndTheTestBinary) {
  auto vmas = ReadMaps(getpid());
  ASSERT_TRUE(vmas.has_value()) << vmas.error().ToString();
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe");
  const auto has = [&](std::string_view path) {
    return std::any_of(vmas->begin(), vmas->end(), [&](const Vma& v) { return v.path == path; });
  };
  EXPECT_TRUE(has("[stack]"));
  EXPECT_TRUE(has(exe)) << exe;
  const int local = 0;
  const auto addr = reinterpret_cast<uint64_t>(&local);
  EXPECT_TRUE(std::any_of(vmas->begin(), vmas->end(), [&](const Vma& v) {
    return v.path == "[stack]" && v.start <= addr && addr < v.end && v.read && v.write;
  }));
}

}  // namespace
}  // namespace roam::ckpt::procfs
