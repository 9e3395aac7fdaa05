#include "launch/daemon/migrator.h"

#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <utility>

#include <fmt/format.h>

#include "roam/proc/guest_spawn.h"

namespace roam::daemon {
namespace {

void Wake(int fd) {
  const std::uint64_t one = 1;
  (void)!write(fd, &one, sizeof(one));
}
void Drain(int fd) {
  std::uint64_t n = 0;
  (void)!read(fd, &n, sizeof(n));
}

}  // namespace

Result<GuestPipes> MakeGuestPipes() {
  GuestPipes pipes;
  for (std::size_t i = 0; i < 3; ++i) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return ErrnoError(errno, "pipe2");
    // stdin: the process reads p[0]; stdout, stderr: it writes p[1].
    const bool reader = i == 0;
    pipes.theirs[i] = UniqueFd(reader ? p[0] : p[1]);
    pipes.ours[i] = UniqueFd(reader ? p[1] : p[0]);
    const int flags = fcntl(pipes.ours[i].get(), F_GETFL);
    if (flags < 0 || fcntl(pipes.ours[i].get(), F_SETFL, flags | O_NONBLOCK) != 0) {
      return ErrnoError(errno, "fcntl O_NONBLOCK");
    }
  }
  return pipes;
}

Migrator::Migrator(EventLoop& loop, std::unique_ptr<transport::Fabric> fabric,
                   std::string guest_cgroup, Callbacks callbacks, UniqueFd wake_thread,
                   UniqueFd wake_loop)
    : loop_(loop),
      fabric_(std::move(fabric)),
      guest_cgroup_(std::move(guest_cgroup)),
      callbacks_(std::move(callbacks)),
      wake_thread_(std::move(wake_thread)),
      wake_loop_(std::move(wake_loop)) {}

Result<std::unique_ptr<Migrator>> Migrator::Start(
    EventLoop& loop, std::unique_ptr<transport::Fabric> fabric,
    std::function<Result<std::unique_ptr<transport::Fabric>>()> page_fabric,
    std::string guest_cgroup, std::size_t staging_bytes, Callbacks callbacks) {
  UniqueFd wake_thread(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  UniqueFd wake_loop(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_thread.valid() || !wake_loop.valid()) return ErrnoError(errno, "eventfd");
  std::unique_ptr<Migrator> m(new Migrator(loop, std::move(fabric), std::move(guest_cgroup),
                                           std::move(callbacks), std::move(wake_thread),
                                           std::move(wake_loop)));
  Migrator* self = m.get();
  // The send ring and the staging are faulted in now, so that no move pays
  // for fresh memory (slow on a ballooned VM) at its start. 16 MiB in
  // flight is ~10 ms of a 1.5 GB/s link; staging grows for larger guests
  // unless roamd --staging sized it for them.
  migrate::SourceOptions source_options;
  source_options.ring_bytes = std::size_t{16} << 20;
  source_options.allocate_now = true;
  ROAM_ASSIGN_OR_RETURN(m->source_, migrate::MigrationSource::Create(*m->fabric_, source_options));
  migrate::TargetCallbacks target;
  target.accept = [self](const migrate::Arrival& a) -> Status {
    return self->callbacks_.accept ? self->callbacks_.accept(a.guest, a.migration_id) : Ok();
  };
  target.restore_setup = [self](const migrate::Arrival& a) { return self->Setup(a); };
  target.on_running = [self](const migrate::Running& running) {
    Arrival arrival;
    arrival.running = running;
    arrival.stdio = std::move(self->pending_ours_);
    arrival.stdin_reader = std::move(self->pending_theirs_[0]);
    for (auto& fd : self->pending_theirs_) fd.reset();
    auto shared = std::make_shared<Arrival>(std::move(arrival));
    self->PostToLoop([self, shared] { self->callbacks_.on_arrived(std::move(*shared)); });
    // Into the guests' cgroup once it runs, after the loop was told (the
    // old node's hand-over waits for that): a cgroup move waits for an RCU
    // grace period (5-20 ms here), which inside the restore would be
    // downtime. Until then it runs in the node's cgroup, outside the
    // guests' CPU share.
    if (!self->guest_cgroup_.empty()) {
      if (auto joined = proc::JoinCgroup(self->guest_cgroup_ + "/cgroup.procs", running.pid);
          !joined) {
        std::fprintf(stderr, "roamd %s: pid %d runs outside the guests' cgroup: %s\n",
                     self->fabric_->name().c_str(), running.pid, joined.error().ToString().c_str());
      }
    }
  };
  target.on_failed = [self](const migrate::Arrival& a, const Error& e) {
    for (auto& fd : self->pending_ours_) fd.reset();
    for (auto& fd : self->pending_theirs_) fd.reset();
    std::fprintf(stderr, "roamd %s: incoming migration %llu failed: %s\n",
                 self->fabric_->name().c_str(), static_cast<unsigned long long>(a.migration_id),
                 e.ToString().c_str());
  };
  target.on_post_copy_end = [self](const migrate::Running& running, const Status& result) {
    if (!result) {
      // The page server ended the process (its pages could not all come);
      // the daemon sees it exit and reports that home.
      std::fprintf(stderr, "roamd %s: post-copy of pid %d failed: %s\n",
                   self->fabric_->name().c_str(), running.pid, result.error().ToString().c_str());
    }
  };
  migrate::TargetOptions target_options;
  target_options.initial_staging_bytes = staging_bytes;
  target_options.page_fabric = std::move(page_fabric);
  ROAM_ASSIGN_OR_RETURN(m->target_,
                        migrate::MigrationTarget::Create(*m->fabric_, target, target_options));
  ROAM_ASSIGN_OR_RETURN(
      m->loop_watch_,
      loop.Watch(m->wake_loop_.get(), EPOLLIN, [self](std::uint32_t) { self->DrainLoopTasks(); }));
  m->thread_ = std::thread([self] { self->ThreadMain(); });
  return m;
}

Migrator::~Migrator() {
  stop_ = true;
  Wake(wake_thread_.get());
  if (thread_.joinable()) thread_.join();
  (void)loop_.Unwatch(loop_watch_);
  endpoints_.clear();
  target_.reset();
  source_.reset();
}

void Migrator::Submit(MigrationJob job) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  Wake(wake_thread_.get());
}

