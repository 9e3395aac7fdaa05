#include "launch/daemon/node.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <utility>

#include <fmt/format.h>

#include "core/ckpt/procfs/procfs.h"
#include "launch/daemon/owner.h"
#include "roam/base/fault_injection.h"
#include "roam/ckpt/refusal.h"
#include "roam/policy/eviction.h"
#include "roam/proc/guest_spawn.h"

namespace roam::daemon {
namespace {

// Output of one process queued for its session beyond which the process's
// node is told to wait (back-pressure from a slow terminal or pipe).
constexpr std::size_t kSessionBacklog = std::size_t{1} << 20;
// The most output one read takes, and the largest stdin chunk.
constexpr std::size_t kChunk = 64 * 1024;
constexpr std::chrono::milliseconds kBusyRetry{20};
// The new node adopts a moved process moments after its restore: stdin
// carried to it is tried again soon, for up to 2 s.
constexpr std::chrono::milliseconds kCarryRetry{5};
constexpr int kCarryTries = 400;
constexpr std::chrono::milliseconds kExitRetry{500};
// A process whose rebalancing move could not be arranged, or failed, is
// not tried again for this long.
constexpr std::chrono::nanoseconds kRebalanceRetry = std::chrono::seconds(30);
// A guest of a draining node that could not be sent away is tried again
// sooner: the node is meant to empty.
constexpr std::chrono::nanoseconds kEvictRetry = std::chrono::seconds(5);

// The pool's clock for load vectors and the policy: wall-clock time, which
// the nodes of a cluster keep in step (NTP, PTP); steady_clock is per host.
std::uint64_t PoolNow() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// Why a node whose refusing state (LoadFlag bits) is `refusing` takes no
// guest now; Ok when it does.
Status TakesGuests(std::uint8_t refusing, const std::string& self) {
  if ((refusing & load::kDraining) != 0) {
    return MakeError(Errc::kUnavailable, "{} is draining: it takes no guests", self);
  }
  if ((refusing & load::kOwnerActive) != 0) {
    return MakeError(Errc::kUnavailable, "the owner of {} is at work: it takes no guests", self);
  }
  return Ok();
}

// When a process whose move could not be arranged, or failed, may be tried
// again: `after` from now.
std::uint64_t RetryAt(std::chrono::nanoseconds after) {
  return PoolNow() + static_cast<std::uint64_t>(after.count());
}

// The CPU time of a process in seconds (utime + stime of /proc/PID/stat, its
// threads included), or -1 when it cannot be read.
double CpuSeconds(pid_t pid) {
  const Result<ckpt::procfs::Stat> stat = ckpt::procfs::ReadStat(pid);
  if (!stat) return -1;
  return static_cast<double>(stat->utime + stat->stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// The pid of a process inside its own pid namespace (last NSpid field), or
// -1.
pid_t NsPid(pid_t pid) {
  const Result<ckpt::procfs::Status> status = ckpt::procfs::ReadStatus(pid);
  return status && !status->ns_pid.empty() ? status->ns_pid.back() : -1;
}

// The hard resource limits of a process, by RLIMIT_* number, from
// /proc/PID/limits (prlimit(2) on another user's process needs
// CAP_SYS_RESOURCE even to read; the file does not). Its lines come in
// resource order, in fixed-width columns: name 26, soft 21, hard 21.
Result<std::vector<std::uint64_t>> CallerLimits(pid_t pid) {
  const std::string path = fmt::format("/proc/{}/limits", pid);
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) {
    return MakeError(Errc::kUnavailable, "cannot read the caller's limits ({})", path);
  }
  std::vector<std::uint64_t> hard;
  while (std::getline(in, line)) {
    if (line.size() < 68) break;
    std::istringstream field(line.substr(47, 21));
    std::string value;
    field >> value;
    hard.push_back(value == "unlimited" ? RLIM_INFINITY
                                        : std::strtoull(value.c_str(), nullptr, 10));
  }
  if (hard.size() < RLIMIT_NLIMITS) {
    return MakeError(Errc::kUnavailable, "cannot read the caller's limits ({})", path);
  }
  return hard;
}

// Whether the process still has its fd 0 (the stdin pipe) open.
bool ReadsStdin(pid_t pid) {
  struct stat st {};
  return stat(fmt::format("/proc/{}/fd/0", pid).c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

// The envelope kind of a sealed MovingGuest (outside peer::Message's cases).
constexpr std::uint32_t kMovingGuestKind = 1000;

Result<peer::MovingGuest> OpenMovingGuest(const pool::PoolKey& key, const std::string& sealed) {
  ROAM_ASSIGN_OR_RETURN(const pool::Opened opened, pool::Open(key, sealed));
  peer::MovingGuest moving;
  if (opened.header.kind != kMovingGuestKind || !moving.ParseFromString(opened.body)) {
    return MakeError(Errc::kCorrupt, "unreadable guest record");
  }
  return moving;
}

// A rebuilt process must carry the credentials its record names, and no
// others: the image comes over an unauthenticated protocol.
Status CheckCredentials(pid_t pid, uid_t uid, gid_t gid) {
  const Result<ckpt::procfs::Status> status = ckpt::procfs::ReadStatus(pid);
  if (!status) return MakeError(Errc::kIo, "cannot read the credentials of pid {}", pid);
  for (const bool is_uid : {true, false}) {
    const unsigned want = is_uid ? uid : gid;
    // real, effective, saved, filesystem
    for (const std::uint32_t id : is_uid ? status->uid : status->gid) {
      if (id != want) {
        return MakeError(Errc::kPermissionDenied,
                         "the rebuilt process has {} {} where its record says {}",
                         is_uid ? "uid" : "gid", id, want);
      }
    }
  }
  return Ok();
}

control::Reply ErrorReply(const Error& error) {
  control::Reply reply;
  ToWire(error, reply.mutable_error());
  return reply;
}

// What ends the session of a process lost with its node, or with its home.
control::Reply LostReply(std::string message) {
  control::Reply reply;
  reply.mutable_exited()->set_exit_code(kLostExitCode);
  reply.mutable_exited()->set_lost(true);
  reply.mutable_exited()->set_message(std::move(message));
  return reply;
}

// The stdin chunk in flight is in the process's pipe (or went along with it).
control::Reply StdinAck() {
  control::Reply reply;
  reply.mutable_stdin_ack();
  return reply;
}

peer::MigrationDone FailedMove(const std::string& id, const Error& error) {
  peer::MigrationDone failed;
  failed.set_id(id);
  ToWire(error, failed.mutable_error());
  return failed;
}

// Splits "n1:3" into home and id; "3" means a process whose home is `self`.
std::string CanonicalId(const std::string& id, const std::string& self) {
  if (id.find(':') != std::string::npos) return id;
  return self + ":" + id;
}
std::string HomeOf(const std::string& id) { return id.substr(0, id.find(':')); }

}  // namespace

struct Node::Session {
  std::uint64_t sid = 0;
  UniqueFd fd;
  WatchId watch;
  bool watching_out = false;
  bool watching_in = true;
  CallerIdentity who;
  std::deque<std::string> outbox;
  std::size_t outbox_bytes = 0;
  std::string run_id;  // the process of a run session
};

struct Node::Deputy {
  std::string id;
  uid_t uid = 0;
  std::vector<std::string> argv;
  std::string node;  // where it runs now
  std::string state = "starting";
  std::uint64_t sid = 0;  // its run session; 0 when gone
  std::uint32_t migrations = 0;
  std::int32_t pid = -1;
  double cpu_seconds = 0;
  int missed_heartbeats = 0;
  bool stdin_in_flight = false;
  std::string migrate_to;         // while migrating
  std::uint64_t migrate_sid = 0;  // the session waiting for the move; 0: none
  // A migrate forwarded from another node: that node and its session.
  std::string migrate_asker;
  std::uint64_t migrate_asker_sid = 0;
  // While it moves, stdin and signals wait here and go to wherever it runs
  // once the move is over (the old node may have handed it over already).
  std::optional<peer::GuestInput> held_stdin;
  std::vector<int> held_signals;
  int stalled_checks = 0;  // heartbeats that found it not moving while migrating
  // Why it is not as expected, for ps: its last move failed, its node does
  // not answer. Cleared when that is over.
  std::string note;
};

struct Node::Guest {
  std::string id;
  std::string home;
  std::string source;  // the node it came from, for the stdin carried after it
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<std::string> argv;
  pid_t pid = -1;
  pid_t ns_pid = -1;
  pid_t init_pid = -1;
  UniqueFd pidfd;
  WatchId pidfd_watch;
  UniqueFd stdin_fd;  // write end, non-blocking
  // A read end of the same pipe: what the process had not read when it
  // moved away is read from here and carried to its new node.
  UniqueFd stdin_reader;
  WatchId stdin_watch;
  bool stdin_watching = false;
  std::string stdin_queue;
  bool stdin_close_requested = false;
  bool stdin_ack_owed = false;
  struct OutputStream {
    UniqueFd fd;  // read end, non-blocking
    WatchId watch;
    bool watching = false;
    bool eof = false;
    bool in_flight = false;
  };
  std::array<OutputStream, 2> out;  // stdout, stderr
  bool exited = false;
  bool exit_reported = false;
  int exit_code = 0;
  int signal = 0;
  double cpu_at_last_sample = 0;
  double cpu_before = 0;     // used on the nodes it ran on before this one
  bool migrating = false;    // a move is under way: an exit waits for its outcome
  bool moved = false;        // it runs elsewhere now; the rest is handing over
  peer::MigrationDone done;  // for the home, once the hand-over is complete
  // Load sharing: when it arrived here by a move (pool clock; 0: it
  // started here, so no residence time holds it), whether a
  // rebalancing move of it is being arranged, and not before when it may
  // be tried again after one failed.
  std::uint64_t arrived_ns = 0;
  bool rebalancing = false;
  bool evicting = false;  // the move being arranged sends it off a node that must empty
  std::uint64_t rebalance_after_ns = 0;
  // The core it counts as in the node's CoreLedger while bound to that
  // core's NUMA node (BindGuest); none when unbound.
  std::optional<numa::Placement> core;
};

Node::Node(EventLoop& loop, PoolPeers& peers, NodeOptions options, UniqueFd listen_fd)
    : loop_(loop),
      peers_(peers),
      options_(std::move(options)),
      listen_fd_(std::move(listen_fd)),
      last_sample_(std::chrono::steady_clock::now()),
      read_buffer_(kChunk) {}

Node::~Node() {
  for (auto& [sid, session] : sessions_) (void)loop_.Unwatch(session->watch);
  for (auto& [id, guest] : guests_) UnwatchGuest(*guest);
  (void)loop_.Unwatch(listen_watch_);
  (void)loop_.CancelTimer(heartbeat_timer_);
  (void)loop_.CancelTimer(load_timer_);
}

Result<std::unique_ptr<Node>> Node::Start(
    EventLoop& loop, PoolPeers& peers, std::unique_ptr<transport::Fabric> data,
    std::function<Result<std::unique_ptr<transport::Fabric>>()> page_fabric,
    const NodeOptions& options) {
  ROAM_ASSIGN_OR_RETURN(UniqueFd listen_fd, ListenControlSocket(options.socket));
  std::unique_ptr<Node> node(new Node(loop, peers, options, std::move(listen_fd)));
  Node* self = node.get();
  Migrator::Callbacks callbacks;
  callbacks.on_done = [self](MigrationOutcome outcome) {
    self->OnMigrationOutcome(std::move(outcome));
  };
  callbacks.on_arrived = [self](Arrival arrival) { self->OnArrival(std::move(arrival)); };
  callbacks.on_progress = [self](const std::string& id, std::uint64_t done, std::uint64_t total) {
    Guest* g = self->FindGuest(id);
    if (g == nullptr) return;
    peer::Message m;
    m.mutable_migration_progress()->set_id(id);
    m.mutable_migration_progress()->set_done(done);
    m.mutable_migration_progress()->set_total(total);
    self->peers_.Send(g->home, m, [](Result<peer::Reply>) {});
  };
  // On the migration thread: only the pool key and a receiver of its own.
  auto receiver = std::make_shared<pool::Receiver>(peers.key());
  callbacks.accept = [receiver, &peers, refusing = node->refusing_, self_name = peers.self()](
                         const std::string& guest, std::uint64_t migration_id) -> Status {
    ROAM_ASSIGN_OR_RETURN(const pool::Opened opened, receiver->Accept(guest));
    peer::MovingGuest moving;
    if (opened.header.kind != kMovingGuestKind || !moving.ParseFromString(opened.body) ||
        moving.id().empty()) {
      return MakeError(Errc::kCorrupt, "unreadable guest record");
    }
    if (moving.source() != opened.header.sender || peers.Find(moving.source()) == nullptr ||
        moving.migration_id() != migration_id) {
      return MakeError(Errc::kPermissionDenied,
                       "guest record of {} from '{}' does not match migration {}", moving.id(),
                       opened.header.sender, migration_id);
    }
    if (moving.home() == self_name) return Ok();  // home takes its own back
    return TakesGuests(refusing->load(), self_name);
  };
  callbacks.verify = [&peers](const std::string& guest, pid_t pid) -> Status {
    ROAM_ASSIGN_OR_RETURN(const peer::MovingGuest moving, OpenMovingGuest(peers.key(), guest));
    return CheckCredentials(pid, moving.uid(), moving.gid());
  };
  ROAM_ASSIGN_OR_RETURN(
      node->migrator_,
      Migrator::Start(loop, std::move(data), std::move(page_fabric), options.guest_cgroup,
                      options.staging_bytes, std::move(callbacks)));
  ROAM_ASSIGN_OR_RETURN(
      node->listen_watch_,
      loop.Watch(node->listen_fd_.get(), EPOLLIN, [self](std::uint32_t) { self->OnAccept(); }));
  ROAM_ASSIGN_OR_RETURN(node->heartbeat_timer_, loop.AddTimer(options.heartbeat, options.heartbeat,
                                                              [self] { self->Heartbeat(); }));
  ROAM_ASSIGN_OR_RETURN(node->load_timer_, loop.AddTimer(std::chrono::milliseconds(1000),
                                                         std::chrono::milliseconds(1000),
                                                         [self] { self->SampleLoad(); }));
  ROAM_TRY(loop.OnSignal(SIGCHLD, [self](const signalfd_siginfo&) { self->ReapInits(); })
               .map([](SignalId) {}));
  return node;
}

// ---- control socket -------------------------------------------------------

void Node::OnAccept() {
  for (;;) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) return;  // EAGAIN, or a connection that went away first
    auto who = ReadCallerIdentity(fd.get());
    if (!who) continue;
    auto session = std::make_unique<Session>();
    session->who = std::move(*who);
    const std::uint64_t sid = next_sid_++;
    session->sid = sid;
    auto watch = loop_.Watch(fd.get(), EPOLLIN,
                             [this, sid](std::uint32_t revents) { OnSessionEvent(sid, revents); });
    if (!watch) continue;
    session->watch = *watch;
    session->fd = std::move(fd);
    sessions_.emplace(sid, std::move(session));
  }
}

void Node::OnSessionEvent(std::uint64_t sid, std::uint32_t revents) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  Session& session = *it->second;
  if ((revents & EPOLLOUT) != 0) FlushSession(session);
  if ((revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) == 0) return;
  for (int i = 0; i < 16; ++i) {
    auto got = ReceiveDatagram(session.fd.get());
    if (!got) {
      if (got.error().code() == Errc::kResourceExhausted) return;  // drained
      CloseSession(sid);
      return;
    }
    if (!got->has_value()) {
      CloseSession(sid);
      return;
    }
    control::Request request;
    if (!request.ParseFromString(**got)) {
      SendError(sid, MakeError(Errc::kCorrupt, "unreadable request"));
      return;
    }
    if (request.version() != kControlVersion) {
      SendError(sid, MakeError(Errc::kIncompatible,
                               "roam speaks control protocol version {}, this roamd {}",
                               request.version(), kControlVersion));
      return;
    }
    HandleRequest(sid, request);
    if (sessions_.find(sid) == sessions_.end()) return;
  }
}

void Node::Send(std::uint64_t sid, control::Reply reply) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  Session& session = *it->second;
  reply.set_version(kControlVersion);
  std::string bytes = reply.SerializeAsString();
  if (bytes.size() > kMaxControlMessage) {
    control::Reply too_big;
    too_big.set_version(kControlVersion);
    ToWire(MakeError(Errc::kResourceExhausted, "the answer ({} bytes) exceeds a control message",
                     bytes.size()),
           too_big.mutable_error());
    bytes = too_big.SerializeAsString();
  }
  session.outbox_bytes += bytes.size();
  session.outbox.push_back(std::move(bytes));
  FlushSession(session);
}

