#include "core/ckpt/lazy_pages.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <exception>
#include <span>
#include <string>

namespace roam::ckpt {
namespace {

// UFFDIO_POISON (Linux 6.6) is newer than Debian 12's uapi headers; the
// values are the kernel ABI.
constexpr std::uint64_t kFeaturePoison = std::uint64_t{1} << 14;
constexpr unsigned kIoctlPoisonNr = 0x08;
struct UffdioPoison {
  uffdio_range range;
  std::uint64_t mode;
  std::int64_t updated;
};
constexpr unsigned long kUffdioPoison = _IOWR(UFFDIO, kIoctlPoisonNr, UffdioPoison);

// The non-cooperative events we need: without REMOVE a page the process
// discarded (madvise DONTNEED/FREE) before we placed it would later be
// overwritten with stale data; without REMAP an mremap would move missing
// pages out of the registration, to be silently zero-filled; without FORK
// a child forked before every page is placed loses the registration (the
// kernel clears it in the child's copy of the VMAs) and reads zeros where
// its pages were still missing.
constexpr std::uint64_t kWantedFeatures = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMOVE |
                                          UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP;

constexpr std::uint64_t kNeededIoctls = (std::uint64_t{1} << _UFFDIO_COPY) |
                                        (std::uint64_t{1} << _UFFDIO_ZEROPAGE) |
                                        (std::uint64_t{1} << _UFFDIO_WAKE);

std::uint64_t NowNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

class OwnedFd final {
 public:
  OwnedFd() = default;
  explicit OwnedFd(int fd) : fd_(fd) {}
  OwnedFd(OwnedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  OwnedFd& operator=(OwnedFd&& other) noexcept {
    if (this != &other) {
      Close();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~OwnedFd() { Close(); }
  int get() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// One registered range and which of its pages are in place.
struct Range {
  std::uint64_t start = 0;
  std::uint64_t end = 0;
  std::vector<std::uint64_t> placed;  // one bit per page
  std::uint64_t unplaced = 0;

  std::uint64_t pages() const { return (end - start) / kPageSize; }
  std::uint64_t Addr(std::uint64_t page) const { return start + page * kPageSize; }
  bool IsPlaced(std::uint64_t page) const { return (placed[page / 64] >> (page % 64)) & 1; }
  // Returns whether the page was unplaced before.
  bool Mark(std::uint64_t page) {
    std::uint64_t& word = placed[page / 64];
    const std::uint64_t bit = std::uint64_t{1} << (page % 64);
    if (word & bit) return false;
    word |= bit;
    --unplaced;
    return true;
  }
  // The first unplaced page at or after `page`, or pages().
  std::uint64_t NextUnplaced(std::uint64_t page) const {
    const std::uint64_t n = pages();
    while (page < n) {
      const std::uint64_t word = ~placed[page / 64] >> (page % 64);
      if (word != 0) return std::min(n, page + static_cast<std::uint64_t>(std::countr_zero(word)));
      page = (page / 64 + 1) * 64;
    }
    return n;
  }
};

enum class Origin { kFault, kStream };

// mremap moved [from, from+len) to `to`: the unplaced pages it carried, by
// their old address, still to be placed at the new one.
struct Move {
  std::uint64_t from = 0, to = 0, len = 0;
  std::vector<std::uint64_t> pages;  // old addresses of the unplaced pages moved
  std::size_t next = 0;              // pages[next...] are still to place
};

// Pages per stream batch for a forked child when the stream is off for the
// restored process: a child is always streamed, since only a failing copy
// (ESRCH) tells us that it exited or exec'd (the fork event names no pid).
constexpr std::uint32_t kChildStreamBatchPages = 256;

// One address space being filled: the restored process, or a child it (or
// one of its children) forked while pages were still missing. A child's
// userfaultfd comes with its UFFD_EVENT_FORK, already registered over the
// child's copies of the ranges; its missing pages are exactly those the
// parent lacked when the event was read (the forking thread waits in fork()
// until then, and copies into the parent fail with EAGAIN meanwhile), with
// the content the source has for them.
struct Space {
  OwnedFd uffd;
  bool child = false;
  bool gone = false;  // the process exited (or exec'd): nothing left to serve
  std::vector<Range> ranges;
  std::uint64_t unplaced = 0;  // over `ranges`
  std::size_t cursor_range = 0;
  std::uint64_t cursor_page = 0;
  std::vector<std::uint64_t> deferred;  // fault addresses to retry
  std::vector<Move> remaps;             // mremap events not yet carried out

  bool Finished() const { return gone || (unplaced == 0 && deferred.empty() && remaps.empty()); }
  std::uint64_t Unplaced() const {
    std::uint64_t n = unplaced;
    for (const Move& m : remaps) n += m.pages.size() - m.next;
    return n;
  }
};

}  // namespace

// Everything the server thread touches; only that thread uses it after Start.
//
// One thread does both jobs: it drains the userfaultfds (zero-timeout poll)
// before every stream batch, so a fault waits at most one batch (256 pages,
// ~0.3 ms) plus its own block. A second thread would buy little: PageSource
// is single-threaded (it would need a lock held across the read), the
// bitmaps would need one too, and both threads' UFFDIO_COPYs contend on the
// same mm in the kernel anyway. Forked children are further spaces served by
// the same loop; the stream takes one batch from each in turn.
class LazyPageServer::Engine {
 public:
  Engine(OwnedFd uffd, OwnedFd pidfd, PageSource& source, const Options& options,
         std::vector<Range> ranges, bool poison, std::uint64_t started_ns)
      : pidfd_(std::move(pidfd)),
        source_(source),
        options_(options),
        poison_(poison),
        started_ns_(started_ns),
        staging_(std::size_t{std::max({options.fault_batch_pages, options.stream_batch_pages,
                                       kChildStreamBatchPages})} *
                 kPageSize),
        present_(std::max(
            {options.fault_batch_pages, options.stream_batch_pages, kChildStreamBatchPages})) {
    // staging_ is value-initialized, hence already faulted in: first touch of
    // fresh memory costs ~12 us a page on this VM.
    auto root = std::make_unique<Space>();
    root->uffd = std::move(uffd);
    root->ranges = std::move(ranges);
    for (const Range& r : root->ranges) {
      root->unplaced += r.unplaced;
      stats_.pages_total += r.pages();
    }
    root_ = root.get();
    spaces_.push_back(std::move(root));
  }

  Result<LazyStats> Run(const std::atomic<bool>& stop, const std::atomic<bool>& stream_held) {
    Status status = Loop(stop, stream_held);
    if (!status) {
      Fail();
      stats_.total_ns = NowNs() - started_ns_;
      return std::move(status).error();
    }
    // Closing wakes any thread still waiting (a stale fault whose page is in
    // place) and, with the last reference gone, drops the registrations.
    while (!spaces_.empty()) Retire(spaces_.size() - 1);
    stats_.total_ns = NowNs() - started_ns_;
    return stats_;
  }

 private:
  Status Loop(const std::atomic<bool>& stop, const std::atomic<bool>& stream_held) {
    // While the stream is held the wait is short: its release is noticed
    // within a millisecond.
    constexpr int kHeldPollMs = 1;
    for (;;) {
      for (std::size_t i = spaces_.size(); i-- > 0;) {
        if (spaces_[i]->Finished()) Retire(i);
      }
      if (spaces_.empty() || stop.load(std::memory_order_relaxed)) return Ok();
      const bool held = stream_held.load(std::memory_order_relaxed);
      const bool busy = std::any_of(spaces_.begin(), spaces_.end(), [this, held](const auto& s) {
        return (!held && Streaming(*s)) || !s->deferred.empty() || !s->remaps.empty();
      });
      ROAM_TRY(ServeMessages(busy ? 0 : held ? kHeldPollMs : options_.poll_timeout_ms));
      if (!held) ROAM_TRY(StreamNext());
    }
  }

  // Done with spaces_[i]: its userfaultfd is closed (what is still missing
  // reads as zero from now on: only after an exit, or on Stop) and its
  // counts go into the stats.
  void Retire(std::size_t i) {
    Space& s = *spaces_[i];
    if (&s == root_) {
      stats_.pages_unplaced = s.Unplaced();
      stats_.process_exited = s.gone;
      root_ = nullptr;
      pidfd_.Close();
    } else {
      stats_.child_pages_unplaced += s.Unplaced();
      if (s.gone) ++stats_.children_exited;
    }
    s.uffd.Close();
    spaces_.erase(spaces_.begin() + static_cast<std::ptrdiff_t>(i));
    if (stream_next_ > i) --stream_next_;
  }

  std::uint32_t StreamBatchPages(const Space& s) const {
    if (s.child && options_.stream_batch_pages == 0) return kChildStreamBatchPages;
    return options_.stream_batch_pages;
  }

  bool Streaming(const Space& s) const {
    return !s.gone && StreamBatchPages(s) > 0 && s.cursor_range < s.ranges.size();
  }

  // One stream batch, for the next space in turn that has one left.
  Status StreamNext() {
    const std::size_t n = spaces_.size();
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = (stream_next_ + k) % n;
      Space& s = *spaces_[i];
      if (!Streaming(s)) continue;
      stream_next_ = i + 1;
      return StreamBatch(s);
    }
    return Ok();
  }

  // Waits up to `timeout_ms` for messages on any space, then handles all
  // that are queued: per space, events first (reading one lets a blocked
  // fork/madvise/munmap/mremap go on and ends the kernel's "mm changing"
  // window that fails copies with EAGAIN), then faults, then faults deferred
  // by such an EAGAIN.
  Status ServeMessages(int timeout_ms) {
    std::vector<pollfd> fds;
    fds.reserve(spaces_.size() + 1);
    for (const auto& s : spaces_) fds.push_back({s->uffd.get(), POLLIN, 0});
    const std::size_t served = spaces_.size();  // children adopted below wait for the next poll
    const bool watch_pid = root_ != nullptr && pidfd_.get() >= 0;
    if (watch_pid) fds.push_back({pidfd_.get(), POLLIN, 0});
    const int ready = ::poll(fds.data(), fds.size(), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) return Ok();
      return ErrnoError(errno, "poll userfaultfd");
    }
    if (watch_pid && (fds.back().revents & (POLLIN | POLLHUP)) != 0) {
      root_->gone = true;  // the process exited; its children (if any) go on
    }
    for (std::size_t i = 0; i < served; ++i) {
      Space& s = *spaces_[i];
      if (s.gone) continue;
      if ((fds[i].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
        s.gone = true;
        continue;
      }
      if ((fds[i].revents & POLLIN) != 0) ROAM_TRY(ReadMessages(s));
    }
    for (std::size_t i = 0; i < served; ++i) {
      Space& s = *spaces_[i];
      if (s.gone) continue;
      ROAM_TRY(RetryRemaps(s));
      std::vector<std::uint64_t> retry;
      retry.swap(s.deferred);
      for (const std::uint64_t addr : retry) {
        if (s.gone) break;
        ROAM_TRY(ServeFault(s, addr));
      }
    }
    return Ok();
  }

  Status ReadMessages(Space& s) {
    uffd_msg msgs[64];
    for (;;) {
      const ssize_t n = ::read(s.uffd.get(), msgs, sizeof msgs);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return Ok();
        if (errno == EBADF || errno == ENODEV) {
          s.gone = true;
          return Ok();
        }
        return ErrnoError(errno, "read userfaultfd");
      }
      if (n == 0) {
        s.gone = true;
        return Ok();
      }
      const std::size_t count = static_cast<std::size_t>(n) / sizeof(uffd_msg);
      // Every event is handled, in order, before anything can fail: a fork
      // event's userfaultfd must be adopted (a child left registered with
      // nobody serving it would hang), and a REMOVE before it must be seen
      // before the child's missing pages are taken from ours.
      Status events = Ok();
      for (std::size_t i = 0; i < count; ++i) {
        if (msgs[i].event == UFFD_EVENT_PAGEFAULT) continue;
        Status st = HandleEvent(s, msgs[i]);
        if (!st && events) events = std::move(st);
      }
      ROAM_TRY(std::move(events));
      ROAM_TRY(RetryRemaps(s));
      for (std::size_t i = 0; i < count; ++i) {
        if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
          if (!s.child) ++stats_.faults;
          ROAM_TRY(ServeFault(s, msgs[i].arg.pagefault.address & ~(kPageSize - 1)));
          if (s.gone) return Ok();
        }
      }
      if (static_cast<std::size_t>(n) < sizeof msgs) return Ok();
    }
  }

