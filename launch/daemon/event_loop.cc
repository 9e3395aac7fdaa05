#include "launch/daemon/event_loop.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <csignal>
#include <utility>

#include "roam/transport/transport.h"

namespace roam::daemon {

enum class EventLoop::SourceKind : std::uint8_t { kWatch, kTimer, kSignal, kFabric };

// Everything the loop waits on is a Source keyed by a never-reused id, and
// epoll carries that id (not the fd) in its event data. Dispatch looks the
// id up before each callback: a source removed earlier in the same batch is
// gone from the map and is skipped, and a descriptor number closed and
// reused gets a new id, so a stale event never reaches the new owner.
// Dispatch holds a shared_ptr to the source while its callback runs, so a
// callback may remove its own source without destroying itself mid-call.
struct EventLoop::Source {
  SourceKind kind;
  int fd = -1;
  // Descriptors the loop created (timerfd, signalfd); none for Watch.
  UniqueFd owned;
  int signo = 0;  // kSignal only
  FdCallback on_ready;
};

struct EventLoop::FabricEntry {
  transport::Fabric* fabric = nullptr;
  std::uint64_t watch = 0;  // 0: no event fd
  bool removed = false;
};

namespace {

constexpr std::size_t kBatch = 64;
// Bounds on one drive of the fabrics, so that a fabric that always has work
// cannot starve descriptors and timers; when hit, the loop polls (timeout 0)
// instead of sleeping.
constexpr int kMaxProgressCalls = 1024;
constexpr int kMaxDriveRounds = 16;

timespec ToTimespec(std::chrono::milliseconds ms) {
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(ms);
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(ms - s);
  return timespec{.tv_sec = static_cast<time_t>(s.count()), .tv_nsec = ns.count()};
}

}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  UniqueFd fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!fd.valid()) return ErrnoError(errno, "epoll_create1");
  return std::unique_ptr<EventLoop>(new EventLoop(std::move(fd)));
}

EventLoop::~EventLoop() = default;

Result<std::uint64_t> EventLoop::AddSource(int fd, std::uint32_t events,
                                           std::shared_ptr<Source> source) {
  const std::uint64_t id = next_id_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return ErrnoError(errno, "epoll_ctl add fd {}", fd);
  }
  source->fd = fd;
  sources_.emplace(id, std::move(source));
  return id;
}

Status EventLoop::RemoveSource(std::uint64_t id, SourceKind kind) {
  auto it = sources_.find(id);
  if (it == sources_.end() || it->second->kind != kind) {
    return MakeError(Errc::kNotFound, "no active event source with id {}", id);
  }
  const int fd = it->second->fd;
  // Out of epoll before the erase below may close an owned fd.
  const int rc = ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  const int err = errno;
  // Erasing only drops the map's reference: a callback running for this
  // source keeps it (and its owned fd) alive until it returns.
  sources_.erase(it);
  if (rc != 0) return ErrnoError(err, "epoll_ctl del fd {} (closed before it was unwatched?)", fd);
  return Ok();
}

Result<WatchId> EventLoop::Watch(int fd, std::uint32_t events, FdCallback callback) {
  if ((events & (EPOLLET | EPOLLONESHOT | EPOLLEXCLUSIVE)) != 0) {
    return MakeError(Errc::kInvalidArgument, "watch fd {}: only level-triggered events", fd);
  }
  if (!callback) return MakeError(Errc::kInvalidArgument, "watch fd {}: no callback", fd);
  auto source = std::make_shared<Source>();
  source->kind = SourceKind::kWatch;
  source->on_ready = std::move(callback);
  ROAM_ASSIGN_OR_RETURN(const std::uint64_t id, AddSource(fd, events, std::move(source)));
  return WatchId{id};
}

Status EventLoop::Unwatch(WatchId id) { return RemoveSource(id.value, SourceKind::kWatch); }