void Node::SendError(std::uint64_t sid, const Error& error) { Send(sid, ErrorReply(error)); }

void Node::FlushSession(Session& session) {
  while (!session.outbox.empty()) {
    const Status sent = SendDatagram(session.fd.get(), session.outbox.front());
    if (!sent) {
      if (sent.error().code() != Errc::kResourceExhausted) {
        // The client is gone; its end of the session closes on the next read.
        session.outbox.clear();
        session.outbox_bytes = 0;
      }
      break;
    }
    session.outbox_bytes -= session.outbox.front().size();
    session.outbox.pop_front();
  }
  // A client that does not read its answers is not read either (its
  // requests wait in the socket) until the backlog drains.
  const bool want_out = !session.outbox.empty();
  const bool want_in = session.outbox_bytes <= kSessionBacklog;
  if (want_out != session.watching_out || want_in != session.watching_in) {
    (void)loop_.Unwatch(session.watch);
    const std::uint64_t sid = session.sid;
    auto watch =
        loop_.Watch(session.fd.get(), (want_in ? EPOLLIN : 0u) | (want_out ? EPOLLOUT : 0u),
                    [this, sid](std::uint32_t revents) { OnSessionEvent(sid, revents); });
    if (watch) session.watch = *watch;
    session.watching_out = want_out;
    session.watching_in = want_in;
  }
}

void Node::CloseSession(std::uint64_t sid) {
  auto it = sessions_.find(sid);
  if (it == sessions_.end()) return;
  (void)loop_.Unwatch(it->second->watch);
  const std::string run_id = it->second->run_id;
  sessions_.erase(it);
  awaited_homes_.erase(sid);
  if (run_id.empty()) return;
  // `roam run` went away (killed, terminal closed): the process gets SIGHUP,
  // as from a terminal that hung up; its output from now on is dropped.
  if (Deputy* deputy = FindDeputy(run_id); deputy != nullptr) {
    deputy->sid = 0;
    SignalDeputy(*deputy, SIGHUP);
  }
}

void Node::HandleRequest(std::uint64_t sid, const control::Request& request) {
  Session& session = *sessions_.at(sid);
  switch (request.what_case()) {
    case control::Request::kRun:
      if (!session.run_id.empty()) {
        SendError(sid, MakeError(Errc::kProtocol, "one run per connection"));
        return;
      }
      HandleRun(sid, request.run());
      return;
    case control::Request::kPs:
      HandlePs(sid, request.ps());
      return;
    case control::Request::kNodes:
      HandleNodes(sid);
      return;
    case control::Request::kDrain:
      HandleDrain(sid, request.drain());
      return;
    case control::Request::kIdle:
      HandleIdle(sid);
      return;
    case control::Request::kStdinData:
    case control::Request::kStdinClose:
      HandleStdin(sid, request);
      return;
    case control::Request::kSignal:
      HandleSessionSignal(sid, request.signal().signo());
      return;
    case control::Request::kKill:
    case control::Request::kMigrate: {
      const std::string& raw = request.has_kill() ? request.kill().id() : request.migrate().id();
      const std::string id = CanonicalId(raw, peers_.self());
      if (HomeOf(id) != peers_.self()) {
        ForwardToHome(sid, id, request);
        return;
      }
      auto reply = HandleAtHome(session.who.uid, request, sid);
      if (!reply) {
        SendError(sid, reply.error());
      } else if (reply->has_value()) {
        Send(sid, std::move(**reply));
      }
      return;
    }
    case control::Request::WHAT_NOT_SET:
      break;
  }
  SendError(sid, MakeError(Errc::kInvalidArgument, "empty or unknown request"));
}