  Status HandleEvent(Space& s, const uffd_msg& msg) {
    switch (msg.event) {
      case UFFD_EVENT_FORK:
        return Adopt(s, static_cast<int>(msg.arg.fork.ufd));
      case UFFD_EVENT_REMOVE:
        // The process discarded these pages: they read as zero from now on,
        // so ours must never be placed there (a later fault is zero-filled).
        Drop(s, msg.arg.remove.start, msg.arg.remove.end);
        return Ok();
      case UFFD_EVENT_UNMAP:
        Drop(s, msg.arg.remove.start, msg.arg.remove.end);
        return Ok();
      case UFFD_EVENT_REMAP:
        RecordMove(s, msg.arg.remap.from, msg.arg.remap.to, msg.arg.remap.len);
        return Ok();
      default:
        return MakeError(Errc::kInternal, "unexpected userfaultfd event {:#x}", msg.event);
    }
  }

  // `parent` forked; `fd` (installed in this process by the read) is the
  // child's userfaultfd. The child gets its own copy of the parent's state
  // as of now: what the parent discarded stays a hole, what is on its way
  // to an mremap destination is still to come.
  Status Adopt(const Space& parent, int fd) {
    ++stats_.forks;
    auto child = std::make_unique<Space>();
    child->uffd = OwnedFd(fd);
    child->child = true;
    child->ranges = parent.ranges;
    child->unplaced = parent.unplaced;
    for (const Move& m : parent.remaps) {
      Move copy{m.from, m.to, m.len, {}, 0};
      copy.pages.assign(m.pages.begin() + static_cast<std::ptrdiff_t>(m.next), m.pages.end());
      if (!copy.pages.empty()) child->remaps.push_back(std::move(copy));
    }
    spaces_.push_back(std::move(child));
    // The fd inherits the O_CLOEXEC of the restored process's userfaultfd()
    // call but not our O_NONBLOCK: reads must not block the loop.
    const int flags = ::fcntl(fd, F_GETFL);
    if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 || flags < 0 ||
        ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      return ErrnoError(errno, "lazy pages: make a forked child's userfaultfd non-blocking");
    }
    return Ok();
  }

