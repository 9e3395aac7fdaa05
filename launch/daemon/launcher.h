// How a roamd started by a PMIx launcher (srun --mpi=pmix, mpirun) takes
// its place in the pool: whether a launcher started it, the node name it
// goes by, and the pool key rank 0 makes for the job and hands to the
// others through the launcher.
//
// The job key: under PMIx the bootstrap's entries travel only between the
// launcher's servers and the job's own processes (slurmd authenticates its
// peers with munge; the PMIx server's socket is the user's), so a key made
// at start and published there is as private as the job. A pool that must
// outlive the job, or admit daemons started another way, uses a key file.
//
// Thread-safety: free functions; ShareJobKey uses `boot` like any caller of
// a Bootstrap (one thread).
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "launch/pool/pool_key.h"
#include "roam/base/error.h"
#include "roam/transport/bootstrap.h"

namespace roam::daemon {

// A PMIx launcher started this process (it always sets PMIX_NAMESPACE).
bool StartedByPmixLauncher();

// This host's name (gethostname); empty if it has none.
std::string HostName();

// The name of the node a task of a launcher runs on, as `roam` expands %n
// in $ROAM_SOCKET: $SLURMD_NODENAME under Slurm, else HostName().
std::string TaskNodeName();

// Where the launcher placed a rank, as LauncherNodeName reads it.
struct LauncherPlace {
  std::string slurm_node;     // $SLURMD_NODENAME; empty outside Slurm
  std::string launcher_host;  // the launcher's PMIX_HOSTNAME; may be empty
  std::string host;           // gethostname()
  int local_rank = 0;
  int local_size = 1;
};

// What the launcher says of this process: the environment, `boot`, and
// gethostname.
LauncherPlace PlaceOf(const transport::PmixBootstrap& boot);

// The node's name: Slurm's name for the node (distinct even for several
// slurmd on one host), else the launcher's host name, else the host's own;
// with ".<local rank>" appended when several ranks of the job share the
// node (mpirun -np 4 on one host: vm.0 ... vm.3).
std::string LauncherNodeName(const LauncherPlace& place);

// Rank 0 makes a fresh key (PoolKey::Random) and every rank receives it in
// one fence round of `boot`. Every rank must call it at the same point.
Result<pool::PoolKey> ShareJobKey(transport::Bootstrap& boot, std::chrono::milliseconds timeout);

}  // namespace roam::daemon