void Node::ForwardToHome(std::uint64_t sid, const std::string& id,
                         const control::Request& request) {
  const std::string home = HomeOf(id);
  if (peers_.Find(home) == nullptr) {
    SendError(sid,
              MakeError(Errc::kNotFound, "no process {}: no node '{}' in this pool", id, home));
    return;
  }
  peer::Message m;
  m.mutable_forward()->set_uid(sessions_.at(sid)->who.uid);
  *m.mutable_forward()->mutable_request() = request;
  m.mutable_forward()->set_session(sid);
  // Awaited from now: the answer to a migrate may overtake this reply.
  if (request.has_migrate()) awaited_homes_[sid] = AwaitedHome{home};
  peers_.Send(home, m, [this, sid](Result<peer::Reply> reply) {
    if (reply && reply->answer_follows()) return;
    awaited_homes_.erase(sid);
    if (!reply) {
      SendError(sid, reply.error());
    } else {
      Send(sid, reply->control());
    }
  });
}

void Node::CheckAwaitedHomes() {
  for (const auto& [sid, awaited] : awaited_homes_) {
    peer::Message m;
    m.mutable_node_status();
    peers_.Send(awaited.home, m, [this, sid = sid](Result<peer::Reply> r) {
      auto it = awaited_homes_.find(sid);
      if (it == awaited_homes_.end()) return;
      if (r) {
        it->second.missed = 0;
        return;
      }
      if (++it->second.missed < options_.lost_after) return;
      const std::string home = it->second.home;
      awaited_homes_.erase(it);
      SendError(sid, MakeError(Errc::kUnavailable,
                               "home node {} no longer answers: the move's outcome is unknown "
                               "(roam ps there shows where the process runs)",
                               home));
    });
  }
}

// ---- run ------------------------------------------------------------------

void Node::HandleRun(std::uint64_t sid, const control::Run& run) {
  if (run.argv_size() == 0) {
    SendError(sid, MakeError(Errc::kInvalidArgument, "roam run: no command given"));
    return;
  }
  if (!run.node().empty()) {
    if (peers_.Find(run.node()) == nullptr) {
      SendError(sid, MakeError(Errc::kNotFound, "no node '{}' in this pool", run.node()));
      return;
    }
    StartRun(sid, run, run.node());
    return;
  }
  const Balancer::Placement place = options_.balancer != nullptr
                                        ? options_.balancer->Place(PoolNow())
                                        : Balancer::Placement{peers_.self(), 0};
  if (place.node == peers_.self()) {
    StartRun(sid, run, peers_.self());
    return;
  }
  // The target may have filled since its vector was sampled: it is asked,
  // and a refusal (or no answer) starts the process here.
  peer::Message m;
  m.mutable_reserve()->set_load_per_cpu(place.here_load_per_cpu);
  peers_.Send(place.node, m, [this, sid, run, target = place.node](Result<peer::Reply> r) {
    if (sessions_.count(sid) == 0) return;
    const std::string node = r ? target : peers_.self();
    if (r) options_.balancer->Record(target, PoolNow(), 1);
    StartRun(sid, run, node);
  });
}

void Node::StartRun(std::uint64_t sid, const control::Run& run, const std::string& node) {
  Session& session = *sessions_.at(sid);
  auto deputy = std::make_unique<Deputy>();
  deputy->id = fmt::format("{}:{}", peers_.self(), next_process_++);
  deputy->uid = session.who.uid;
  deputy->argv.assign(run.argv().begin(), run.argv().end());
  deputy->node = node;
  deputy->sid = sid;
  session.run_id = deputy->id;
  const std::string id = deputy->id;
  deputies_.emplace(id, std::move(deputy));

  peer::Message m;
  auto* start = m.mutable_start_guest();
  start->set_id(id);
  start->set_uid(session.who.uid);
  start->set_gid(session.who.gid);
  for (gid_t g : session.who.groups) start->add_groups(g);
  *start->mutable_run() = run;
  // The limits are the caller's claim: none may exceed what the kernel
  // says the caller's own process has (a hard limit is raised only with
  // privilege, which the daemon has and the caller may not).
  auto real = CallerLimits(session.who.pid);
  if (!real) {
    EndDeputy(id, ErrorReply(real.error()));
    return;
  }
  for (auto& l : *start->mutable_run()->mutable_limits()) {
    if (l.resource() < 0 || static_cast<std::size_t>(l.resource()) >= real->size()) continue;
    l.set_max(std::min<std::uint64_t>(l.max(), (*real)[static_cast<std::size_t>(l.resource())]));
    l.set_cur(std::min<std::uint64_t>(l.cur(), l.max()));
  }
  peers_.Send(node, m, [this, id, node](Result<peer::Reply> reply) {
    Deputy* d = FindDeputy(id);
    if (d == nullptr) return;
    if (!reply) {
      // Unanswered is not refused: it may run there; it must not without
      // its home.
      if (reply.error().code() == Errc::kTimeout || reply.error().code() == Errc::kUnavailable) {
        SendSignal(node, id, SIGKILL);
      }
      EndDeputy(id, ErrorReply(reply.error()));
      return;
    }
    if (d->state == "starting") d->state = "running";
    d->pid = reply->start_guest().pid();
    if (d->sid != 0) {
      control::Reply started;
      started.mutable_started()->set_id(id);
      started.mutable_started()->set_node(node);
      Send(d->sid, std::move(started));
    }
  });
}

void Node::HandleStdin(std::uint64_t sid, const control::Request& request) {
  Session& session = *sessions_.at(sid);
  Deputy* deputy = FindDeputy(session.run_id);
  if (deputy == nullptr) return;  // not started (yet) or over: nothing to feed
  if (deputy->stdin_in_flight) {
    SendError(sid, MakeError(Errc::kProtocol, "stdin chunk sent before the last was taken"));
    return;
  }
  peer::Message m;
  m.mutable_guest_input()->set_id(deputy->id);
  if (request.has_stdin_data()) {
    if (request.stdin_data().data().size() > kChunk) {
      SendError(sid, MakeError(Errc::kInvalidArgument, "stdin chunk over {} bytes", kChunk));
      return;
    }
    m.mutable_guest_input()->set_data(request.stdin_data().data());
  } else {
    m.mutable_guest_input()->set_close(true);
  }
  deputy->stdin_in_flight = true;
  if (deputy->state == "migrating") {
    deputy->held_stdin = m.guest_input();
    return;
  }
  peers_.Send(deputy->node, m, [](Result<peer::Reply>) {
    // The ack comes as GuestInputAck once the bytes are in the pipe; a
    // failure shows up through the heartbeat.
  });
}

void Node::HandleSessionSignal(std::uint64_t sid, int signo) {
  Session& session = *sessions_.at(sid);
  if (Deputy* deputy = FindDeputy(session.run_id); deputy != nullptr) SignalDeputy(*deputy, signo);
}

void Node::SendSignal(const std::string& node, const std::string& id, int signo) {
  peer::Message m;
  m.mutable_guest_signal()->set_id(id);
  m.mutable_guest_signal()->set_signo(signo);
  peers_.Send(node, m, [](Result<peer::Reply>) {});
}

void Node::SignalDeputy(Deputy& deputy, int signo) {
  if (deputy.state == "migrating") {
    deputy.held_signals.push_back(signo);
    return;
  }
  SendSignal(deputy.node, deputy.id, signo);
}

// ---- ps, nodes, kill ------------------------------------------------------

void Node::ProcessInfoOf(const Deputy& deputy, control::ProcessInfo* out) const {
  out->set_id(deputy.id);
  for (const auto& a : deputy.argv) out->add_argv(a);
  out->set_home(peers_.self());
  out->set_node(deputy.node);
  out->set_state(deputy.state);
  out->set_uid(deputy.uid);
  out->set_cpu_seconds(deputy.cpu_seconds);
  out->set_migrations(deputy.migrations);
  out->set_pid(deputy.pid);
  out->set_note(deputy.note);
  // A process here that capture would refuse (an MPI rank's sockets and
  // eventfd, say) says why it stays, before anything tries to move it.
  if (!deputy.note.empty() || deputy.node != peers_.self() || deputy.state != "running") return;
  const auto guest = guests_.find(deputy.id);
  if (guest == guests_.end()) return;
  if (auto refusals = ckpt::FindRefusals(guest->second->pid); refusals && !refusals->empty()) {
    const ckpt::Refusal& first = refusals->front();
    out->set_note(fmt::format(
        "cannot move: {} ({}{})", first.detail, ckpt::RefusalReasonName(first.reason),
        refusals->size() > 1 ? fmt::format(", and {} more", refusals->size() - 1) : std::string()));
  }
}

void Node::HandlePs(std::uint64_t sid, const control::Ps& ps) {
  control::Reply reply;
  for (const auto& [id, deputy] : deputies_)
    ProcessInfoOf(*deputy, reply.mutable_ps()->add_processes());
  if (!ps.all()) {
    Send(sid, std::move(reply));
    return;
  }
  // Every other home's processes too: ask each node for its own.
  auto pending = std::make_shared<int>(0);
  auto gathered = std::make_shared<control::Reply>(std::move(reply));
  for (const auto& member : peers_.members()) {
    if (member.name == peers_.self()) continue;
    ++*pending;
    peer::Message m;
    m.mutable_forward()->set_uid(sessions_.at(sid)->who.uid);
    m.mutable_forward()->mutable_request()->set_version(kControlVersion);
    m.mutable_forward()->mutable_request()->mutable_ps();
    peers_.Send(member.name, m, [this, sid, pending, gathered](Result<peer::Reply> r) {
      if (r && r->control().has_ps()) {
        for (const auto& p : r->control().ps().processes()) {
          *gathered->mutable_ps()->add_processes() = p;
        }
      }
      if (--*pending == 0) Send(sid, *gathered);
    });
  }
  if (*pending == 0) Send(sid, *gathered);
}