  void Drop(Space& s, std::uint64_t start, std::uint64_t end) {
    for (Range& r : s.ranges) {
      const std::uint64_t lo = std::max(start, r.start);
      const std::uint64_t hi = std::min(end, r.end);
      for (std::uint64_t a = lo; a < hi; a += kPageSize) {
        if (r.Mark((a - r.start) / kPageSize)) {
          --s.unplaced;
          if (!s.child) ++stats_.pages_dropped;
        }
      }
    }
  }

  // The set of pages to carry is taken now: the UNMAP event of the old
  // range that follows must not erase it.
  void RecordMove(Space& s, std::uint64_t from, std::uint64_t to, std::uint64_t len) {
    Move move{from, to, len, {}, 0};
    for (Range& r : s.ranges) {
      const std::uint64_t lo = std::max(from, r.start);
      const std::uint64_t hi = std::min(from + len, r.end);
      for (std::uint64_t a = lo; a < hi; a += kPageSize) {
        if (!r.Mark((a - r.start) / kPageSize)) continue;
        --s.unplaced;
        move.pages.push_back(a);
      }
    }
    if (!move.pages.empty()) s.remaps.push_back(std::move(move));
  }

  Status RetryRemaps(Space& s) {
    while (!s.remaps.empty() && !s.gone) {
      ROAM_ASSIGN_OR_RETURN(const bool done, Remap(s, s.remaps.front()));
      if (!done) break;
      s.remaps.erase(s.remaps.begin());
    }
    return Ok();
  }

