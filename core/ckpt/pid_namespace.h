// A PID namespace of its own for one process, behind a small init: pid 1 of
// the namespace, which reaps every process reparented to it, forwards the
// signals a user sends (SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2,
// SIGCONT, SIGWINCH) to the process it serves, and exits as soon as that
// process is gone; the kernel then kills whatever is left in the namespace.
// Restore uses it so that a process keeps its pid and every tid (glibc
// caches them) while those ids are always free; the pool runs each process
// so.
//
// The served process is not the init's child but its creator's: the
// creating thread enters the namespace for its children only (setns
// CLONE_NEWPID changes pid_for_children, never the thread's own pid), so
// ptrace and waitpid work as for any child, and clone3 set_tid picks the
// pid inside. Creating and entering a PID namespace needs CAP_SYS_ADMIN.
//
// What becomes of the init when its creator goes: by default nothing (it
// keeps serving its process, both reparented to the nearest subreaper or
// pid 1), which `roam restore --detach` relies on. kEndsWithCreatorThread
// gives the init PR_SET_PDEATHSIG(SIGKILL): the kernel sends it when the
// init's parent *thread* exits (it sits on that thread's children list, and
// pthread_exit is enough, even while the process goes on), and the init's
// death kills everything in its namespace. So a daemon that wants its
// processes to die with it, never orphaned running, creates namespaces with
// it from a thread that lives as long as the daemon. The kernel lets that
// SIGKILL through to a namespace init because it comes from an ancestor
// namespace.
//
// Thread-safety: SpawnInside changes the calling thread's pid_for_children
// for the duration of the call only; a PidNamespace is used from one thread.
// Lifetime: move-only. Destroying one that still owns its init kills the
// init, and with it everything in the namespace, and reaps it. The caller
// must have reaped its own children in the namespace first: the kernel keeps
// a dying init until every process of its namespace has been released.
#pragma once

#include <sys/types.h>

#include <functional>

#include "roam/base/error.h"

namespace roam::ckpt {

enum class InitLifetime {
  kOutlivesCreator,        // the init serves its process whatever its creator does
  kEndsWithCreatorThread,  // the init (and so its namespace) dies with the creating thread
};

class PidNamespace final {
 public:
  // A new namespace and its init, the caller's child. kPermissionDenied,
  // naming CAP_SYS_ADMIN, without it; nothing is started then. With
  // kEndsWithCreatorThread, Create returns only once the init has armed its
  // parent-death signal, so no exit of the creator can slip in before it.
  static Result<PidNamespace> Create(InitLifetime lifetime = InitLifetime::kOutlivesCreator);

  PidNamespace(PidNamespace&& other) noexcept;
  PidNamespace& operator=(PidNamespace&& other) noexcept;
  PidNamespace(const PidNamespace&) = delete;
  PidNamespace& operator=(const PidNamespace&) = delete;
  ~PidNamespace();

  // The init's pid, in the caller's namespace.
  pid_t init_pid() const { return init_pid_; }

  // Runs `spawn`, which creates children of the calling thread (clone3,
  // with set_tid for a chosen pid inside), while those children go into the
  // namespace. The thread's own pid_for_children is put back afterwards,
  // whatever happens.
  Result<pid_t> SpawnInside(const std::function<Result<pid_t>()>& spawn);

  // Names the process the init serves, by its pid inside the namespace. From
  // here the init lives exactly as long as that process (at most: it exits
  // at once if the process is already gone).
  Status Serve(pid_t pid_inside);

  // Leaves the init running and returns its pid: it stays the caller's child,
  // to be reaped after the process it serves. Without Serve() first, the init
  // exits at once.
  pid_t Release();

 private:
  PidNamespace(pid_t init_pid, int init_pidfd, int control)
      : init_pid_(init_pid), init_pidfd_(init_pidfd), control_(control) {}
  void KillAndReap();
  void Close();

  pid_t init_pid_ = -1;
  int init_pidfd_ = -1;
  int control_ = -1;  // our end of the socket the init learns its process from
};

}  // namespace roam::ckpt