void Node::HandleNodes(std::uint64_t sid) {
  auto reply = std::make_shared<control::Reply>();
  auto pending = std::make_shared<int>(static_cast<int>(peers_.members().size()));
  for (const auto& member : peers_.members()) {
    auto* info = reply->mutable_nodes()->add_nodes();
    info->set_name(member.name);
    info->set_address(member.host);
    const int index = reply->nodes().nodes_size() - 1;
    peer::Message m;
    m.mutable_node_status();
    peers_.Send(member.name, m, [this, sid, reply, pending, index](Result<peer::Reply> r) {
      auto* entry = reply->mutable_nodes()->mutable_nodes(index);
      if (r) {
        const auto& st = r->node_status();
        entry->set_cpus(st.cpus());
        entry->set_load(st.load());
        entry->set_processes(st.processes());
        entry->set_dropped(st.dropped_malformed() + st.dropped_bad_version() +
                           st.dropped_bad_mac() + st.dropped_replayed());
        entry->set_guests(st.guests());
        entry->set_runnable(st.runnable());
        entry->set_migrations_in(st.migrations_in());
        entry->set_migrations_out(st.migrations_out());
        entry->set_balance(st.balance());
        entry->set_gossip(st.gossip());
        *entry->mutable_free_cores() = st.free_cores();
        entry->set_state(st.draining() ? "draining" : st.owner_active() ? "owner-active" : "up");
      } else {
        entry->set_state("unreachable");
      }
      if (--*pending == 0) Send(sid, *reply);
    });
  }
}

void Node::HandleDrain(std::uint64_t sid, const control::Drain& drain) {
  const char* what = drain.undrain() ? "undrain" : "drain";
  const uid_t uid = sessions_.at(sid)->who.uid;
  if (uid != 0 && uid != geteuid()) {
    SendError(sid,
              MakeError(Errc::kPermissionDenied,
                        "only root or roamd's own user (uid {}) may {} a node", geteuid(), what));
    return;
  }
  if (peers_.Find(drain.node()) == nullptr) {
    SendError(sid, MakeError(Errc::kNotFound, "no node '{}' in this pool", drain.node()));
    return;
  }
  if (drain.node() == peers_.self()) {
    Send(sid, SetDraining(!drain.undrain()));
    return;
  }
  peer::Message m;
  *m.mutable_drain() = drain;
  peers_.Send(drain.node(), m, [this, sid](Result<peer::Reply> r) {
    if (sessions_.count(sid) == 0) return;
    if (!r) {
      SendError(sid, r.error());
      return;
    }
    Send(sid, r->control());
  });
}

control::Reply Node::SetDraining(bool on) {
  const bool was = ((on ? refusing_->fetch_or(load::kDraining)
                        : refusing_->fetch_and(static_cast<std::uint8_t>(~load::kDraining))) &
                    load::kDraining) != 0;
  std::size_t guests = 0;
  for (const auto& [id, g] : guests_) {
    if (!g->exited && !g->moved && g->home != peers_.self()) ++guests;
  }
  control::Reply reply;
  const std::string& self = peers_.self();
  if (on) {
    reply.mutable_done()->set_message(
        fmt::format("{} {}: it takes no new guests and sends its {} guest{} away{}", self,
                    was ? "was draining already" : "drains", guests, guests == 1 ? "" : "s",
                    options_.balancer != nullptr ? "" : " (home: load sharing is off)"));
  } else {
    reply.mutable_done()->set_message(
        fmt::format("{} {}", self, was ? "takes guests again" : "was not draining"));
  }
  if (on != was) {
    std::fprintf(stderr, "roamd %s: %s\n", self.c_str(), on ? "draining" : "undrained");
  }
  return reply;
}

void Node::HandleIdle(std::uint64_t sid) {
  if (options_.balancer == nullptr) {
    SendError(sid, MakeError(Errc::kUnsupported,
                             "{} shares no load information (roamd --balance off); `roam nodes` "
                             "asks every node for its load",
                             peers_.self()));
    return;
  }
  control::Reply reply;
  for (const Balancer::IdleNode& n : options_.balancer->Idle(PoolNow())) {
    control::IdleNode* out = reply.mutable_idle()->add_nodes();
    out->set_name(n.node);
    out->set_free_cpus(n.free_cpus);
    out->set_load_per_cpu(n.load_per_cpu);
    out->set_age_seconds(n.age_seconds);
  }
  reply.mutable_idle();  // an empty list is an answer too
  Send(sid, std::move(reply));
}

Result<std::optional<control::Reply>> Node::HandleAtHome(uid_t uid, const control::Request& request,
                                                         std::uint64_t sid) {
  const bool is_kill = request.has_kill();
  const std::string id =
      CanonicalId(is_kill ? request.kill().id() : request.migrate().id(), peers_.self());
  Deputy* deputy = FindDeputy(id);
  if (deputy == nullptr) return MakeError(Errc::kNotFound, "no process {}", id);
  if (uid != 0 && uid != deputy->uid) {
    return MakeError(Errc::kPermissionDenied, "process {} belongs to uid {}, not to uid {}", id,
                     deputy->uid, uid);
  }
  if (!is_kill) return StartMigration(*deputy, request.migrate(), sid);
  const int signo = request.kill().signo() == 0 ? SIGTERM : request.kill().signo();
  if (signo < 1 || signo >= NSIG) return MakeError(Errc::kInvalidArgument, "no signal {}", signo);
  // The signal goes out now (or when a move under way ends); a process
  // that exits before it lands simply ends as it would have.
  control::Reply reply;
  reply.mutable_done()->set_message(
      deputy->state == "migrating"
          ? fmt::format("SIG{} for {} is held until its move to {} ends", sigabbrev_np(signo), id,
                        deputy->migrate_to)
          : fmt::format("sent SIG{} to {} on {}", sigabbrev_np(signo), id, deputy->node));
  SignalDeputy(*deputy, signo);
  return reply;
}

// ---- deputies -------------------------------------------------------------

Node::Deputy* Node::FindDeputy(const std::string& id) {
  auto it = deputies_.find(id);
  return it == deputies_.end() ? nullptr : it->second.get();
}

void Node::EndDeputy(const std::string& id, control::Reply last) {
  auto it = deputies_.find(id);
  if (it == deputies_.end()) return;
  if (it->second->state == "migrating") {
    AnswerMigrate(*it->second,
                  ErrorReply(MakeError(Errc::kNotFound, "process {} ended during its move", id)));
  }
  const std::uint64_t sid = it->second->sid;
  deputies_.erase(it);
  if (sid == 0) return;
  Send(sid, std::move(last));
  if (auto s = sessions_.find(sid); s != sessions_.end()) s->second->run_id.clear();
}

void Node::Heartbeat() {
  CheckAwaitedHomes();
  // Which nodes run processes whose home is here.
  std::map<std::string, std::vector<std::string>> by_node;
  for (const auto& [id, deputy] : deputies_) {
    if (deputy->state != "starting") by_node[deputy->node].push_back(id);
  }
  for (auto& [node, ids] : by_node) {
    peer::Message m;
    for (const auto& id : ids) m.mutable_guest_query()->add_ids(id);
    peers_.Send(node, m, [this, node, ids](Result<peer::Reply> r) {
      for (const auto& id : ids) {
        Deputy* d = FindDeputy(id);
        if (d == nullptr || d->node != node) continue;
        bool known = false;
        std::string state;  // as its node reports it
        if (r) {
          for (const auto& p : r->guest_query().processes()) {
            if (p.id() != id) continue;
            if (!known) state = p.state();
            known = true;
            d->cpu_seconds = p.cpu_seconds();
            d->pid = p.pid();
            d->missed_heartbeats = 0;
            if (d->state == "unreachable") {
              d->state = "running";
              d->note.clear();
            }
          }
        }
        if (d->state == "migrating") {
          // The old node lost: the process died with it, or moved just
          // before and the news was lost with it; its new node says which.
          if (!r) {
            if (++d->missed_heartbeats >= options_.lost_after) SettleLostMove(id, r.error());
            continue;
          }
          d->missed_heartbeats = 0;
          // The move decides; only a move that is not under way at all (the
          // old node runs it and is not moving it) is given up here.
          d->stalled_checks = state == "running" ? d->stalled_checks + 1 : 0;
          if (d->stalled_checks >= options_.lost_after) {
            FinishMigration(
                d->node, FailedMove(id, MakeError(Errc::kUnavailable, "the move did not start")));
          }
          continue;
        }
        if (known) continue;
        // Unknown at a node that answers: it exited and the report is on
        // its way, or the node restarted and lost it. Not answering: the
        // node may be gone.
        if (++d->missed_heartbeats < options_.lost_after) {
          if (!r) {
            d->state = "unreachable";
            d->note = fmt::format("{} has not answered {} heartbeat(s): {}", node,
                                  d->missed_heartbeats, r.error().message());
          }
          continue;
        }
        // Should it still run there (a node that answers again), it must not
        // go on without its home.
        SendSignal(node, id, SIGKILL);
        EndDeputy(id, LostReply(r ? fmt::format("process {} is lost: node {} no longer knows it",
                                                id, node)
                                  : fmt::format("process {} is lost with node {}: {}", id, node,
                                                r.error().ToString())));
      }
    });
  }
}

// ---- guests ---------------------------------------------------------------

Node::Guest* Node::FindGuest(const std::string& id) {
  auto it = guests_.find(id);
  return it == guests_.end() ? nullptr : it->second.get();
}