  void Count(const Space& s, Origin origin, bool zero) {
    if (s.child) {
      ++stats_.child_pages_placed;
      return;
    }
    ++(origin == Origin::kFault ? stats_.pages_on_fault : stats_.pages_streamed);
    if (zero) ++stats_.zero_pages;
  }

  // mremap moved [from, from+len) to `to`, missing pages included, and the
  // registration with it. The unplaced pages are placed at their new address
  // from the source at the old one, and the old addresses are done with.
  // Reading the event does not end the kernel's "mm changing" window at once
  // (the moving thread ends it when it runs again), so a copy may fail with
  // EAGAIN: false, retried after the next poll; faults at the destination
  // wait meanwhile. (A fault there by another thread before the event is read
  // is zero-filled: a race only a program that touches memory while it moves
  // it can hit.)
  Result<bool> Remap(Space& s, Move& move) {
    for (; move.next < move.pages.size(); ++move.next) {
      const std::uint64_t a = move.pages[move.next];
      const std::span<std::byte> buf(staging_.data(), kPageSize);
      ROAM_ASSIGN_OR_RETURN(const bool present, ReadSource(a, buf));
      if (!present) std::memset(buf.data(), 0, kPageSize);
      uffdio_copy copy{};
      copy.dst = move.to + (a - move.from);
      copy.src = reinterpret_cast<std::uint64_t>(buf.data());
      copy.len = kPageSize;
      if (::ioctl(s.uffd.get(), UFFDIO_COPY, &copy) != 0 && errno != EEXIST) {
        if (errno == EAGAIN) return false;
        if (errno == ESRCH) {
          s.gone = true;
          return true;
        }
        return ErrnoError(errno, "UFFDIO_COPY of moved page {:#x} (was {:#x})", copy.dst, a);
      }
      Count(s, Origin::kStream, !present);
    }
    return true;
  }

