// The shared-directory bootstrap (roam/transport/bootstrap.h
// OpenDirectoryBootstrap).
//
// At fence round n each rank writes "round-<n>.rank-<r>": every entry it has
// put so far (a RankFile), under a temporary name first and then renamed
// into place, so that a reader sees either no file or a whole one. The
// file's presence is the rank's arrival; the round is complete for a rank
// once it sees the files of all ranks. Get reads a rank's file of the last
// completed round, once, and keeps it: a renamed file never changes.
//
// Old files: when round n completes at rank r, every rank has arrived at n
// and so has completed n - 1; none will read rank r's files of round n - 2
// again, even after a failed round, and rank r removes that one.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <optional>
#include <thread>

#include "roam/base/deadline.h"
#include "roam/base/file.h"
#include "roam/base/unique_fd.h"
#include "roam/transport/bootstrap.h"
#include "transport/bootstrap/entries.h"

namespace roam::transport {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr auto kFirstPoll = std::chrono::milliseconds(1);
constexpr auto kMaxPoll = std::chrono::milliseconds(50);

std::string RankFileName(std::uint64_t round, int rank) {
  return fmt::format("round-{}.rank-{}", round, rank);
}

struct RankFileId {
  std::uint64_t round;
  int rank;
};

template <typename T>
bool ParseNumber(std::string_view text, T& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return !text.empty() && ec == std::errc() && end == text.data() + text.size();
}

// "round-<n>.rank-<r>"; nullopt for any other name (temporary files start
// with a dot).
std::optional<RankFileId> ParseRankFileName(std::string_view name) {
  constexpr std::string_view kRound = "round-";
  constexpr std::string_view kRank = ".rank-";
  if (!name.starts_with(kRound)) return std::nullopt;
  name.remove_prefix(kRound.size());
  const auto dot = name.find(kRank);
  if (dot == std::string_view::npos) return std::nullopt;
  RankFileId id{};
  if (!ParseNumber(name.substr(0, dot), id.round)) return std::nullopt;
  if (!ParseNumber(name.substr(dot + kRank.size()), id.rank)) return std::nullopt;
  return id;
}

// Opening the directory afresh each time matters on NFS: the open makes the
// client revalidate the directory (close-to-open consistency), so a file
// another client renamed in appears in the listing.
Result<std::vector<std::string>> ListDirectory(const fs::path& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoError(errno, "open directory {}", dir.string());
  std::unique_ptr<DIR, int (*)(DIR*)> owner(d, ::closedir);
  std::vector<std::string> names;
  for (;;) {
    errno = 0;
    const dirent* entry = ::readdir(d);
    if (entry == nullptr) break;
    if (entry->d_name[0] != '.') names.emplace_back(entry->d_name);
  }
  if (errno != 0) return ErrnoError(errno, "read directory {}", dir.string());
  return names;
}

class DirectoryBootstrap final : public Bootstrap {
 public:
  DirectoryBootstrap(fs::path dir, int rank, int size)
      : dir_(std::move(dir)), rank_(rank), size_(size), rounds_(rank, size) {}

  // Refuses a directory that already holds files of this rank: the earlier
  // run's files of the other ranks would complete our rounds with old data.
  Status CheckFresh() const {
    ROAM_ASSIGN_OR_RETURN(const auto names, ListDirectory(dir_));
    for (const std::string& name : names) {
      const auto id = ParseRankFileName(name);
      if (id && id->rank == rank_) {
        return MakeError(Errc::kAlreadyExists,
                         "bootstrap directory {} already holds {} from an earlier run of rank {}; "
                         "use a fresh directory for each job",
                         dir_.string(), name, rank_);
      }
    }
    return Ok();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  Status Put(std::string_view key, std::span<const std::byte> value) override {
    if (failed_) return tl::unexpected(*failed_);
    ROAM_TRY(CheckEntry(key, value));
    rounds_.Put(key, value);
    return Ok();
  }

  Status Fence(std::chrono::milliseconds timeout) override {
    if (failed_) return tl::unexpected(*failed_);
    Status done = RunFence(DeadlineAfter(timeout), timeout);
    if (!done) failed_ = done.error();
    return done;
  }

  Result<std::vector<std::byte>> Get(int rank, std::string_view key) const override {
    return rounds_.Get(rank, key, [this](int r, std::uint64_t round) { return Load(r, round); });
  }

 private:
  Status RunFence(Clock::time_point deadline, std::chrono::milliseconds timeout) {
    const std::uint64_t round = rounds_.completed();
    const std::string name = RankFileName(round, rank_);
    ROAM_ASSIGN_OR_RETURN(const std::string bytes, EncodeRankFile(rank_, round, rounds_.mine()));
    const fs::path temp = dir_ / fmt::format(".{}.{}", name, ::getpid());
    ROAM_TRY(WriteFileAtomically(temp, dir_ / name, bytes));

    std::vector<bool> arrived(size_, false);
    arrived[rank_] = true;
    int missing = size_ - 1;
    auto pause = std::chrono::duration_cast<Clock::duration>(kFirstPoll);
    while (missing > 0) {
      ROAM_ASSIGN_OR_RETURN(const auto names, ListDirectory(dir_));
      for (const std::string& n : names) {
        const auto id = ParseRankFileName(n);
        if (!id || id->round != round || id->rank < 0 || id->rank >= size_) continue;
        if (!arrived[id->rank]) {
          arrived[id->rank] = true;
          --missing;
        }
      }
      if (missing == 0) break;
      const auto now = Clock::now();
      if (now >= deadline) {
        std::vector<int> absent;
        for (int r = 0; r < size_; ++r) {
          if (!arrived[r]) absent.push_back(r);
        }
        return MakeError(Errc::kTimeout, "fence round {}: {} did not arrive within {} ms (in {})",
                         round, DescribeRanks(std::move(absent)), timeout.count(), dir_.string());
      }
      std::this_thread::sleep_for(std::min(pause, deadline - now));
      pause = std::min<Clock::duration>(pause * 2, kMaxPoll);
    }

    rounds_.Complete();
    if (round >= 2) {
      // Nobody reads it again (see the top of this file); a failure to
      // remove it only leaves a file behind.
      (void)::unlink((dir_ / RankFileName(round - 2, rank_)).c_str());
    }
    return Ok();
  }

  Result<EntryMap> Load(int rank, std::uint64_t round) const {
    const fs::path path = dir_ / RankFileName(round, rank);
    ROAM_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path, kMaxRankFileBytes));
    return DecodeRankFile(bytes, rank, round, path.string());
  }

  const fs::path dir_;
  const int rank_;
  const int size_;
  RankRounds rounds_;
  std::optional<Error> failed_;
};

}  // namespace

Result<std::unique_ptr<Bootstrap>> OpenDirectoryBootstrap(const std::filesystem::path& dir,
                                                          int rank, int size) {
  ROAM_TRY(CheckRankAndSize(rank, size));
  if (dir.empty()) return MakeError(Errc::kInvalidArgument, "empty bootstrap directory path");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return ErrnoError(ec.value(), "create bootstrap directory {}", dir.string());
  auto boot = std::make_unique<DirectoryBootstrap>(dir, rank, size);
  ROAM_TRY(boot->CheckFresh());
  return std::unique_ptr<Bootstrap>(std::move(boot));
}

}  // namespace roam::transport