Result<pid_t> Node::StartGuest(const std::string& home, const peer::StartGuest& start) {
  if (FindGuest(start.id()) != nullptr) {
    return MakeError(Errc::kAlreadyExists, "process {} already runs here", start.id());
  }
  const control::Run& run = start.run();
  // stdio pipes: the guest gets one end of each, this daemon keeps the other.
  ROAM_ASSIGN_OR_RETURN(GuestPipes pipes, MakeGuestPipes());
  std::array<UniqueFd, 3>& theirs = pipes.theirs;
  std::array<UniqueFd, 3>& ours = pipes.ours;
  proc::GuestSpec spec;
  spec.argv.assign(run.argv().begin(), run.argv().end());
  spec.env.assign(run.env().begin(), run.env().end());
  spec.cwd = run.cwd();
  spec.umask = static_cast<mode_t>(run.umask());
  spec.uid = start.uid();
  spec.gid = start.gid();
  spec.groups.assign(start.groups().begin(), start.groups().end());
  for (const auto& l : run.limits()) {
    spec.limits.push_back(
        {l.resource(), static_cast<rlim_t>(l.cur()), static_cast<rlim_t>(l.max())});
  }
  spec.stdio = {theirs[0].get(), theirs[1].get(), theirs[2].get()};
  if (!options_.guest_cgroup.empty()) {
    spec.cgroup_procs.push_back(options_.guest_cgroup + "/cgroup.procs");
  }
  ROAM_ASSIGN_OR_RETURN(proc::SpawnedGuest spawned, proc::SpawnGuest(spec));

  auto guest = std::make_unique<Guest>();
  guest->id = start.id();
  guest->home = home;
  guest->uid = start.uid();
  guest->gid = start.gid();
  guest->argv = spec.argv;
  guest->pid = spawned.pid;
  guest->ns_pid = spawned.ns_pid;
  guest->init_pid = spawned.init_pid;
  guest->pidfd = std::move(spawned.pidfd);
  inits_.push_back(spawned.init_pid);
  guest->stdin_fd = std::move(ours[0]);
  // The guest's own stdin read end is kept (the guest has its copy).
  guest->stdin_reader = std::move(theirs[0]);
  guest->out[0].fd = std::move(ours[1]);
  guest->out[1].fd = std::move(ours[2]);
  Guest& g = *guest;
  guests_.emplace(g.id, std::move(guest));
  WatchGuest(g);
  BindGuest(g);
  return spawned.ns_pid;
}

void Node::WatchGuest(Guest& g) {
  const std::string id = g.id;
  auto watch = loop_.Watch(g.pidfd.get(), EPOLLIN, [this, id](std::uint32_t) { OnGuestExit(id); });
  if (watch) g.pidfd_watch = *watch;
  PumpOutput(g, 0);
  PumpOutput(g, 1);
}

void Node::PumpOutput(Guest& guest, int index) {
  auto& s = guest.out[static_cast<std::size_t>(index)];
  if (s.eof || s.in_flight) {
    if (s.watching) {
      (void)loop_.Unwatch(s.watch);
      s.watching = false;
    }
    return;
  }
  const ssize_t n = read(s.fd.get(), read_buffer_.data(), read_buffer_.size());
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
    if (!s.watching) {
      const std::string id = guest.id;
      auto watch = loop_.Watch(s.fd.get(), EPOLLIN, [this, id, index](std::uint32_t) {
        if (Guest* g = FindGuest(id); g != nullptr) PumpOutput(*g, index);
      });
      if (watch) {
        s.watch = *watch;
        s.watching = true;
      }
    }
    return;
  }
  if (n <= 0) {  // EOF (every writer gone) or a broken pipe
    s.eof = true;
    if (s.watching) {
      (void)loop_.Unwatch(s.watch);
      s.watching = false;
    }
    MaybeReportExit(guest);
    return;
  }
  s.in_flight = true;
  if (s.watching) {
    (void)loop_.Unwatch(s.watch);
    s.watching = false;
  }
  peer::Message m;
  auto* out = m.mutable_guest_output();
  out->set_id(guest.id);
  out->set_fd(index + 1);
  out->set_data(read_buffer_.data(), static_cast<std::size_t>(n));
  SendOutput(guest.id, index, std::move(m));
}

void Node::SendOutput(const std::string& id, int index, peer::Message message) {
  Guest* guest = FindGuest(id);
  if (guest == nullptr) return;
  peers_.Send(guest->home, message, [this, id, index, message](Result<peer::Reply> r) {
    Guest* g = FindGuest(id);
    if (g == nullptr) return;
    if (r && r->busy()) {
      (void)loop_.AddTimer(kBusyRetry, std::chrono::milliseconds(0),
                           [this, id, index, message] { SendOutput(id, index, message); });
      return;
    }
    if (!r && r.error().code() == Errc::kNotFound && !g->exited && g->init_pid > 0) {
      // Its home does not know it (ended it as lost, or restarted): a
      // process without a home is ended, never left running unseen.
      kill(g->init_pid, SIGKILL);
    }
    // Taken, or the home cannot take it (its deputy is gone): move on. A
    // home unreachable for long reports the process lost; its output has
    // nowhere to go.
    g->out[static_cast<std::size_t>(index)].in_flight = false;
    PumpOutput(*g, index);
  });
}

void Node::PumpInput(Guest& guest) {
  while (!guest.stdin_queue.empty() && guest.stdin_fd.valid()) {
    const ssize_t n =
        write(guest.stdin_fd.get(), guest.stdin_queue.data(), guest.stdin_queue.size());
    if (n > 0) {
      guest.stdin_queue.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN && !ReadsStdin(guest.pid)) {
      // It closed its stdin; this daemon's own read end keeps the pipe
      // open, so no EPIPE comes: what it will never read is dropped.
      guest.stdin_queue.clear();
      break;
    }
    if (n < 0 && errno == EAGAIN) {
      if (!guest.stdin_watching) {
        const std::string id = guest.id;
        auto watch = loop_.Watch(guest.stdin_fd.get(), EPOLLOUT, [this, id](std::uint32_t) {
          if (Guest* g = FindGuest(id); g != nullptr) PumpInput(*g);
        });
        if (watch) {
          guest.stdin_watch = *watch;
          guest.stdin_watching = true;
        }
      }
      return;
    }
    // EPIPE: the process closed its stdin; what it did not read is dropped.
    guest.stdin_queue.clear();
  }
  if (guest.stdin_watching) {
    (void)loop_.Unwatch(guest.stdin_watch);
    guest.stdin_watching = false;
  }
  if (guest.stdin_close_requested && guest.stdin_fd.valid()) guest.stdin_fd.reset();
  if (guest.stdin_ack_owed) {
    guest.stdin_ack_owed = false;
    peer::Message m;
    m.mutable_guest_input_ack()->set_id(guest.id);
    peers_.Send(guest.home, m, [](Result<peer::Reply>) {});
  }
}

void Node::OnGuestExit(const std::string& id) {
  Guest* guest = FindGuest(id);
  if (guest == nullptr || guest->exited) return;
  siginfo_t info{};
  if (waitid(P_PIDFD, static_cast<id_t>(guest->pidfd.get()), &info, WEXITED | WNOHANG) != 0 ||
      info.si_pid == 0) {
    return;
  }
  guest->exited = true;
  (void)loop_.Unwatch(guest->pidfd_watch);
  if (info.si_code == CLD_EXITED) {
    guest->exit_code = info.si_status;
  } else {
    guest->signal = info.si_status;
    guest->exit_code = 128 + info.si_status;
  }
  // The init takes the namespace down once its process is gone, which
  // closes every other writer of the output pipes: they reach EOF.
  ReapInits();
  MaybeReportExit(*guest);
}

void Node::MaybeReportExit(Guest& guest) {
  // While it moves, an exit (the capture's kill included) waits for the
  // move's outcome.
  if (!guest.exited || guest.exit_reported || guest.migrating) return;
  for (const auto& s : guest.out) {
    if (!s.eof || s.in_flight) return;  // output first, then the status
  }
  guest.exit_reported = true;
  if (guest.moved) {
    HandOver(guest);
    return;
  }
  peer::Message m;
  m.mutable_guest_exited()->set_id(guest.id);
  m.mutable_guest_exited()->set_exit_code(guest.exit_code);
  m.mutable_guest_exited()->set_signal(guest.signal);
  ReportExit(guest.id, std::move(m), 0);
}

void Node::ReportExit(const std::string& id, peer::Message message, int tries) {
  Guest* guest = FindGuest(id);
  if (guest == nullptr) return;
  peers_.Send(guest->home, message, [this, id, message, tries](Result<peer::Reply> r) {
    // A home that cannot be reached is retried for a while (~10 s); one
    // that no longer knows the process (kNotFound) has nothing to wait for.
    if ((r && r->busy()) || (!r && r.error().code() != Errc::kNotFound && tries < 20)) {
      (void)loop_.AddTimer(kExitRetry, std::chrono::milliseconds(0),
                           [this, id, message, tries] { ReportExit(id, message, tries + 1); });
      return;
    }
    DropGuest(id);
  });
}

void Node::DropGuest(const std::string& id) {
  auto it = guests_.find(id);
  if (it == guests_.end()) return;
  UnwatchGuest(*it->second);
  UnbindGuest(*it->second);
  guests_.erase(it);
}

void Node::BindGuest(Guest& guest) {
  const numa::Topology* topology = options_.topology;
  if (topology == nullptr || guest.core) return;
  auto choice = numa::ChoosePlacement(*topology, core_ledger_, 1);
  numa::Placement node;
  if (choice) {
    node.numa_node = choice->numa_node;
    for (const numa::NumaNodeCores& n : topology->CoresByNumaNode()) {
      if (n.os_index != choice->numa_node) continue;
      for (const numa::CpuSet& core : n.cores) node.cpus = node.cpus.Union(core);
    }
  }
  const Status bound = choice ? numa::BindProcess(guest.pid, node, numa::BindMode::kBestEffort)
                              : Status(choice.error());
  if (!bound) {
    std::fprintf(stderr, "roamd %s: %s runs unbound: %s\n", peers_.self().c_str(), guest.id.c_str(),
                 bound.error().ToString().c_str());
    return;
  }
  core_ledger_.Take(*choice);
  guest.core = std::move(*choice);
}

void Node::UnbindGuest(Guest& guest) {
  if (!guest.core) return;
  core_ledger_.Release(*guest.core);
  guest.core.reset();
}

void Node::UnwatchGuest(Guest& guest) {
  if (!guest.exited) (void)loop_.Unwatch(guest.pidfd_watch);  // an exit unwatched it
  for (auto& s : guest.out) {
    if (s.watching) (void)loop_.Unwatch(s.watch);
  }
  if (guest.stdin_watching) (void)loop_.Unwatch(guest.stdin_watch);
}

void Node::ReapInits() {
  std::erase_if(inits_, [](pid_t pid) {
    const pid_t r = waitpid(pid, nullptr, WNOHANG);
    return r == pid || (r < 0 && errno == ECHILD);
  });
}

void Node::SampleLoad() {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - last_sample_).count();
  last_sample_ = now;
  double used = 0;
  for (auto& [id, g] : guests_) {
    if (g->exited) continue;
    const double cpu = CpuSeconds(g->pid);
    if (cpu < 0) continue;
    used += std::max(0.0, cpu - g->cpu_at_last_sample);
    g->cpu_at_last_sample = cpu;
  }
  load_ = elapsed > 0 ? used / elapsed : 0;
  BalanceTick();
}