  static Range* FindRange(Space& s, std::uint64_t addr) {
    auto it = std::upper_bound(s.ranges.begin(), s.ranges.end(), addr,
                               [](std::uint64_t a, const Range& r) { return a < r.start; });
    if (it == s.ranges.begin()) return nullptr;
    --it;
    return addr < it->end ? &*it : nullptr;
  }

  Status ServeFault(Space& s, std::uint64_t addr) {
    for (const Move& m : s.remaps) {
      if (addr >= m.to && addr - m.to < m.len) {
        s.deferred.push_back(addr);  // its data is still being moved in
        return Ok();
      }
    }
    Range* r = FindRange(s, addr);
    bool placed = false;
    if (r == nullptr || r->IsPlaced((addr - r->start) / kPageSize)) {
      // A stale message (the stream placed the page and woke the thread
      // meanwhile), or a page the process discarded or moved since (it reads
      // as zero): a zero page, EEXIST if it is there, then an explicit wake,
      // since a failed ioctl wakes nobody.
      uffdio_zeropage zp{};
      zp.range.start = addr;
      zp.range.len = kPageSize;
      if (::ioctl(s.uffd.get(), UFFDIO_ZEROPAGE, &zp) == 0) {
        placed = true;
      } else if (errno == ESRCH) {
        s.gone = true;
        return Ok();
      } else if (errno == EAGAIN) {
        s.deferred.push_back(addr);
        return Ok();
      } else if (errno != EEXIST && errno != ENOENT) {
        return ErrnoError(errno, "UFFDIO_ZEROPAGE {:#x} for a fault", addr);
      }
      if (!placed) ROAM_TRY(Wake(s, addr, kPageSize));
      return Ok();
    }
    const std::uint64_t page = (addr - r->start) / kPageSize;
    const std::uint64_t block = options_.fault_batch_pages;
    const std::uint64_t first = page / block * block;
    const std::uint64_t count = std::min(block, r->pages() - first);
    const bool timed = !s.child && stats_.first_fault_ns == 0;
    ROAM_TRY(Place(s, *r, first, count, Origin::kFault));
    if (s.gone) return Ok();
    if (!r->IsPlaced(page)) {
      s.deferred.push_back(addr);  // EAGAIN: the mm was changing, retry after reading events
    } else if (timed) {
      stats_.first_fault_ns = std::max<std::uint64_t>(1, NowNs() - started_ns_);
    }
    return Ok();
  }

  Status StreamBatch(Space& s) {
    while (s.cursor_range < s.ranges.size()) {
      Range& r = s.ranges[s.cursor_range];
      s.cursor_page = r.NextUnplaced(s.cursor_page);
      if (s.cursor_page < r.pages()) break;
      ++s.cursor_range;
      s.cursor_page = 0;
    }
    if (s.cursor_range >= s.ranges.size()) return Ok();
    Range& r = s.ranges[s.cursor_range];
    const std::uint64_t count =
        std::min<std::uint64_t>(StreamBatchPages(s), r.pages() - s.cursor_page);
    // The cursor stays put: pages an EAGAIN left unplaced are found again by
    // NextUnplaced on the next batch.
    return Place(s, r, s.cursor_page, count, Origin::kStream);
  }

  // Places the unplaced pages among [first, first+count) of `r`.
  Status Place(Space& s, Range& r, std::uint64_t first, std::uint64_t count, Origin origin) {
    std::uint64_t i = first;
    const std::uint64_t end = first + count;
    while (i < end && !s.gone) {
      while (i < end && r.IsPlaced(i)) ++i;
      std::uint64_t j = i;
      while (j < end && !r.IsPlaced(j)) ++j;
      if (i < j) ROAM_TRY(PlaceSpan(s, r, i, j - i, origin));
      i = j;
    }
    return Ok();
  }

  Result<bool> ReadSource(std::uint64_t addr, std::span<std::byte> out) {
    auto read = source_.ReadPage(addr, out);
    if (!read) return std::move(read).error().WithContext(fmt::format("page {:#x}", addr));
    return *read;
  }

