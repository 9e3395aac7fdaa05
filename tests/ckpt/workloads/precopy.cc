// A workload for pre-copy rounds: it changes its memory layout and contents
// on command, between rounds, and at the end checks that every page holds
// what it last wrote there, wherever it runs then.
//
// stdin: one command byte at a time; stdout: "ready", then "done C" after
// each command, and "ok" or "broken: WHAT" after 'v' (then it exits 0 or 1).
//   w  rewrite every 7th page of the main region
//   m  map a fresh 4 MiB region and fill it
//   r  move that region (mremap to another address) and grow it to 8 MiB
//   b  grow the heap by 2 MiB with sbrk and fill it
//   d  drop pages 10..19 of the main region (MADV_DONTNEED: zeros now)
//   s  write page 30 of the main region, then make it read-only
//   h  print "hash H" of all of that memory (to compare across a restore:
//      a stale copy of a page can be consistent with a stale table)
//   v  verify everything and exit
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kMainPages = 8192;  // 32 MiB
constexpr std::size_t kFreshPages = 1024;
constexpr std::size_t kBrkPages = 512;

// Every page starts and ends with a stamp: (generation << 32 | page) ^ salt.
void Stamp(char* page, std::uint64_t value) {
  std::memcpy(page, &value, sizeof(value));
  std::memcpy(page + kPage - sizeof(value), &value, sizeof(value));
}
bool HasStamp(const char* page, std::uint64_t value) {
  std::uint64_t first = 0, last = 0;
  std::memcpy(&first, page, sizeof(first));
  std::memcpy(&last, page + kPage - sizeof(last), sizeof(last));
  return first == value && last == value;
}
std::uint64_t Value(std::uint64_t salt, std::uint64_t gen, std::size_t page) {
  return ((gen << 32) | page) ^ salt;
}

void Fill(char* base, std::size_t pages, std::uint64_t salt, std::uint64_t gen) {
  for (std::size_t i = 0; i < pages; ++i) Stamp(base + i * kPage, Value(salt, gen, i));
}

bool Check(const char* base, std::size_t pages, std::uint64_t salt, std::uint64_t gen) {
  for (std::size_t i = 0; i < pages; ++i) {
    if (!HasStamp(base + i * kPage, Value(salt, gen, i))) return false;
  }
  return true;
}

// FNV-1a over 64-bit words.
std::uint64_t Hash(std::uint64_t h, const void* data, std::size_t bytes) {
  const auto* words = static_cast<const std::uint64_t*>(data);
  for (std::size_t i = 0; i < bytes / sizeof(std::uint64_t); ++i) {
    h = (h ^ words[i]) * 0x100000001b3ULL;
  }
  return h;
}

void Say(const char* text) {
  if (write(1, text, std::strlen(text)) < 0) std::_Exit(3);
}

}  // namespace

int main() {
  auto* main_region = static_cast<char*>(mmap(nullptr, kMainPages * kPage, PROT_READ | PROT_WRITE,
                                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  // Where the fresh region moves to: reserved so the move really moves.
  auto* landing = static_cast<char*>(
      mmap(nullptr, 2 * kFreshPages * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (main_region == MAP_FAILED || landing == MAP_FAILED) return 2;
  // Generation of each main page (0 = dropped); the table travels too.
  auto* gens = static_cast<std::uint64_t*>(std::calloc(kMainPages, sizeof(std::uint64_t)));
  for (std::size_t i = 0; i < kMainPages; ++i) {
    gens[i] = 1;
    Stamp(main_region + i * kPage, Value(0x11, 1, i));
  }
  char* fresh = nullptr;
  std::size_t fresh_pages = 0;
  char* grown = nullptr;
  std::uint64_t gen = 1;
  Say("ready\n");

  for (;;) {
    char c = 0;
    if (read(0, &c, 1) != 1) return 4;
    ++gen;
    switch (c) {
      case 'w':
        for (std::size_t i = 0; i < kMainPages; i += 7) {
          if (gens[i] == 0 || i == 30) continue;
          gens[i] = gen;
          Stamp(main_region + i * kPage, Value(0x11, gen, i));
        }
        break;
      case 'm':
        fresh = static_cast<char*>(mmap(nullptr, kFreshPages * kPage, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (fresh == MAP_FAILED) return 5;
        fresh_pages = kFreshPages;
        Fill(fresh, fresh_pages, 0x22, 0);
        break;
      case 'r': {
        if (fresh == nullptr) return 6;
        void* moved = mremap(fresh, kFreshPages * kPage, 2 * kFreshPages * kPage,
                             MREMAP_MAYMOVE | MREMAP_FIXED, landing);
        if (moved == MAP_FAILED) return 7;
        fresh = static_cast<char*>(moved);
        // The old pages keep their stamps; the new half gets its own.
        for (std::size_t i = kFreshPages; i < 2 * kFreshPages; ++i) {
          Stamp(fresh + i * kPage, Value(0x22, 0, i));
        }
        fresh_pages = 2 * kFreshPages;
        break;
      }
      case 'b': {
        void* old_break = sbrk(static_cast<intptr_t>(kBrkPages * kPage));
        if (old_break == reinterpret_cast<void*>(-1)) return 8;
        // sbrk(0) may not be page-aligned: stamp whole pages inside it.
        const auto start =
            (reinterpret_cast<std::uintptr_t>(old_break) + kPage - 1) / kPage * kPage;
        grown = reinterpret_cast<char*>(start);
        Fill(grown, kBrkPages - 1, 0x33, 0);
        break;
      }
      case 'd':
        if (madvise(main_region + 10 * kPage, 10 * kPage, MADV_DONTNEED) != 0) return 9;
        for (std::size_t i = 10; i < 20; ++i) gens[i] = 0;
        break;
      case 's':
        gens[30] = gen;
        Stamp(main_region + 30 * kPage, Value(0x11, gen, 30));
        if (mprotect(main_region + 30 * kPage, kPage, PROT_READ) != 0) return 10;
        break;
      case 'h': {
        std::uint64_t h = Hash(0xcbf29ce484222325ULL, main_region, kMainPages * kPage);
        h = Hash(h, gens, kMainPages * sizeof(std::uint64_t));
        if (fresh != nullptr) h = Hash(h, fresh, fresh_pages * kPage);
        if (grown != nullptr) h = Hash(h, grown, (kBrkPages - 1) * kPage);
        char line[64];
        std::snprintf(line, sizeof(line), "hash %016llx\n", static_cast<unsigned long long>(h));
        Say(line);
        continue;
      }
      case 'v': {
        const char* broken = nullptr;
        for (std::size_t i = 0; i < kMainPages && broken == nullptr; ++i) {
          const char* page = main_region + i * kPage;
          if (gens[i] == 0) {
            for (std::size_t b = 0; b < kPage; ++b) {
              if (page[b] != 0) broken = "a dropped page is not zero";
            }
          } else if (!HasStamp(page, Value(0x11, gens[i], i))) {
            broken = "main region";
          }
        }
        if (broken == nullptr && fresh != nullptr && !Check(fresh, fresh_pages, 0x22, 0)) {
          broken = "moved and grown region";
        }
        if (broken == nullptr && grown != nullptr && !Check(grown, kBrkPages - 1, 0x33, 0)) {
          broken = "heap grown by sbrk";
        }
        if (broken != nullptr) {
          std::printf("broken: %s\n", broken);
          std::fflush(stdout);
          return 1;
        }
        Say("ok\n");
        return 0;
      }
      default:
        return 11;
    }
    char done[] = "done ?\n";
    done[5] = c;
    Say(done);
  }
}
