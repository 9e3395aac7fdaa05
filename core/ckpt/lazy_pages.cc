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
// pages out of the registration, to be silently zero-filled.
constexpr std::uint64_t kWantedFeatures =
    UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP;

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

}  // namespace

// Everything the server thread touches; only that thread uses it after Start.
//
// One thread does both jobs: it drains the userfaultfd (zero-timeout poll)
// before every stream batch, so a fault waits at most one batch (256 pages,
// ~0.3 ms) plus its own block. A second thread would buy little: PageSource
// is single-threaded (it would need a lock held across the read), the
// bitmap would need one too, and both threads' UFFDIO_COPYs contend on the
// same mm in the kernel anyway.
class LazyPageServer::Engine {
 public:
  Engine(OwnedFd uffd, OwnedFd pidfd, PageSource& source, const Options& options,
         std::vector<Range> ranges, bool poison, std::uint64_t started_ns)
      : uffd_(std::move(uffd)),
        pidfd_(std::move(pidfd)),
        source_(source),
        options_(options),
        ranges_(std::move(ranges)),
        poison_(poison),
        started_ns_(started_ns),
        staging_(std::size_t{std::max(options.fault_batch_pages, options.stream_batch_pages)} *
                 kPageSize),
        present_(std::max(options.fault_batch_pages, options.stream_batch_pages)) {
    // staging_ is value-initialized, hence already faulted in: first touch of
    // fresh memory costs ~12 us a page on this VM.
    for (const Range& r : ranges_) {
      unplaced_ += r.unplaced;
      stats_.pages_total += r.pages();
    }
  }

  Result<LazyStats> Run(const std::atomic<bool>& stop) {
    Status status = Loop(stop);
    stats_.pages_unplaced = unplaced_;
    for (const Move& m : remaps_) stats_.pages_unplaced += m.pages.size() - m.next;
    stats_.process_exited = gone_;
    if (!status) {
      Fail();
      stats_.total_ns = NowNs() - started_ns_;
      return std::move(status).error();
    }
    // Closing wakes any thread still waiting (a stale fault whose page is in
    // place) and, with the last reference gone, drops the registrations.
    uffd_.Close();
    stats_.total_ns = NowNs() - started_ns_;
    return stats_;
  }

 private:
  Status Loop(const std::atomic<bool>& stop) {
    while ((unplaced_ > 0 || !deferred_.empty() || !remaps_.empty()) && !gone_ &&
           !stop.load(std::memory_order_relaxed)) {
      const bool streaming = options_.stream_batch_pages > 0 && cursor_range_ < ranges_.size();
      const bool busy = streaming || !deferred_.empty() || !remaps_.empty();
      ROAM_TRY(ServeMessages(busy ? 0 : options_.poll_timeout_ms));
      if (gone_) break;
      if (streaming) ROAM_TRY(StreamBatch());
    }
    return Ok();
  }