bool Node::CheckOwner() {
  if (!options_.owner_mode) return false;
  const auto last = LastOwnerInput(options_.owner_inputs);
  policy::PolicyConfig config;
  config.owner_idle_after = options_.owner_idle_after;
  const bool active =
      last.has_value() && policy::OwnerActive(std::chrono::system_clock::now() - *last, config);
  const std::uint8_t before =
      active ? refusing_->fetch_or(load::kOwnerActive)
             : refusing_->fetch_and(static_cast<std::uint8_t>(~load::kOwnerActive));
  if (((before & load::kOwnerActive) != 0) != active) {
    std::fprintf(stderr, "roamd %s: %s\n", peers_.self().c_str(),
                 active ? "its owner is back: it takes no guests and sends its guests away"
                        : "its owner is away: it takes guests");
  }
  return active;
}

void Node::BalanceTick() {
  Balancer* balancer = options_.balancer;
  const bool owner_active = CheckOwner();
  const std::uint8_t flags = policy::NodeFlags((refusing_->load() & load::kDraining) != 0,
                                               options_.owner_mode, owner_active);
  const bool evict = policy::MustEvict(flags);
  if (balancer == nullptr && !evict) return;
  const std::uint64_t now = PoolNow();
  load::NodeReadings readings;
  readings.capacity_cpus = options_.cpus;
  readings.flags = flags;
  if (options_.topology != nullptr) {
    readings.free_cores = numa::FreeCoresPerNumaNode(*options_.topology, core_ledger_);
  }
  std::vector<policy::Candidate> candidates;
  std::vector<Guest*> by_index;
  for (auto& [id, g] : guests_) {
    if (g->exited || g->moved) continue;
    if (balancer != nullptr) readings.runnable += RunnableTasks(g->pid);
    if (g->home != peers_.self()) ++readings.guests;
    ++readings.processes;
    if (g->migrating || g->rebalancing || now < g->rebalance_after_ns) continue;
    const Member* home = peers_.Find(g->home);
    if (home == nullptr) continue;
    // SampleLoad read its CPU time just now.
    candidates.push_back({.id = by_index.size(),
                          .home = static_cast<std::uint32_t>(home->rank),
                          .cpu_age = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::duration<double>(g->cpu_at_last_sample)),
                          .resident_bytes = balancer != nullptr ? ResidentBytes(g->pid) : 0,
                          .arrived_ns = g->arrived_ns});
    by_index.push_back(g.get());
  }
  std::vector<Balancer::NamedMove> moves;
  if (balancer != nullptr) {
    balancer->Tick(readings, now);
    moves = evict ? balancer->Evictions(candidates, now) : balancer->Moves(candidates, now);
  } else {
    // No load information: every guest goes home, which always takes its
    // own processes back.
    for (const policy::Candidate& c : candidates) {
      const Guest& g = *by_index[c.id];
      if (g.home != peers_.self()) moves.push_back({c.id, g.home, 0});
    }
  }
  for (const Balancer::NamedMove& move : moves) Rebalance(*by_index[move.id], move, evict);
}

void Node::PostponeMove(Guest& guest) {
  guest.rebalancing = false;
  guest.rebalance_after_ns = RetryAt(guest.evicting ? kEvictRetry : kRebalanceRetry);
  guest.evicting = false;
}

void Node::Rebalance(Guest& guest, const Balancer::NamedMove& move, bool evict) {
  guest.rebalancing = true;
  guest.evicting = evict;
  const std::string id = guest.id;
  // Tried again after a while if it cannot be arranged.
  auto give_up = [this, id](std::string_view why) {
    Guest* g = FindGuest(id);
    if (g == nullptr) return;
    PostponeMove(*g);
    std::fprintf(stderr, "roamd %s: not moving %s now: %.*s\n", peers_.self().c_str(), id.c_str(),
                 static_cast<int>(why.size()), why.data());
  };
  // The ledger counts the move from now until the vectors show it, or
  // until it is refused or fails (`processes` -1 takes it back).
  auto record = [this, target = move.target](int processes) {
    if (options_.balancer == nullptr) return;
    const std::uint64_t now = PoolNow();
    options_.balancer->Record(peers_.self(), now, -processes);
    options_.balancer->Record(target, now, processes);
  };
  auto migrate = [this, id, target = move.target, give_up, record] {
    Guest* g = FindGuest(id);
    if (g == nullptr || g->exited) return;
    record(1);
    // Decided at its home, like `roam migrate` (the node's own authority).
    peer::Message m;
    m.mutable_forward()->set_uid(0);
    control::Request* request = m.mutable_forward()->mutable_request();
    request->set_version(kControlVersion);
    request->mutable_migrate()->set_id(id);
    request->mutable_migrate()->set_to(target);
    peers_.Send(g->home, m, [give_up, record](Result<peer::Reply> r) {
      if (!r) {
        record(-1);
        give_up(r.error().message());
      }
      // Otherwise under way: OnMigrationOutcome ends it here.
    });
  };
  // Sent off a node that must empty, it goes home without asking: home
  // always takes its own processes back.
  if (evict && move.target == guest.home) {
    migrate();
    return;
  }
  peer::Message reserve;
  reserve.mutable_reserve()->set_load_per_cpu(move.source_load_per_cpu);
  peers_.Send(move.target, reserve, [migrate, give_up](Result<peer::Reply> granted) {
    if (!granted) {
      give_up(granted.error().message());
      return;
    }
    migrate();
  });
}

void Node::Shutdown() {
  for (auto& [id, g] : guests_) {
    if (!g->exited && g->init_pid > 0) kill(g->init_pid, SIGKILL);
  }
  for (auto& [id, d] : deputies_) {
    if (d->node != peers_.self()) SendSignal(d->node, id, SIGKILL);
    if (d->sid == 0) continue;
    Send(d->sid, LostReply(fmt::format("process {} is lost: its home node {} is shutting down", id,
                                       peers_.self())));
  }
}

// ---- migration --------------------------------------------------------------
//
// home H                      old node S                        new node T
// roam migrate -> checks, state "migrating"
//   MigrateGuest ----------->  migration thread: MigrateOut ----> restore
//                              (freeze, pages, commit, go)        on_arrived:
//                                                                 adopt, pump
//   T's output: "busy" <---------------------------------------- GuestOutput
//                              old pipes drained to EOF (output
//                              to H), stdin left unread:
//                              GuestStdinCarry -----------------> in front
//   MigrationDone <----------- (ok: pid at T, times, bytes)
// node = T, answer roam migrate; T's output taken from now on.
// A failed move leaves the process running at S: MigrationDone says why.

Result<std::optional<control::Reply>> Node::StartMigration(Deputy& deputy,
                                                           const control::Migrate& migrate,
                                                           std::uint64_t sid) {
  const std::string mode = migrate.mode().empty() ? "stop-copy" : migrate.mode();
  if (mode != "stop-copy" && mode != "pre-copy" && mode != "post-copy") {
    return MakeError(Errc::kInvalidArgument, "no migration mode '{}'", mode);
  }
  if (peers_.Find(migrate.to()) == nullptr) {
    return MakeError(Errc::kNotFound, "no node '{}' in this pool", migrate.to());
  }
  if (deputy.state != "running") {
    return MakeError(Errc::kUnavailable, "process {} is {}, not running", deputy.id, deputy.state);
  }
  if (migrate.to() == deputy.node) {
    return MakeError(Errc::kInvalidArgument, "process {} already runs on {}", deputy.id,
                     deputy.node);
  }
  deputy.state = "migrating";
  deputy.migrate_to = migrate.to();
  deputy.migrate_sid = sid;
  peer::Message m;
  m.mutable_migrate_guest()->set_id(deputy.id);
  m.mutable_migrate_guest()->set_to(migrate.to());
  m.mutable_migrate_guest()->set_mode(mode);
  const std::string id = deputy.id;
  peers_.Send(deputy.node, m, [this, id](Result<peer::Reply> r) {
    if (r) return;  // under way: MigrationDone follows
    // Unanswered: the old node may have started it anyway; the heartbeat
    // finds out (MigrationDone, or the process still there and not moving).
    if (r.error().code() == Errc::kTimeout || r.error().code() == Errc::kUnavailable) return;
    Deputy* d = FindDeputy(id);
    if (d == nullptr || d->state != "migrating") return;
    FinishMigration(d->node, FailedMove(id, r.error()));
  });
  return std::optional<control::Reply>();
}

void Node::FinishMigration(const std::string& sender, const peer::MigrationDone& done) {
  Deputy* d = FindDeputy(done.id());
  if (d == nullptr || d->node != sender || d->state != "migrating") return;
  const std::string from = d->node;
  const std::string to = std::exchange(d->migrate_to, {});
  d->state = "running";
  control::Reply reply;
  if (done.ok()) {
    d->note.clear();
    d->node = done.node();
    d->pid = done.pid();
    ++d->migrations;
    d->missed_heartbeats = 0;
    // A stdin chunk sent to the old node went along with the process.
    if (d->stdin_in_flight && !d->held_stdin && d->sid != 0) {
      d->stdin_in_flight = false;
      Send(d->sid, StdinAck());
    }
    reply.mutable_done()->set_message(fmt::format(
        "moved {} from {} to {}: {:.1f} ms in all, frozen {:.1f} ms, {:.1f} MiB of pages", d->id,
        from, done.node(), static_cast<double>(done.total_ns()) / 1e6,
        static_cast<double>(done.downtime_ns()) / 1e6,
        static_cast<double>(done.bytes()) / (1 << 20)));
    auto* moved = reply.mutable_done()->mutable_moved();
    moved->set_id(d->id);
    moved->set_from(from);
    moved->set_to(done.node());
    moved->set_downtime_ns(done.downtime_ns());
    moved->set_total_ns(done.total_ns());
    moved->set_bytes(done.bytes());
    moved->set_mode(done.mode());
    moved->set_restore_ns(done.restore_ns());
    moved->set_bytes_frozen(done.bytes_frozen());
    moved->set_rounds(done.rounds());
  } else {
    const Error failed = FromWire(done.error());
    d->note = fmt::format("its last move, to {}, failed: {}", to, failed.message());
    reply = ErrorReply(failed.WithContext(fmt::format("{} stays on {}", d->id, from)));
  }
  AnswerMigrate(*d, std::move(reply));
  // What waited for the move goes to wherever the process runs now.
  if (d->held_stdin) {
    peer::Message m;
    *m.mutable_guest_input() = *std::exchange(d->held_stdin, std::nullopt);
    peers_.Send(d->node, m, [](Result<peer::Reply>) {});
  }
  for (int signo : std::exchange(d->held_signals, {})) SignalDeputy(*d, signo);
}