// Timers: one timerfd each rather than one timerfd over a min-heap. The
// kernel keeps each period (no drift from our dispatch latency), and cancel
// safety, including a timer cancelled while its expiry sits in the current
// batch, comes from the same id machinery as every watch, with no heap
// tombstones to manage. A daemon has tens of timers, so one descriptor each
// costs nothing that matters.
Result<TimerId> EventLoop::AddTimer(std::chrono::milliseconds first,
                                    std::chrono::milliseconds period, TimerCallback callback) {
  if (first.count() < 0 || period.count() < 0) {
    return MakeError(Errc::kInvalidArgument, "timer: negative first ({} ms) or period ({} ms)",
                     first.count(), period.count());
  }
  if (!callback) return MakeError(Errc::kInvalidArgument, "timer: no callback");
  UniqueFd tfd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!tfd.valid()) return ErrnoError(errno, "timerfd_create");
  itimerspec spec{};
  spec.it_value = ToTimespec(first);
  // An all-zero it_value disarms the timer; "now" is the smallest delay.
  if (first.count() == 0) spec.it_value.tv_nsec = 1;
  spec.it_interval = ToTimespec(period);
  if (::timerfd_settime(tfd.get(), 0, &spec, nullptr) != 0) {
    return ErrnoError(errno, "timerfd_settime");
  }
  const int fd = tfd.get();
  const bool once = period.count() == 0;
  auto source = std::make_shared<Source>();
  source->kind = SourceKind::kTimer;
  source->owned = std::move(tfd);
  // The id is known only after AddSource; the callback reads it from here.
  auto self_id = std::make_shared<std::uint64_t>(0);
  source->on_ready = [this, fd, once, self_id, callback = std::move(callback)](std::uint32_t) {
    std::uint64_t expirations = 0;
    if (::read(fd, &expirations, sizeof expirations) != sizeof expirations) return;
    // A fired one-shot is no longer active (CancelTimer: kNotFound); the
    // source, and so this closure, live on until dispatch lets go of it.
    if (once) (void)RemoveSource(*self_id, SourceKind::kTimer);
    callback();
  };
  ROAM_ASSIGN_OR_RETURN(*self_id, AddSource(fd, EPOLLIN, std::move(source)));
  return TimerId{*self_id};
}

Status EventLoop::CancelTimer(TimerId id) { return RemoveSource(id.value, SourceKind::kTimer); }

Result<SignalId> EventLoop::OnSignal(int signo, SignalCallback callback) {
  if (signo == SIGKILL || signo == SIGSTOP || signo <= 0 || signo >= NSIG) {
    return MakeError(Errc::kInvalidArgument, "signal {} cannot be handled by the loop", signo);
  }
  if (!callback) return MakeError(Errc::kInvalidArgument, "signal {}: no callback", signo);
  for (const auto& [id, source] : sources_) {
    if (source->kind == SourceKind::kSignal && source->signo == signo) {
      return MakeError(Errc::kAlreadyExists, "signal {} already has a callback", signo);
    }
  }
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, signo);
  // Blocked first: a signalfd sees only signals that are blocked; unblocked
  // ones go to their disposition (default: terminate).
  if (const int rc = ::pthread_sigmask(SIG_BLOCK, &mask, nullptr); rc != 0) {
    return ErrnoError(rc, "block signal {}", signo);
  }
  UniqueFd sfd(::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!sfd.valid()) return ErrnoError(errno, "signalfd for signal {}", signo);
  const int fd = sfd.get();
  auto source = std::make_shared<Source>();
  source->kind = SourceKind::kSignal;
  source->owned = std::move(sfd);
  source->signo = signo;
  auto self_id = std::make_shared<std::uint64_t>(0);
  source->on_ready = [this, fd, self_id, callback = std::move(callback)](std::uint32_t) {
    // Drain what is pending; once the callback cancels this source, nothing
    // more is read (a later OnSignal will see what is left).
    signalfd_siginfo info;
    while (sources_.contains(*self_id) &&
           ::read(fd, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
      callback(info);
    }
  };
  ROAM_ASSIGN_OR_RETURN(*self_id, AddSource(fd, EPOLLIN, std::move(source)));
  return SignalId{*self_id};
}

Status EventLoop::CancelSignal(SignalId id) { return RemoveSource(id.value, SourceKind::kSignal); }

void EventLoop::Defer(Task task) { deferred_.push_back(std::move(task)); }