  // [page, page+n) of `r`, all unplaced, n <= staging size.
  Status PlaceSpan(Space& s, Range& r, std::uint64_t page, std::uint64_t n, Origin origin) {
    for (std::uint64_t k = 0; k < n; ++k) {
      ROAM_ASSIGN_OR_RETURN(
          const bool present,
          ReadSource(r.Addr(page + k), std::span(staging_).subspan(k * kPageSize, kPageSize)));
      present_[k] = present;
    }
    const std::uint64_t min_run = std::max<std::uint32_t>(1, options_.zeropage_min_run);
    std::uint64_t k = 0;
    while (k < n && !s.gone) {
      if (present_[k]) {
        std::uint64_t j = k;
        while (j < n) {
          if (present_[j]) {
            ++j;
            continue;
          }
          std::uint64_t e = j;
          while (e < n && !present_[e]) ++e;
          if (e == n || e - j >= min_run) break;
          std::memset(&staging_[j * kPageSize], 0, (e - j) * kPageSize);  // copied as zeros
          j = e;
        }
        ROAM_TRY(Fill(s, r, page, k, j - k, &staging_[k * kPageSize], origin));
        k = j;
      } else {
        std::uint64_t e = k;
        while (e < n && !present_[e]) ++e;
        ROAM_TRY(Fill(s, r, page, k, e - k, nullptr, origin));
        k = e;
      }
    }
    return Ok();
  }

  // UFFDIO_COPY from `src` (nullptr: UFFDIO_ZEROPAGE) onto pages [base+k,
  // base+k+n) of `r`, whose presence in the source is present_[k...].
  // The ioctl wakes the threads faulting in the range it filled (no
  // DONTWAKE), so a batch covering a faulting address wakes it. It may stop
  // early: EAGAIN after a partial fill (continue after it), EEXIST at a page
  // already there (the other of stream and fault got it first: mark it and
  // wake it explicitly, a failed ioctl wakes nobody), EAGAIN with nothing
  // done (an event is pending: leave the rest for after reading it), ESRCH
  // (the process exited), ENOENT (the range was unmapped: its event follows).
  Status Fill(Space& s, Range& r, std::uint64_t base, std::uint64_t k, std::uint64_t n,
              const std::byte* src, Origin origin) {
    const std::uint64_t page = base + k;
    std::uint64_t off = 0;  // pages done
    auto account = [&](std::uint64_t from_off, std::uint64_t pages) {
      for (std::uint64_t o = from_off; o < from_off + pages; ++o) {
        if (!r.Mark(page + o)) continue;
        --s.unplaced;
        Count(s, origin, src == nullptr || !present_[k + o]);
      }
    };
    while (off < n) {
      const std::uint64_t dst = r.Addr(page + off);
      const std::uint64_t len = (n - off) * kPageSize;
      int rc;
      std::int64_t progress;
      if (src != nullptr) {
        uffdio_copy copy{};
        copy.dst = dst;
        copy.src = reinterpret_cast<std::uint64_t>(src + off * kPageSize);
        copy.len = len;
        rc = ::ioctl(s.uffd.get(), UFFDIO_COPY, &copy);
        progress = copy.copy;
      } else {
        uffdio_zeropage zp{};
        zp.range.start = dst;
        zp.range.len = len;
        rc = ::ioctl(s.uffd.get(), UFFDIO_ZEROPAGE, &zp);
        progress = zp.zeropage;
      }
      if (rc == 0) {
        account(off, n - off);
        break;
      }
      const int err = errno;
      if (progress > 0) {  // partial: the rest is retried (it fails with its own reason)
        const std::uint64_t pages = static_cast<std::uint64_t>(progress) / kPageSize;
        account(off, pages);
        off += pages;
        continue;
      }
      if (err == EEXIST) {
        if (r.Mark(page + off)) --s.unplaced;
        ROAM_TRY(Wake(s, dst, kPageSize));
        ++off;
        continue;
      }
      if (err == EAGAIN) break;
      if (err == ESRCH) {
        s.gone = true;
        break;
      }
      if (err == ENOENT) {
        // Unmapped under us: nothing to place; a thread faulting there would
        // otherwise wait for a wake that never comes.
        Drop(s, dst, r.Addr(page + n));
        ROAM_TRY(Wake(s, dst, len));
        break;
      }
      return ErrnoError(err, "{} [{:#x}, {:#x})", src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", dst,
                        dst + len);
    }
    return Ok();
  }

