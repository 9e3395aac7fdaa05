#include "core/ckpt/file_identity.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace roam::ckpt {
namespace {

bool ReadAt(int fd, void* out, std::size_t size, off_t offset) {
  return pread(fd, out, size, offset) == static_cast<ssize_t>(size);
}

std::string HexOf(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

}  // namespace

std::string ReadBuildId(int fd) {
  Elf64_Ehdr ehdr{};
  if (!ReadAt(fd, &ehdr, sizeof(ehdr), 0) || std::memcmp(ehdr.e_ident, ELFMAG, SELFMAG) != 0 ||
      ehdr.e_ident[EI_CLASS] != ELFCLASS64 || ehdr.e_phentsize != sizeof(Elf64_Phdr) ||
      ehdr.e_phnum > 256) {
    return {};
  }
  for (int i = 0; i < ehdr.e_phnum; ++i) {
    Elf64_Phdr phdr{};
    if (!ReadAt(fd, &phdr, sizeof(phdr), static_cast<off_t>(ehdr.e_phoff + i * sizeof(phdr)))) {
      return {};
    }
    if (phdr.p_type != PT_NOTE || phdr.p_filesz > 64 * 1024) continue;
    std::vector<char> notes(phdr.p_filesz);
    if (!ReadAt(fd, notes.data(), notes.size(), static_cast<off_t>(phdr.p_offset))) return {};
    std::size_t pos = 0;
    while (pos + sizeof(Elf64_Nhdr) <= notes.size()) {
      Elf64_Nhdr nhdr{};
      std::memcpy(&nhdr, notes.data() + pos, sizeof(nhdr));
      pos += sizeof(nhdr);
      const std::size_t name_size = (nhdr.n_namesz + 3) & ~std::size_t{3};
      const std::size_t desc_size = (nhdr.n_descsz + 3) & ~std::size_t{3};
      if (pos + name_size + desc_size > notes.size()) break;
      if (nhdr.n_type == NT_GNU_BUILD_ID && nhdr.n_namesz == 4 &&
          std::memcmp(notes.data() + pos, "GNU", 4) == 0) {
        return std::string(notes.data() + pos + name_size, nhdr.n_descsz);
      }
      pos += name_size + desc_size;
    }
  }
  return {};
}

Result<image::FileIdentity> IdentifyFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return ErrnoError(errno, "open {}", path);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoError(err, "stat {}", path);
  }
  image::FileIdentity id;
  id.set_path(path);
  id.set_inode(st.st_ino);
  id.set_size(static_cast<std::uint64_t>(st.st_size));
  id.set_mtime_ns(static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
  if (S_ISREG(st.st_mode)) id.set_build_id(ReadBuildId(fd));
  close(fd);
  return id;
}

Status CheckFileIdentity(const image::FileIdentity& expected) {
  auto found = IdentifyFile(expected.path());
  if (!found) {
    return MakeError(Errc::kIncompatible, "{} is not available here: {}", expected.path(),
                     found.error().ToString());
  }
  if (!expected.build_id().empty() && found->build_id() != expected.build_id()) {
    return MakeError(Errc::kIncompatible, "{} has build-id {}, the image needs {}", expected.path(),
                     HexOf(found->build_id()), HexOf(expected.build_id()));
  }
  if (found->size() != expected.size() || found->mtime_ns() != expected.mtime_ns() ||
      found->inode() != expected.inode()) {
    return MakeError(
        Errc::kIncompatible, "{} changed since the checkpoint (size {} vs {}, inode {} vs {})",
        expected.path(), found->size(), expected.size(), found->inode(), expected.inode());
  }
  return Ok();
}

}  // namespace roam::ckpt