Status EventLoop::AddFabric(transport::Fabric& fabric) {
  for (const auto& entry : fabrics_) {
    if (entry->fabric == &fabric) {
      return MakeError(Errc::kAlreadyExists, "fabric {} is already registered", fabric.name());
    }
  }
  auto entry = std::make_shared<FabricEntry>();
  entry->fabric = &fabric;
  if (const int fd = fabric.event_fd(); fd >= 0) {
    auto source = std::make_shared<Source>();
    source->kind = SourceKind::kFabric;
    // Readable: progress it now, in batch order with the other sources; the
    // drive before the next sleep re-arms it.
    source->on_ready = [entry](std::uint32_t) {
      if (!entry->removed) DrainFabric(*entry);
    };
    ROAM_ASSIGN_OR_RETURN(entry->watch, AddSource(fd, EPOLLIN, std::move(source)));
  }
  // No separate "progress once at start" is needed: every iteration drives
  // every fabric before it sleeps, the first one included.
  fabrics_.push_back(std::move(entry));
  return Ok();
}

Status EventLoop::RemoveFabric(transport::Fabric& fabric) {
  auto it = std::find_if(fabrics_.begin(), fabrics_.end(),
                         [&](const auto& e) { return e->fabric == &fabric; });
  if (it == fabrics_.end()) {
    return MakeError(Errc::kNotFound, "fabric {} is not registered", fabric.name());
  }
  std::shared_ptr<FabricEntry> entry = std::move(*it);
  fabrics_.erase(it);
  entry->removed = true;
  if (entry->watch != 0) return RemoveSource(entry->watch, SourceKind::kFabric);
  return Ok();
}

bool EventLoop::DrainFabric(FabricEntry& entry) {
  bool worked = false;
  for (int i = 0; i < kMaxProgressCalls && !entry.removed; ++i) {
    if (entry.fabric->Progress() == 0) return worked;
    worked = true;
  }
  return worked;
}

bool EventLoop::DriveFabrics() {
  // A completion run by one fabric's Progress may start work on another
  // fabric that was already armed in this pass, so passes repeat until one
  // finds every fabric idle and armed. Arm() is each fabric's last call
  // before the sleep (transport.h: Arm, then poll, then Progress).
  for (int round = 0; round < kMaxDriveRounds; ++round) {
    bool busy = false;
    // A snapshot: callbacks may add or remove fabrics.
    const std::vector<std::shared_ptr<FabricEntry>> snapshot = fabrics_;
    for (const auto& entry : snapshot) {
      if (entry->removed) continue;
      if (DrainFabric(*entry)) busy = true;
      if (entry->removed) continue;
      // Without an event fd there is nothing to arm: the loop polls it with
      // a short sleep instead.
      if (entry->watch != 0 && !entry->fabric->Arm()) busy = true;
    }
    if (!busy) return false;
  }
  return true;
}

Status EventLoop::Run() {
  while (!stop_) ROAM_TRY(RunOnce(kForever));
  stop_ = false;
  return Ok();
}

Status EventLoop::RunOnce(std::chrono::milliseconds max_wait) {
  // Deferred tasks first; what they defer waits for the next iteration.
  std::vector<Task> tasks;
  tasks.swap(deferred_);
  for (Task& task : tasks) task();

  const bool fabric_busy = DriveFabrics();

  std::int64_t timeout = max_wait.count() < 0 ? -1 : max_wait.count();
  auto cap = [&timeout](std::chrono::milliseconds limit) {
    if (timeout < 0 || timeout > limit.count()) timeout = limit.count();
  };
  if (!fabrics_.empty()) cap(kFabricMaxSleep);
  for (const auto& entry : fabrics_) {
    if (entry->watch == 0) cap(kFdlessFabricMaxSleep);
  }
  if (fabric_busy || stop_ || !deferred_.empty()) timeout = 0;

  std::array<epoll_event, kBatch> events;
  const int n =
      ::epoll_wait(epoll_fd_.get(), events.data(), static_cast<int>(events.size()),
                   static_cast<int>(std::min<std::int64_t>(timeout, std::int64_t{1} << 30)));
  if (n < 0) {
    if (errno == EINTR) return Ok();
    return ErrnoError(errno, "epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    auto it = sources_.find(events[i].data.u64);
    // Removed by an earlier callback of this batch.
    if (it == sources_.end()) continue;
    std::shared_ptr<Source> source = it->second;
    source->on_ready(events[i].events);
  }
  return Ok();
}

}  // namespace roam::daemon