  // Waits up to `timeout_ms` for messages, then handles all that are queued:
  // events first (reading one lets a blocked madvise/munmap/mremap go on and
  // ends the kernel's "mm changing" window that fails copies with EAGAIN),
  // then faults, then faults deferred by such an EAGAIN.
  Status ServeMessages(int timeout_ms) {
    pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {pidfd_.get(), POLLIN, 0}};
    const nfds_t nfds = pidfd_.get() >= 0 ? 2 : 1;
    int ready = ::poll(fds, nfds, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) return Ok();
      return ErrnoError(errno, "poll userfaultfd");
    }
    if (nfds == 2 && (fds[1].revents & (POLLIN | POLLHUP)) != 0) {
      gone_ = true;  // the process exited: nothing left to serve
      return Ok();
    }
    if ((fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
      gone_ = true;
      return Ok();
    }
    if ((fds[0].revents & POLLIN) != 0) {
      uffd_msg msgs[64];
      for (;;) {
        const ssize_t n = ::read(uffd_.get(), msgs, sizeof msgs);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) break;
          if (errno == EBADF || errno == ENODEV) {
            gone_ = true;
            return Ok();
          }
          return ErrnoError(errno, "read userfaultfd");
        }
        if (n == 0) {
          gone_ = true;
          return Ok();
        }
        const std::size_t count = static_cast<std::size_t>(n) / sizeof(uffd_msg);
        for (std::size_t i = 0; i < count; ++i) {
          if (msgs[i].event != UFFD_EVENT_PAGEFAULT) ROAM_TRY(HandleEvent(msgs[i]));
        }
        ROAM_TRY(RetryRemaps());
        for (std::size_t i = 0; i < count; ++i) {
          if (msgs[i].event == UFFD_EVENT_PAGEFAULT) {
            ++stats_.faults;
            ROAM_TRY(ServeFault(msgs[i].arg.pagefault.address & ~(kPageSize - 1)));
            if (gone_) return Ok();
          }
        }
        if (static_cast<std::size_t>(n) < sizeof msgs) break;
      }
    }
    ROAM_TRY(RetryRemaps());
    if (gone_) return Ok();
    std::vector<std::uint64_t> retry;
    retry.swap(deferred_);
    for (const std::uint64_t addr : retry) {
      ROAM_TRY(ServeFault(addr));
      if (gone_) return Ok();
    }
    return Ok();
  }

  Status HandleEvent(const uffd_msg& msg) {
    switch (msg.event) {
      case UFFD_EVENT_REMOVE:
        // The process discarded these pages: they read as zero from now on,
        // so ours must never be placed there (a later fault is zero-filled).
        Drop(msg.arg.remove.start, msg.arg.remove.end);
        return Ok();
      case UFFD_EVENT_UNMAP:
        Drop(msg.arg.remove.start, msg.arg.remove.end);
        return Ok();
      case UFFD_EVENT_REMAP:
        RecordMove(msg.arg.remap.from, msg.arg.remap.to, msg.arg.remap.len);
        return Ok();
      default:
        return MakeError(Errc::kInternal, "unexpected userfaultfd event {:#x}", msg.event);
    }
  }

  void Drop(std::uint64_t start, std::uint64_t end) {
    for (Range& r : ranges_) {
      const std::uint64_t lo = std::max(start, r.start);
      const std::uint64_t hi = std::min(end, r.end);
      for (std::uint64_t a = lo; a < hi; a += kPageSize) {
        if (r.Mark((a - r.start) / kPageSize)) {
          --unplaced_;
          ++stats_.pages_dropped;
        }
      }
    }
  }

  struct Move {
    std::uint64_t from, to, len;
    std::vector<std::uint64_t> pages;  // old addresses of the unplaced pages moved
    std::size_t next = 0;              // pages[next...] are still to place
  };

  // The set of pages to carry is taken now: the UNMAP event of the old
  // range that follows must not erase it.
  void RecordMove(std::uint64_t from, std::uint64_t to, std::uint64_t len) {
    Move move{from, to, len, {}, 0};
    for (Range& r : ranges_) {
      const std::uint64_t lo = std::max(from, r.start);
      const std::uint64_t hi = std::min(from + len, r.end);
      for (std::uint64_t a = lo; a < hi; a += kPageSize) {
        if (!r.Mark((a - r.start) / kPageSize)) continue;
        --unplaced_;
        move.pages.push_back(a);
      }
    }
    if (!move.pages.empty()) remaps_.push_back(std::move(move));
  }

  Status RetryRemaps() {
    while (!remaps_.empty() && !gone_) {
      ROAM_ASSIGN_OR_RETURN(const bool done, Remap(remaps_.front()));
      if (!done) break;
      remaps_.erase(remaps_.begin());
    }
    return Ok();
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
  Result<bool> Remap(Move& move) {
    for (; move.next < move.pages.size(); ++move.next) {
      const std::uint64_t a = move.pages[move.next];
      const std::span<std::byte> buf(staging_.data(), kPageSize);
      ROAM_ASSIGN_OR_RETURN(const bool present, ReadSource(a, buf));
      if (!present) std::memset(buf.data(), 0, kPageSize);
      uffdio_copy copy{};
      copy.dst = move.to + (a - move.from);
      copy.src = reinterpret_cast<std::uint64_t>(buf.data());
      copy.len = kPageSize;
      if (::ioctl(uffd_.get(), UFFDIO_COPY, &copy) != 0 && errno != EEXIST) {
        if (errno == EAGAIN) return false;
        if (errno == ESRCH) {
          gone_ = true;
          return true;
        }
        return ErrnoError(errno, "UFFDIO_COPY of moved page {:#x} (was {:#x})", copy.dst, a);
      }
      ++stats_.pages_streamed;
      if (!present) ++stats_.zero_pages;
    }
    return true;
  }

  Range* FindRange(std::uint64_t addr) {
    auto it = std::upper_bound(ranges_.begin(), ranges_.end(), addr,
                               [](std::uint64_t a, const Range& r) { return a < r.start; });
    if (it == ranges_.begin()) return nullptr;
    --it;
    return addr < it->end ? &*it : nullptr;
  }

  Status ServeFault(std::uint64_t addr) {
    for (const Move& m : remaps_) {
      if (addr >= m.to && addr - m.to < m.len) {
        deferred_.push_back(addr);  // its data is still being moved in
        return Ok();
      }
    }
    Range* r = FindRange(addr);
    bool placed = false;
    if (r == nullptr || r->IsPlaced((addr - r->start) / kPageSize)) {
      // A stale message (the stream placed the page and woke the thread
      // meanwhile), or a page the process discarded or moved since (it reads
      // as zero): a zero page, EEXIST if it is there, then an explicit wake,
      // since a failed ioctl wakes nobody.
      uffdio_zeropage zp{};
      zp.range.start = addr;
      zp.range.len = kPageSize;
      if (::ioctl(uffd_.get(), UFFDIO_ZEROPAGE, &zp) == 0) {
        placed = true;
      } else if (errno == ESRCH) {
        gone_ = true;
        return Ok();
      } else if (errno == EAGAIN) {
        deferred_.push_back(addr);
        return Ok();
      } else if (errno != EEXIST && errno != ENOENT) {
        return ErrnoError(errno, "UFFDIO_ZEROPAGE {:#x} for a fault", addr);
      }
      if (!placed) ROAM_TRY(Wake(addr, kPageSize));
      return Ok();
    }
    const std::uint64_t page = (addr - r->start) / kPageSize;
    const std::uint64_t block = options_.fault_batch_pages;
    const std::uint64_t first = page / block * block;
    const std::uint64_t count = std::min(block, r->pages() - first);
    if (stats_.first_fault_ns == 0) first_fault_pending_ = true;
    ROAM_TRY(Place(*r, first, count, Origin::kFault));
    if (gone_) return Ok();
    if (!r->IsPlaced(page)) {
      deferred_.push_back(addr);  // EAGAIN: the mm was changing, retry after reading events
    } else if (first_fault_pending_) {
      stats_.first_fault_ns = std::max<std::uint64_t>(1, NowNs() - started_ns_);
      first_fault_pending_ = false;
    }
    return Ok();
  }

  Status StreamBatch() {
    while (cursor_range_ < ranges_.size()) {
      Range& r = ranges_[cursor_range_];
      cursor_page_ = r.NextUnplaced(cursor_page_);
      if (cursor_page_ < r.pages()) break;
      ++cursor_range_;
      cursor_page_ = 0;
    }
    if (cursor_range_ >= ranges_.size()) return Ok();
    Range& r = ranges_[cursor_range_];
    const std::uint64_t count =
        std::min<std::uint64_t>(options_.stream_batch_pages, r.pages() - cursor_page_);
    // The cursor stays put: pages an EAGAIN left unplaced are found again by
    // NextUnplaced on the next batch.
    return Place(r, cursor_page_, count, Origin::kStream);
  }

  // Places the unplaced pages among [first, first+count) of `r`.
  Status Place(Range& r, std::uint64_t first, std::uint64_t count, Origin origin) {
    std::uint64_t i = first;
    const std::uint64_t end = first + count;
    while (i < end && !gone_) {
      while (i < end && r.IsPlaced(i)) ++i;
      std::uint64_t j = i;
      while (j < end && !r.IsPlaced(j)) ++j;
      if (i < j) ROAM_TRY(PlaceSpan(r, i, j - i, origin));
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
  Status PlaceSpan(Range& r, std::uint64_t page, std::uint64_t n, Origin origin) {
    for (std::uint64_t k = 0; k < n; ++k) {
      ROAM_ASSIGN_OR_RETURN(
          const bool present,
          ReadSource(r.Addr(page + k), std::span(staging_).subspan(k * kPageSize, kPageSize)));
      present_[k] = present;
    }
    const std::uint64_t min_run = std::max<std::uint32_t>(1, options_.zeropage_min_run);
    std::uint64_t k = 0;
    while (k < n && !gone_) {
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
        ROAM_TRY(Fill(r, page, k, j - k, &staging_[k * kPageSize], origin));
        k = j;
      } else {
        std::uint64_t e = k;
        while (e < n && !present_[e]) ++e;
        ROAM_TRY(Fill(r, page, k, e - k, nullptr, origin));
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
  Status Fill(Range& r, std::uint64_t base, std::uint64_t k, std::uint64_t n, const std::byte* src,
              Origin origin) {
    const std::uint64_t page = base + k;
    std::uint64_t off = 0;  // pages done
    auto account = [&](std::uint64_t from_off, std::uint64_t pages) {
      for (std::uint64_t o = from_off; o < from_off + pages; ++o) {
        if (!r.Mark(page + o)) continue;
        --unplaced_;
        ++(origin == Origin::kFault ? stats_.pages_on_fault : stats_.pages_streamed);
        if (src == nullptr || !present_[k + o]) ++stats_.zero_pages;
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
        rc = ::ioctl(uffd_.get(), UFFDIO_COPY, &copy);
        progress = copy.copy;
      } else {
        uffdio_zeropage zp{};
        zp.range.start = dst;
        zp.range.len = len;
        rc = ::ioctl(uffd_.get(), UFFDIO_ZEROPAGE, &zp);
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
        if (r.Mark(page + off)) --unplaced_;
        ROAM_TRY(Wake(dst, kPageSize));
        ++off;
        continue;
      }
      if (err == EAGAIN) break;
      if (err == ESRCH) {
        gone_ = true;
        break;
      }
      if (err == ENOENT) {
        // Unmapped under us: nothing to place; a thread faulting there would
        // otherwise wait for a wake that never comes.
        Drop(dst, r.Addr(page + n));
        ROAM_TRY(Wake(dst, len));
        break;
      }
      return ErrnoError(err, "{} [{:#x}, {:#x})", src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", dst,
                        dst + len);
    }
    return Ok();
  }

  Status Wake(std::uint64_t addr, std::uint64_t len) {
    uffdio_range range{addr, len};
    if (::ioctl(uffd_.get(), UFFDIO_WAKE, &range) != 0 && errno != ESRCH) {
      return ErrnoError(errno, "UFFDIO_WAKE {:#x}", addr);
    }
    return Ok();
  }

  // After an error: no thread may hang on a fault nobody will serve, and none
  // may read a zero page where its data was lost. Best effort, all of it.
  void Fail() {
    if (pidfd_.get() >= 0) ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    if (poison_) {
      for (Range& r : ranges_) {
        std::uint64_t i = r.NextUnplaced(0);
        while (i < r.pages()) {
          std::uint64_t j = i;
          while (j < r.pages() && !r.IsPlaced(j)) ++j;
          UffdioPoison p{};
          p.range.start = r.Addr(i);
          p.range.len = (j - i) * kPageSize;
          (void)::ioctl(uffd_.get(), kUffdioPoison, &p);  // wakes the range: they refault, SIGBUS
          i = r.NextUnplaced(j);
        }
      }
    }
    uffd_.Close();
  }

  OwnedFd uffd_;
  OwnedFd pidfd_;
  PageSource& source_;
  const Options options_;
  std::vector<Range> ranges_;
  const bool poison_;
  const std::uint64_t started_ns_;
  std::vector<std::byte> staging_;
  std::vector<bool> present_;
  std::uint64_t unplaced_ = 0;
  std::size_t cursor_range_ = 0;
  std::uint64_t cursor_page_ = 0;
  std::vector<std::uint64_t> deferred_;  // fault addresses to retry
  std::vector<Move> remaps_;             // mremap events not yet carried out
  bool gone_ = false;
  bool first_fault_pending_ = false;
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
  if (::ioctl(uffd.get(), UFFDIO_API, &api) != 0 && errno == EINVAL) {
    api = {};  // a kernel without POISON refuses the unknown bit; nothing was set
    api.api = UFFD_API;
    api.features = kWantedFeatures;
    if (::ioctl(uffd.get(), UFFDIO_API, &api) != 0) {
      return ErrnoError(errno,
                        "lazy pages: UFFDIO_API on fd {} (it must be a fresh userfaultfd, not yet "
                        "initialized)",
                        uffd_raw);
    }
  }
  const bool poison = (api.features & kFeaturePoison) != 0;
  if ((api.features & kWantedFeatures) != kWantedFeatures) {
    return MakeError(Errc::kUnsupported,
                     "lazy pages: this kernel's userfaultfd lacks the REMOVE/UNMAP/REMAP events "
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
  server->thread_ = std::thread([self] {
    try {
      self->result_ = self->engine_->Run(self->stop_);
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