  static Status Wake(const Space& s, std::uint64_t addr, std::uint64_t len) {
    uffdio_range range{addr, len};
    if (::ioctl(s.uffd.get(), UFFDIO_WAKE, &range) != 0 && errno != ESRCH) {
      return ErrnoError(errno, "UFFDIO_WAKE {:#x}", addr);
    }
    return Ok();
  }

  // After an error: no thread may hang on a fault nobody will serve, and none
  // may read a zero page where its data was lost. Best effort, all of it.
  // The restored process is killed first: a fork it is in the middle of
  // then fails instead of leaving a child we never heard of. Forks already
  // queued on any userfaultfd are adopted, so their children are poisoned
  // like the rest (we have no pid to kill them by).
  void Fail() {
    if (root_ != nullptr && pidfd_.get() >= 0) {
      ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    }
    for (std::size_t i = 0; i < spaces_.size(); ++i) {
      Space& s = *spaces_[i];
      uffd_msg msgs[64];
      for (;;) {
        const ssize_t n = ::read(s.uffd.get(), msgs, sizeof msgs);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (std::size_t m = 0; m < static_cast<std::size_t>(n) / sizeof(uffd_msg); ++m) {
          if (msgs[m].event != UFFD_EVENT_PAGEFAULT) (void)HandleEvent(s, msgs[m]);
        }
      }
    }
    for (auto& space : spaces_) {
      Space& s = *space;
      if (poison_ && !s.gone) {
        auto poison = [&s](std::uint64_t start, std::uint64_t len) {
          UffdioPoison p{};
          p.range.start = start;
          p.range.len = len;
          (void)::ioctl(s.uffd.get(), kUffdioPoison, &p);  // wakes the range: they refault, SIGBUS
        };
        for (Range& r : s.ranges) {
          std::uint64_t i = r.NextUnplaced(0);
          while (i < r.pages()) {
            std::uint64_t j = i;
            while (j < r.pages() && !r.IsPlaced(j)) ++j;
            poison(r.Addr(i), (j - i) * kPageSize);
            i = r.NextUnplaced(j);
          }
        }
        for (const Move& m : s.remaps) {
          for (std::size_t p = m.next; p < m.pages.size(); ++p) {
            poison(m.to + (m.pages[p] - m.from), kPageSize);
          }
        }
      }
      s.uffd.Close();
    }
  }