void Migrator::PostToLoop(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    loop_tasks_.push_back(std::move(task));
  }
  Wake(wake_loop_.get());
}

void Migrator::DrainLoopTasks() {
  Drain(wake_loop_.get());
  std::deque<std::function<void()>> tasks;
  {
    std::lock_guard lock(mu_);
    tasks.swap(loop_tasks_);
  }
  for (auto& t : tasks) t();
}

Result<migrate::RestoreSetup> Migrator::Setup(const migrate::Arrival& arrival) {
  migrate::RestoreSetup setup;
  // Guests die with this daemon, never left running orphaned.
  setup.init_ends_with_restorer = true;
  ROAM_ASSIGN_OR_RETURN(GuestPipes pipes, MakeGuestPipes());
  pending_theirs_ = std::move(pipes.theirs);
  pending_ours_ = std::move(pipes.ours);
  for (std::size_t i = 0; i < 3; ++i) setup.stdio[i] = pending_theirs_[i].get();
  if (callbacks_.verify) {
    setup.before_resume = [this, guest = arrival.guest](pid_t pid) {
      return callbacks_.verify(guest, pid);
    };
  }
  return setup;
}

void Migrator::ThreadMain() {
  // While pages stream in, going to sleep between packets (and being woken
  // by the event fd) costs more than the packets: the thread keeps polling
  // for a moment after the last work before it sleeps.
  constexpr auto kSpin = std::chrono::milliseconds(2);
  auto last_work = std::chrono::steady_clock::now() - kSpin;
  while (!stop_) {
    std::deque<MigrationJob> jobs;
    {
      std::lock_guard lock(mu_);
      jobs.swap(jobs_);
    }
    for (auto& job : jobs) RunJob(std::move(job));
    bool worked = false;
    while (fabric_->Progress() > 0) worked = true;
    if (target_->RunPending()) continue;
    const auto now = std::chrono::steady_clock::now();
    if (worked) last_work = now;
    if (now - last_work < kSpin) continue;
    if (!fabric_->Arm() || target_->HasPending()) continue;
    pollfd fds[2] = {{wake_thread_.get(), POLLIN, 0}, {fabric_->event_fd(), POLLIN, 0}};
    // Bounded: the fabric checks its deadlines only when progressed.
    (void)poll(fds, fabric_->event_fd() >= 0 ? 2 : 1, 5);
    if ((fds[0].revents & POLLIN) != 0) Drain(wake_thread_.get());
  }
}

void Migrator::RunJob(MigrationJob job) {
  MigrationOutcome outcome;
  outcome.id = job.id;
  // One endpoint per target, kept (a connection costs a round trip or
  // two) and replaced when it broke.
  auto& ep = endpoints_[job.target_address];
  if (ep && !ep->status()) ep.reset();
  if (!ep) {
    auto fresh = fabric_->Connect(job.target_address);
    if (fresh)
      ep = std::move(*fresh);
    else
      outcome.report = fresh.error();
  }
  if (ep) {
    migrate::MigrateOptions options;
    options.migration_id = job.migration_id;
    options.guest = std::move(job.guest);
    options.mode = job.mode;
    // Progress reaches the loop at most every 200 ms.
    auto last = std::chrono::steady_clock::now();
    options.progress = [this, id = job.id, last](std::uint64_t done, std::uint64_t total) mutable {
      const auto now = std::chrono::steady_clock::now();
      if (now - last < std::chrono::milliseconds(200) || !callbacks_.on_progress) return;
      last = now;
      PostToLoop([this, id, done, total] { callbacks_.on_progress(id, done, total); });
    };
    outcome.report = source_->MigrateOut(*ep, job.pid, options);
    // A pre-copy held the process's pages in this thread's malloc arena:
    // freed, they stay resident until trimmed.
    malloc_trim(0);
  }
  auto shared = std::make_shared<MigrationOutcome>(std::move(outcome));
  PostToLoop([this, shared] { callbacks_.on_done(std::move(*shared)); });
}

}  // namespace roam::daemon
