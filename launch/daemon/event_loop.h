// roamd's event loop: one epoll instance that owns every descriptor the
// daemon waits on (sockets, pipes, timers, signals, transport fabrics) and
// runs a callback when one is ready. roamd is single-threaded and event
// driven; everything it does happens inside a callback run from here.
//
// What it offers:
//   - Watch(fd, events, cb): cb(revents) whenever epoll reports `fd` ready
//     (level-triggered); Unwatch stops it.
//   - AddTimer(first, period, cb): cb after `first`, then every `period`
//     (0: once). One timerfd per timer (see event_loop.cc for why).
//   - OnSignal(signo, cb): the signal is blocked in the calling thread and
//     read from a signalfd, so cb runs from the loop, never in a handler.
//   - Defer(cb): cb on the next iteration, in the order deferred.
//   - AddFabric(fabric): the loop drives the fabric's progress (transport.h,
//     "Progress model"): it progresses the fabric when its event_fd() is
//     readable and before every sleep, calls Arm() last, and never sleeps
//     while a fabric reports work. A fabric without an event fd (the fake
//     backend) is progressed on every iteration.
//   - Run() until Stop(); RunOnce(max_wait) for tests and embedding.
//
// Sleeping and fabrics: a fabric checks its request deadlines and peer
// timeouts only inside Progress(), so while any fabric is registered the
// loop never sleeps longer than kFabricMaxSleep (5 ms), and no longer than
// kFdlessFabricMaxSleep (1 ms) while a fabric without an event fd is
// registered. Without fabrics it sleeps until an fd, timer or signal fires.
//
// Unwatch / CancelTimer / CancelSignal / RemoveFabric are safe from inside
// any callback, including the one being run: a source removed while a batch
// from epoll_wait is being dispatched does not run afterwards, even if its
// event was already collected in that batch. Ids are never reused, so a
// closed and reopened descriptor number is never mistaken for the old one.
//
// Signals: OnSignal blocks the signal only in the calling thread
// (pthread_sigmask). A signal sent to the process is delivered to any thread
// that does not block it, where the signalfd never sees it; so the daemon
// must block every signal it handles here in every thread (before it starts
// any other thread, which inherits the mask). Standard signals coalesce: two
// SIGCHLDs pending at once are read as one.
//
// Errors: fallible calls return a typed Status/Result. Callbacks must not
// throw: roam is built without exceptions across module boundaries, and an
// exception escaping a callback leaves the loop in an unspecified state.
//
// Thread-safety: an EventLoop belongs to one thread (the one that runs it);
// no method may be called from another thread.
// Lifetime: the loop must outlive everything it watches: a watched fd must
// stay open until Unwatch (close it after Unwatch, never before, or epoll
// may keep reporting the description under a dead id); a callback may
// destroy the objects a watch refers to only after unwatching it. A
// registered fabric must outlive its registration (RemoveFabric first). The
// loop must not be destroyed from inside one of its callbacks. Destroying
// the loop closes the timer and signal descriptors it created; it closes no
// descriptor passed to Watch.
#pragma once

#include <sys/signalfd.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "roam/base/error.h"
#include "roam/base/unique_fd.h"

namespace roam::transport {
class Fabric;
}  // namespace roam::transport

namespace roam::daemon {

struct WatchId {
  std::uint64_t value = 0;
  friend bool operator==(WatchId, WatchId) = default;
};
struct TimerId {
  std::uint64_t value = 0;
  friend bool operator==(TimerId, TimerId) = default;
};
struct SignalId {
  std::uint64_t value = 0;
  friend bool operator==(SignalId, SignalId) = default;
};

class EventLoop final {
 public:
  using FdCallback = std::function<void(std::uint32_t revents)>;
  using TimerCallback = std::function<void()>;
  using SignalCallback = std::function<void(const signalfd_siginfo&)>;
  using Task = std::function<void()>;

  // RunOnce waits without a bound (still capped while fabrics exist).
  static constexpr std::chrono::milliseconds kForever{-1};
  static constexpr std::chrono::milliseconds kFabricMaxSleep{5};
  static constexpr std::chrono::milliseconds kFdlessFabricMaxSleep{1};

  static Result<std::unique_ptr<EventLoop>> Create();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // `events`: EPOLLIN, EPOLLOUT, ... (level-triggered; EPOLLET and
  // EPOLLONESHOT are refused: kInvalidArgument). Watching an fd twice:
  // kAlreadyExists.
  Result<WatchId> Watch(int fd, std::uint32_t events, FdCallback callback);
  // kNotFound for an id not (or no longer) watched. The watch is forgotten
  // even when epoll refuses to drop the fd (it was closed first): that is
  // reported as an error too.
  Status Unwatch(WatchId id);

  // `first` >= 0 (0: on the next iteration), `period` >= 0 (0: once):
  // kInvalidArgument otherwise. A periodic timer that overran several
  // periods (the loop was busy) runs once for them, not once per period.
  Result<TimerId> AddTimer(std::chrono::milliseconds first, std::chrono::milliseconds period,
                           TimerCallback callback);
  // kNotFound for a timer not active (cancelled, or a one-shot that fired).
  Status CancelTimer(TimerId id);

  // Blocks `signo` in the calling thread and runs `callback` with each one
  // read from a signalfd. kAlreadyExists if `signo` already has a callback,
  // kInvalidArgument for a signal that cannot be blocked (SIGKILL, SIGSTOP).
  Result<SignalId> OnSignal(int signo, SignalCallback callback);
  // Stops reading the signal; it stays blocked (a pending one stays
  // pending rather than killing the daemon).
  Status CancelSignal(SignalId id);

  // Runs `task` at the start of the next iteration (a task deferred by a
  // deferred task runs on the iteration after). Tasks run in order.
  void Defer(Task task);

  // Registers `fabric` for progress (see the header comment).
  // kAlreadyExists if it is registered.
  Status AddFabric(transport::Fabric& fabric);
  // kNotFound if it is not registered. Safe from a completion running inside
  // that fabric's Progress (the loop stops driving it once Progress returns).
  Status RemoveFabric(transport::Fabric& fabric);

  // Iterates until Stop(). Returns an error only if epoll itself fails.
  Status Run();
  // Makes Run return after the current iteration (callable from callbacks).
  // A Stop before Run makes the next Run return after one iteration.
  void Stop() { stop_ = true; }

  // One iteration: run deferred tasks, drive fabrics, wait up to `max_wait`
  // (kForever: no bound; shortened as described above, and 0 when work is
  // pending), run the callbacks of what is ready.
  Status RunOnce(std::chrono::milliseconds max_wait);

 private:
  enum class SourceKind : std::uint8_t;
  struct Source;
  struct FabricEntry;

  explicit EventLoop(UniqueFd epoll_fd) : epoll_fd_(std::move(epoll_fd)) {}

  Result<std::uint64_t> AddSource(int fd, std::uint32_t events, std::shared_ptr<Source> source);
  Status RemoveSource(std::uint64_t id, SourceKind kind);
  // Progresses every registered fabric until none has work, arming those
  // with an event fd. Returns true when work remains (the loop must not
  // sleep).
  bool DriveFabrics();
  // Progresses one fabric until it reports no work (bounded); true if it
  // did any.
  static bool DrainFabric(FabricEntry& entry);

  UniqueFd epoll_fd_;
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<Source>> sources_;
  std::vector<Task> deferred_;
  std::vector<std::shared_ptr<FabricEntry>> fabrics_;
  bool stop_ = false;
};

}  // namespace roam::daemon