  OwnedFd pidfd_;  // of the restored process, while it is served
  PageSource& source_;
  const Options options_;
  const bool poison_;
  const std::uint64_t started_ns_;
  std::vector<std::byte> staging_;
  std::vector<bool> present_;
  std::vector<std::unique_ptr<Space>> spaces_;  // the restored process first, then children
  Space* root_ = nullptr;                       // the restored process, until retired
  std::size_t stream_next_ = 0;                 // the space whose stream batch is next
  LazyStats stats_;
};

LazyPageServer::LazyPageServer(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {}

LazyPageServer::~LazyPageServer() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

Result<std::unique_ptr<LazyPageServer>> LazyPageServer::Start(
    int uffd_raw, std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges, PageSource& source,
    Options options) {
  const std::uint64_t started = NowNs();
  OwnedFd uffd(uffd_raw);
  if (uffd.get() < 0) return MakeError(Errc::kInvalidArgument, "lazy pages: no userfaultfd");
  const std::uint32_t fb = options.fault_batch_pages;
  if (fb == 0 || fb > 512 || !std::has_single_bit(fb)) {
    return MakeError(Errc::kInvalidArgument,
                     "lazy pages: fault batch of {} pages (a power of two, 1..512)", fb);
  }
  if (options.stream_batch_pages == 0 && options.pid == ::getpid()) {
    // In-process use (tests): our own exit needs no noticing, and a failing
    // server must not SIGKILL its host.
  } else if (options.stream_batch_pages == 0 && options.pid <= 0 && options.pidfd < 0) {
    // Nothing else would notice the process exiting while no fault comes.
    return MakeError(Errc::kInvalidArgument, "lazy pages: no stream needs a pid or pidfd");
  }
  if (options.stream_batch_pages > 4096) {
    return MakeError(Errc::kInvalidArgument, "lazy pages: stream batch of {} pages (at most 4096)",
                     options.stream_batch_pages);
  }
  std::vector<Range> table;
  std::uint64_t previous_end = 0;
  for (const auto& [start, end] : ranges) {
    if (start % kPageSize != 0 || end % kPageSize != 0 || start >= end || start < previous_end) {
      return MakeError(Errc::kInvalidArgument,
                       "lazy pages: range [{:#x}, {:#x}) is empty, unaligned, unsorted or "
                       "overlaps the previous one",
                       start, end);
    }
    previous_end = end;
    Range r;
    r.start = start;
    r.end = end;
    r.unplaced = r.pages();
    r.placed.assign((r.pages() + 63) / 64, 0);
    if (r.pages() % 64 != 0) r.placed.back() = ~std::uint64_t{0} << (r.pages() % 64);
    table.push_back(std::move(r));
  }

  OwnedFd pidfd;
  if (options.pidfd >= 0) {
    pidfd = OwnedFd(::fcntl(options.pidfd, F_DUPFD_CLOEXEC, 0));
    if (pidfd.get() < 0) return ErrnoError(errno, "lazy pages: dup pidfd {}", options.pidfd);
  } else if (options.pid > 0 && options.pid != ::getpid()) {
    pidfd = OwnedFd(static_cast<int>(::syscall(SYS_pidfd_open, options.pid, 0)));
    if (pidfd.get() < 0) return ErrnoError(errno, "lazy pages: pidfd_open {}", options.pid);
  }

  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kWantedFeatures | kFeaturePoison;
  int api_rc = ::ioctl(uffd.get(), UFFDIO_API, &api);
  if (api_rc != 0 && errno == EINVAL) {
    api = {};  // a kernel without POISON refuses the unknown bit; nothing was set
    api.api = UFFD_API;
    api.features = kWantedFeatures;
    api_rc = ::ioctl(uffd.get(), UFFDIO_API, &api);
  }
  if (api_rc != 0 && errno == EPERM) {
    // The kernel gives UFFD_FEATURE_EVENT_FORK only to CAP_SYS_PTRACE (it
    // installs fds in the reader); without it a fork would corrupt memory.
    return MakeError(Errc::kPermissionDenied,
                     "lazy pages: userfaultfd fork events need CAP_SYS_PTRACE, without them a "
                     "child forked during post-copy would read zeros");
  }
  if (api_rc != 0) {
    return ErrnoError(errno,
                      "lazy pages: UFFDIO_API on fd {} (it must be a fresh userfaultfd, not yet "
                      "initialized)",
                      uffd_raw);
  }
  const bool poison = (api.features & kFeaturePoison) != 0;
  if ((api.features & kWantedFeatures) != kWantedFeatures) {
    return MakeError(
        Errc::kUnsupported,
        "lazy pages: this kernel's userfaultfd lacks the FORK/REMOVE/UNMAP/REMAP events "
        "(features {:#x})",
        api.features);
  }
  for (const Range& r : table) {
    uffdio_register reg{};
    reg.range.start = r.start;
    reg.range.len = r.end - r.start;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) != 0) {
      return ErrnoError(errno, "lazy pages: UFFDIO_REGISTER [{:#x}, {:#x})", r.start, r.end);
    }
    if ((reg.ioctls & kNeededIoctls) != kNeededIoctls) {
      return MakeError(Errc::kUnsupported,
                       "lazy pages: [{:#x}, {:#x}) does not allow UFFDIO_COPY/ZEROPAGE/WAKE (not "
                       "private anonymous memory?)",
                       r.start, r.end);
    }
  }
  const int flags = ::fcntl(uffd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(uffd.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoError(errno, "lazy pages: make userfaultfd non-blocking");
  }

  auto engine = std::make_unique<Engine>(std::move(uffd), std::move(pidfd), source, options,
                                         std::move(table), poison, started);
  std::unique_ptr<LazyPageServer> server(new LazyPageServer(std::move(engine)));
  LazyPageServer* self = server.get();
  server->stream_held_.store(options.hold_stream, std::memory_order_relaxed);
  server->thread_ = std::thread([self] {
    try {
      self->result_ = self->engine_->Run(self->stop_, self->stream_held_);
    } catch (const std::exception& e) {
      self->result_ =
          Result<LazyStats>(MakeError(Errc::kInternal, "lazy page server: exception {}", e.what()));
    }
  });
  return server;
}

Result<LazyStats> LazyPageServer::Wait() {
  if (!thread_.joinable() && !result_) {
    return MakeError(Errc::kInvalidArgument, "lazy page server: Wait() called twice");
  }
  if (thread_.joinable()) thread_.join();
  Result<LazyStats> out = std::move(*result_);
  result_.reset();
  return out;
}

}  // namespace roam::ckpt