void Node::SettleLostMove(const std::string& id, const Error& why) {
  const Deputy* moving = FindDeputy(id);
  if (moving == nullptr) return;
  const std::string from = moving->node;
  const std::string to = moving->migrate_to;
  peer::Message m;
  m.mutable_guest_query()->add_ids(id);
  peers_.Send(to, m, [this, id, from, to, why](Result<peer::Reply> r) {
    Deputy* d = FindDeputy(id);
    if (d == nullptr || d->state != "migrating" || d->node != from) return;
    if (r && r->guest_query().processes_size() == 1 &&
        r->guest_query().processes(0).state() == "running") {
      // It runs there: the move was over before its old node went.
      peer::MigrationDone done;
      done.set_id(id);
      done.set_ok(true);
      done.set_node(to);
      done.set_pid(r->guest_query().processes(0).pid());
      FinishMigration(from, done);
      return;
    }
    // Should it run there after all (a restore that finishes late), it must
    // not go on without its home.
    SendSignal(to, id, SIGKILL);
    EndDeputy(id, LostReply(fmt::format("process {} is lost with node {} while moving to {}: {}",
                                        id, from, to, why.ToString())));
  });
}

void Node::AnswerMigrate(Deputy& deputy, control::Reply reply) {
  if (!deputy.migrate_asker.empty()) {
    peer::Message m;
    m.mutable_forwarded_answer()->set_session(deputy.migrate_asker_sid);
    *m.mutable_forwarded_answer()->mutable_reply() = reply;
    peers_.Send(deputy.migrate_asker, m, [](Result<peer::Reply>) {});
  }
  const std::uint64_t sid = deputy.migrate_sid;
  // Progress while it moves; anything else is the outcome, and ends the wait.
  if (!reply.has_progress()) {
    deputy.migrate_asker.clear();
    deputy.migrate_asker_sid = 0;
    deputy.migrate_sid = 0;
  }
  if (sid != 0) Send(sid, std::move(reply));
}

Status Node::MigrateGuestAway(const std::string& home, const peer::MigrateGuest& request) {
  Guest* g = FindGuest(request.id());
  if (g == nullptr || g->home != home) {
    return MakeError(Errc::kNotFound, "no process {} on {}", request.id(), peers_.self());
  }
  if (g->exited || g->moved) return MakeError(Errc::kNotFound, "process {} has ended", g->id);
  if (g->migrating) return MakeError(Errc::kUnavailable, "process {} is already moving", g->id);
  const Member* target = peers_.Find(request.to());
  if (target == nullptr)
    return MakeError(Errc::kNotFound, "no node '{}' in this pool", request.to());
  peer::MovingGuest moving;
  moving.set_id(g->id);
  moving.set_home(g->home);
  moving.set_uid(g->uid);
  for (const auto& a : g->argv) moving.add_argv(a);
  moving.set_cpu_seconds(g->cpu_before + std::max(0.0, CpuSeconds(g->pid)));
  moving.set_source(peers_.self());
  moving.set_gid(g->gid);
  moving.set_migration_id(next_migration_++);
  ROAM_ASSIGN_OR_RETURN(std::string sealed,
                        peers_.SealFor(request.to(), kMovingGuestKind, moving.SerializeAsString()));
  g->migrating = true;
  g->done.set_node(request.to());
  MigrationJob job;
  job.id = g->id;
  job.pid = g->pid;
  job.target_address = target->data;
  job.migration_id = moving.migration_id();
  job.guest = std::move(sealed);
  job.mode = request.mode() == "pre-copy"    ? migrate::MigrationMode::kPreCopy
             : request.mode() == "post-copy" ? migrate::MigrationMode::kPostCopy
                                             : migrate::MigrationMode::kStopCopy;
  g->done.set_mode(request.mode());
  migrator_->Submit(std::move(job));
  return Ok();
}

void Node::OnMigrationOutcome(MigrationOutcome outcome) {
  Guest* g = FindGuest(outcome.id);
  if (g == nullptr) return;
  g->migrating = false;
  if (g->rebalancing) {
    if (outcome.report) {
      g->rebalancing = false;
    } else {
      // It stays: the ledger takes back the move Rebalance recorded.
      if (options_.balancer != nullptr) {
        const std::uint64_t now = PoolNow();
        options_.balancer->Record(peers_.self(), now, 1);
        options_.balancer->Record(g->done.node(), now, -1);
      }
      PostponeMove(*g);
    }
  }
  g->done.set_id(g->id);
  if (!outcome.report) {
    // It runs on here. Tell home; an exit that came meanwhile is reported now.
    peer::Message m;
    *m.mutable_migration_done() = g->done;
    m.mutable_migration_done()->set_ok(false);
    ToWire(outcome.report.error(), m.mutable_migration_done()->mutable_error());
    g->done.Clear();
    peers_.Send(g->home, m, [](Result<peer::Reply>) {});
    MaybeReportExit(*g);
    return;
  }
  const auto& report = *outcome.report;
  ++migrations_out_;
  UnbindGuest(*g);
  g->moved = true;
  g->done.set_ok(true);
  g->done.set_pid(g->ns_pid);  // kept: restored in a pid namespace of its own
  g->done.set_downtime_ns(report.downtime_ns);
  g->done.set_total_ns(report.total_ns);
  g->done.set_bytes(report.bytes_sent + report.bytes_served);  // put, or served (post-copy)
  g->done.set_restore_ns(report.restore_ns);
  g->done.set_bytes_frozen(report.bytes_sent_frozen);
  g->done.set_rounds(report.rounds);
  // The named fault: this node dies the moment the move is over, before
  // home hears of it (home must find the process at its new node).
  if (FaultInjected("roamd-exit-after-move")) _exit(1);
  // The capture killed the copy here: its exit is near (or already seen),
  // then the output pipes drain, then HandOver.
  OnGuestExit(g->id);
  MaybeReportExit(*g);
}

void Node::HandOver(Guest& guest) {
  // What the process had not read of its stdin moves with it: the bytes
  // still in the old pipe (nobody reads it any more), then those queued.
  std::string carry;
  int available = 0;
  if (guest.stdin_reader.valid() && ioctl(guest.stdin_reader.get(), FIONREAD, &available) == 0 &&
      available > 0) {
    carry.resize(static_cast<std::size_t>(available));
    const ssize_t n = read(guest.stdin_reader.get(), carry.data(), carry.size());
    carry.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  }
  carry += guest.stdin_queue;
  peer::Message m;
  m.mutable_guest_stdin_carry()->set_id(guest.id);
  m.mutable_guest_stdin_carry()->set_data(std::move(carry));
  m.mutable_guest_stdin_carry()->set_close(guest.stdin_close_requested);
  CarryStdin(guest.id, std::move(m), 0);
}

void Node::CarryStdin(const std::string& id, peer::Message carry, int tries) {
  Guest* guest = FindGuest(id);
  if (guest == nullptr) return;
  peers_.Send(guest->done.node(), carry, [this, id, carry, tries](Result<peer::Reply> r) {
    Guest* g = FindGuest(id);
    if (g == nullptr) return;
    // Busy: the new node's loop has not adopted the process yet (its
    // migration thread reports it through the loop); again shortly.
    if (r && r->busy() && tries < kCarryTries) {
      (void)loop_.AddTimer(kCarryRetry, std::chrono::milliseconds(0),
                           [this, id, carry, tries] { CarryStdin(id, carry, tries + 1); });
      return;
    }
    if (!r || r->busy()) {
      std::fprintf(stderr, "roamd %s: stdin of %s could not follow it: %s\n", peers_.self().c_str(),
                   id.c_str(), r ? "its new node never adopted it" : r.error().ToString().c_str());
    }
    peer::Message done;
    *done.mutable_migration_done() = g->done;
    ReportExit(id, std::move(done), 0);  // retried like an exit; drops the guest once home knows
  });
}

void Node::OnArrival(Arrival arrival) {
  auto opened = OpenMovingGuest(peers_.key(), arrival.running.guest);
  if (!opened) return;  // accept checked it
  const peer::MovingGuest& moving = *opened;
  auto guest = std::make_unique<Guest>();
  guest->id = moving.id();
  guest->home = moving.home();
  guest->uid = moving.uid();
  guest->gid = moving.gid();
  guest->source = moving.source();
  guest->argv.assign(moving.argv().begin(), moving.argv().end());
  guest->cpu_before = moving.cpu_seconds();
  guest->pid = arrival.running.pid;
  guest->init_pid = arrival.running.init_pid;
  guest->ns_pid = NsPid(arrival.running.pid);
  inits_.push_back(arrival.running.init_pid);
  guest->pidfd = UniqueFd(static_cast<int>(syscall(SYS_pidfd_open, arrival.running.pid, 0)));
  guest->stdin_fd = std::move(arrival.stdio[0]);
  guest->stdin_reader = std::move(arrival.stdin_reader);
  guest->out[0].fd = std::move(arrival.stdio[1]);
  guest->out[1].fd = std::move(arrival.stdio[2]);
  if (!guest->pidfd.valid() || FindGuest(guest->id) != nullptr) {
    // Cannot watch it (gone already) or a duplicate: never two copies.
    kill(arrival.running.init_pid, SIGKILL);
    inits_.push_back(arrival.running.pid);  // reaped with the inits
    return;
  }
  guest->arrived_ns = PoolNow();
  ++migrations_in_;
  Guest& g = *guest;
  guests_.emplace(g.id, std::move(guest));
  WatchGuest(g);
  BindGuest(g);
}

// ---- pool messages --------------------------------------------------------

Result<peer::Reply> Node::OnPeerMessage(const std::string& sender, const peer::Message& message) {
  peer::Reply reply;
  switch (message.what_case()) {
    case peer::Message::kStartGuest: {
      if (HomeOf(message.start_guest().id()) != sender) {
        return MakeError(Errc::kPermissionDenied, "node {} may not start process {}", sender,
                         message.start_guest().id());
      }
      if (sender != peers_.self()) ROAM_TRY(TakesGuests(refusing_->load(), peers_.self()));
      ROAM_ASSIGN_OR_RETURN(const pid_t ns_pid, StartGuest(sender, message.start_guest()));
      reply.mutable_start_guest()->set_pid(ns_pid);
      return reply;
    }
    case peer::Message::kGuestOutput: {
      const auto& out = message.guest_output();
      Deputy* d = FindDeputy(out.id());
      if (d != nullptr && d->state == "migrating" && d->migrate_to == sender) {
        // Its new node's output waits until the old node's is all here.
        reply.set_busy(true);
        return reply;
      }
      // A process its home does not know: its node ends it (SendOutput).
      if (d == nullptr) return MakeError(Errc::kNotFound, "no process {} at its home", out.id());
      if (d->node != sender) return reply;  // not from where it runs: dropped
      if (d->sid == 0) return reply;
      auto s = sessions_.find(d->sid);
      if (s == sessions_.end()) return reply;
      if (s->second->outbox_bytes > kSessionBacklog) {
        reply.set_busy(true);
        return reply;
      }
      control::Reply r;
      r.mutable_output()->set_fd(out.fd());
      r.mutable_output()->set_data(out.data());
      Send(d->sid, std::move(r));
      return reply;
    }
    case peer::Message::kGuestInput: {
      const auto& in = message.guest_input();
      Guest* g = FindGuest(in.id());
      if (g == nullptr || g->home != sender || g->moved) {
        return MakeError(Errc::kNotFound, "no process {} on {}", in.id(), peers_.self());
      }
      g->stdin_queue += in.data();
      if (in.close()) g->stdin_close_requested = true;
      g->stdin_ack_owed = true;
      PumpInput(*g);
      return reply;
    }
    case peer::Message::kGuestInputAck: {
      Deputy* d = FindDeputy(message.guest_input_ack().id());
      if (d == nullptr || d->node != sender) return reply;
      d->stdin_in_flight = false;
      if (d->sid != 0) Send(d->sid, StdinAck());
      return reply;
    }
    case peer::Message::kGuestSignal: {
      const auto& sig = message.guest_signal();
      Guest* g = FindGuest(sig.id());
      if (g == nullptr || g->home != sender) {
        return MakeError(Errc::kNotFound, "no process {} on {}", sig.id(), peers_.self());
      }
      if (!g->exited && kill(g->pid, sig.signo()) != 0) {
        return ErrnoError(errno, "kill {} (pid {})", sig.id(), g->pid);
      }
      return reply;
    }
    case peer::Message::kGuestExited: {
      const auto& ex = message.guest_exited();
      Deputy* d = FindDeputy(ex.id());
      if (d != nullptr && d->state == "migrating" && d->migrate_to == sender) {
        reply.set_busy(true);  // it ended right after its move: once the move is over
        return reply;
      }
      if (d == nullptr || d->node != sender) {
        return MakeError(Errc::kNotFound, "no deputy for {} on {}", ex.id(), peers_.self());
      }
      control::Reply exited;
      exited.mutable_exited()->set_exit_code(ex.exit_code());
      exited.mutable_exited()->set_signal(ex.signal());
      EndDeputy(ex.id(), std::move(exited));
      return reply;
    }
    case peer::Message::kNodeStatus: {
      reply.mutable_node_status()->set_cpus(options_.cpus);
      reply.mutable_node_status()->set_load(load_);
      reply.mutable_node_status()->set_processes(static_cast<std::uint32_t>(guests_.size()));
      const pool::DropCounters& dropped = peers_.counters();
      reply.mutable_node_status()->set_dropped_malformed(dropped.malformed);
      reply.mutable_node_status()->set_dropped_bad_version(dropped.bad_version);
      reply.mutable_node_status()->set_dropped_bad_mac(dropped.bad_mac);
      reply.mutable_node_status()->set_dropped_replayed(dropped.replayed);
      std::uint32_t guests = 0;
      for (const auto& [id, g] : guests_) guests += g->home != peers_.self() ? 1 : 0;
      reply.mutable_node_status()->set_guests(guests);
      if (options_.balancer != nullptr) {
        reply.mutable_node_status()->set_runnable(options_.balancer->own().load_milli() / 1000.0);
      }
      reply.mutable_node_status()->set_migrations_in(migrations_in_);
      reply.mutable_node_status()->set_migrations_out(migrations_out_);
      reply.mutable_node_status()->set_balance(std::string(BalanceModeName(
          options_.balancer != nullptr ? options_.balancer->mode() : BalanceMode::kOff)));
      if (options_.balancer != nullptr) {
        reply.mutable_node_status()->set_gossip(
            std::string(GossipKindName(options_.balancer->gossip_kind())));
      }
      reply.mutable_node_status()->set_draining((refusing_->load() & load::kDraining) != 0);
      reply.mutable_node_status()->set_owner_active((refusing_->load() & load::kOwnerActive) != 0);
      if (options_.topology != nullptr) {
        const auto free = numa::FreeCoresPerNumaNode(*options_.topology, core_ledger_);
        const int nodes = std::min<int>(options_.topology->numa_nodes(), free.size());
        for (int i = 0; i < nodes; ++i) reply.mutable_node_status()->add_free_cores(free[i]);
      }
      return reply;
    }
    case peer::Message::kGuestQuery: {
      for (const auto& id : message.guest_query().ids()) {
        Guest* g = FindGuest(id);
        if (g == nullptr || g->home != sender) continue;
        auto* p = reply.mutable_guest_query()->add_processes();
        p->set_id(id);
        p->set_node(peers_.self());
        p->set_pid(g->ns_pid);
        // An exited process's CPU time is its last sample's.
        p->set_cpu_seconds(g->exited ? g->cpu_before + g->cpu_at_last_sample
                                     : g->cpu_before + std::max(0.0, CpuSeconds(g->pid)));
        p->set_state(g->moved       ? "moved"
                     : g->migrating ? "migrating"
                     : g->exited    ? "exiting"
                                    : "running");
      }
      return reply;
    }
    case peer::Message::kForward: {
      const auto& fwd = message.forward();
      if (fwd.request().has_ps()) {
        // Only this node's own processes: the asker gathers the rest.
        for (const auto& [id, deputy] : deputies_) {
          ProcessInfoOf(*deputy, reply.mutable_control()->mutable_ps()->add_processes());
        }
        return reply;
      }
      if (!fwd.request().has_kill() && !fwd.request().has_migrate()) {
        return MakeError(Errc::kInvalidArgument, "only kill, migrate and ps are forwarded");
      }
      ROAM_ASSIGN_OR_RETURN(auto answer, HandleAtHome(fwd.uid(), fwd.request(), 0));
      if (answer) {
        *reply.mutable_control() = std::move(*answer);
        return reply;
      }
      // A move under way: its outcome goes to the asker when it ends.
      if (Deputy* d = FindDeputy(CanonicalId(fwd.request().migrate().id(), peers_.self()))) {
        d->migrate_asker = sender;
        d->migrate_asker_sid = fwd.session();
      }
      reply.set_answer_follows(true);
      return reply;
    }
    case peer::Message::kMigrateGuest:
      ROAM_TRY(MigrateGuestAway(sender, message.migrate_guest()));
      return reply;
    case peer::Message::kReserve:
      ROAM_TRY(TakesGuests(refusing_->load(), peers_.self()));
      if (options_.balancer != nullptr &&
          !options_.balancer->Admit(message.reserve().load_per_cpu(), PoolNow())) {
        return MakeError(Errc::kResourceExhausted, "{} has no room for it now", peers_.self());
      }
      return reply;
    case peer::Message::kDrain:
      if (message.drain().node() != peers_.self()) {
        return MakeError(Errc::kInvalidArgument, "a drain of {} sent to {}", message.drain().node(),
                         peers_.self());
      }
      *reply.mutable_control() = SetDraining(!message.drain().undrain());
      return reply;
    case peer::Message::kMigrationDone:
      FinishMigration(sender, message.migration_done());
      return reply;
    case peer::Message::kForwardedAnswer: {
      const auto& answer = message.forwarded_answer();
      auto it = awaited_homes_.find(answer.session());
      if (it != awaited_homes_.end() && it->second.home == sender) {
        // Progress while it moves; anything else ends the wait.
        if (!answer.reply().has_progress()) awaited_homes_.erase(it);
        Send(answer.session(), answer.reply());
      }
      return reply;
    }
    case peer::Message::kMigrationProgress: {
      const auto& p = message.migration_progress();
      Deputy* d = FindDeputy(p.id());
      if (d == nullptr || d->node != sender) return reply;
      control::Reply progress;
      progress.mutable_progress()->set_done(p.done());
      progress.mutable_progress()->set_total(p.total());
      progress.mutable_progress()->set_what(
          fmt::format("moving {} from {} to {}", d->id, d->node, d->migrate_to));
      AnswerMigrate(*d, std::move(progress));
      return reply;
    }
    case peer::Message::kGuestStdinCarry: {
      const auto& carry = message.guest_stdin_carry();
      Guest* g = FindGuest(carry.id());
      if (g == nullptr) {
        reply.set_busy(true);  // not adopted yet: its arrival is on its way through the loop
        return reply;
      }
      if (g->source != sender) {
        return MakeError(Errc::kPermissionDenied, "stdin of {} may come only from {}", carry.id(),
                         g->source);
      }
      // Older than anything the home sends from now on: in front.
      g->stdin_queue.insert(0, carry.data());
      if (carry.close()) g->stdin_close_requested = true;
      PumpInput(*g);
      return reply;
    }
    case peer::Message::kReply:
    case peer::Message::WHAT_NOT_SET:
      break;
  }
  return MakeError(Errc::kProtocol, "unexpected pool message from {}", sender);
}

}  // namespace roam::daemon
