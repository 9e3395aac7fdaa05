// Bootstrap: how the ranks of a roam job learn each other's transport
// addresses and keys before any transport connection exists. A small
// collective key-value exchange with PMIx semantics (PMIx_Put, PMIx_Fence
// with data collection, PMIx_Get), in three implementations, the first two
// needing no resource manager:
//   - a shared directory (OpenDirectoryBootstrap), which may be on NFS;
//   - a TCP rendezvous at rank 0 (OpenTcpBootstrap);
//   - the launcher's PMIx, under srun --mpi=pmix or mpirun
//     (OpenPmixBootstrap).
//
//   ROAM_TRY(boot->Put("ucx.addr", address));
//   ROAM_TRY(boot->Fence(std::chrono::seconds(30)));
//   ROAM_ASSIGN_OR_RETURN(auto peer_address, boot->Get(peer, "ucx.addr"));
//
// Rounds: every Fence is one numbered round, and every rank must call Fence
// the same number of times. A Put becomes visible to every rank (the putting
// rank included) when the next Fence completes; putting a key again
// overwrites it from that Fence on. Get answers from the last completed
// Fence only.
//
// Failure: a Fence that fails (a rank did not arrive in time, a rank died, a
// peer broke the protocol) leaves the object broken: later Put and Fence
// calls return the same error, while Get still answers from the last
// completed Fence. Every error is one line naming the ranks involved.
//
// Thread-safety: a Bootstrap object is used by one thread at a time (one
// per rank; ranks may be threads of one process, each with its own object).
// Lifetime: destroying the object leaves the job. TCP: rank 0 serves every
// round, and may go once its own last Fence has returned (the table is then
// on its way to every rank); any rank whose object is destroyed before a
// round completes makes that round fail at the others. Directory: nothing
// is removed on destruction (other ranks may still read this rank's files);
// the directory's owner removes it after the job.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "roam/base/error.h"

namespace roam::transport {

// Keys are 1 to 511 bytes without NUL (PMIx's PMIX_MAX_KEYLEN); values any
// bytes up to 1 MiB.
inline constexpr std::size_t kMaxBootstrapKeyBytes = 511;
inline constexpr std::size_t kMaxBootstrapValueBytes = std::size_t{1} << 20;

// How much longer than its Fence timeout a TCP rank other than 0 waits for
// rank 0's verdict on a round (see Bootstrap::Fence).
inline constexpr std::chrono::milliseconds kBootstrapVerdictGrace{250};

class Bootstrap {
 public:
  virtual ~Bootstrap() = default;
  Bootstrap(const Bootstrap&) = delete;
  Bootstrap& operator=(const Bootstrap&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Publishes key=value under this rank; visible to every rank after the
  // next Fence. kInvalidArgument for a key or value outside the limits above.
  virtual Status Put(std::string_view key, std::span<const std::byte> value) = 0;

  // Collective: returns once every rank has called Fence for this round; all
  // puts made before it by any rank are then visible. Deadline-bounded:
  // kTimeout naming the ranks that did not arrive; kUnavailable naming a
  // rank whose connection closed (TCP; a dead rank in a directory shows as
  // one that did not arrive). TCP: a rank other than 0 waits up to
  // kBootstrapVerdictGrace beyond `timeout` for rank 0's verdict, so that its
  // error, too, names the missing ranks.
  virtual Status Fence(std::chrono::milliseconds timeout) = 0;

  // The value `rank` published before the last completed Fence.
  // kInvalidArgument for a rank outside [0, size()); kNotFound if that rank
  // published no such key, or if no Fence has completed yet.
  virtual Result<std::vector<std::byte>> Get(int rank, std::string_view key) const = 0;

 protected:
  Bootstrap() = default;
};

// Ranks meet in `dir` (created if missing), one file per rank and round,
// written under a temporary name and renamed into place: rename is atomic
// on local file systems and NFS alike, and no lock is taken. Fence polls the
// directory listing (opening the directory makes an NFS client revalidate
// it, where a stat of a missing name could be answered from its negative
// cache), backing off from 1 ms to 50 ms. The directory must be fresh for
// each job: kAlreadyExists if it holds files of this rank already. Files of
// the last two rounds stay; older ones are removed by their writer.
Result<std::unique_ptr<Bootstrap>> OpenDirectoryBootstrap(const std::filesystem::path& dir,
                                                          int rank, int size);

// The TCP rendezvous. Rank 0 listens on `rendezvous` ("host:port",
// "[v6addr]:port"), gathers every rank's puts at each Fence and sends every
// rank the full table. Other ranks connect to it, retrying for up to
// `connect_timeout` (rank 0 may start later), and fail with kUnavailable
// naming rank 0 after that. Every read and write is bounded by a deadline; a
// connection that does not introduce itself as a rank of this job (a port
// scanner, garbage) is dropped without disturbing the job.
class TcpBootstrap : public Bootstrap {
 public:
  // The port rank 0 listens on: the one the kernel chose where the
  // rendezvous names port 0 (tests). Other ranks: the rendezvous port.
  virtual std::uint16_t port() const = 0;
};

// kInvalidArgument for a rank outside [0, size), size < 1, a malformed
// rendezvous, or port 0 given to a rank other than 0.
Result<std::unique_ptr<TcpBootstrap>> OpenTcpBootstrap(std::string_view rendezvous, int rank,
                                                       int size,
                                                       std::chrono::milliseconds connect_timeout);

// The launcher's PMIx: rank and size are the job's (one rank per process;
// PMIx_Init when opened, PMIx_Finalize when destroyed). Each Fence is a
// PMIx_Fence of the whole job with data collection (its timeout in whole
// seconds, rounded up); Get asks the local PMIx server only. A failed Fence
// names the round and the job's size but not the missing ranks: PMIx does
// not say (the launcher's log does).
class PmixBootstrap : public Bootstrap {
 public:
  // Where the launcher placed this rank: the node's name as it knows it
  // (PMIX_HOSTNAME; empty if it gives none), and this rank's index among the
  // job's ranks on that node and their count (0 and 1 if it does not say).
  virtual const std::string& hostname() const = 0;
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
};

// kUnavailable, saying how to start it, for a process no PMIx launcher
// started (no PMIX_NAMESPACE in its environment); the PMIx error otherwise.
Result<std::unique_ptr<PmixBootstrap>> OpenPmixBootstrap();

// A bootstrap from a spec, for command-line flags: "dir:/shared/path" or
// "tcp:host:port". `connect_timeout` applies to "tcp:" only.
Result<std::unique_ptr<Bootstrap>> OpenBootstrap(std::string_view spec, int rank, int size,
                                                 std::chrono::milliseconds connect_timeout);

}  // namespace roam::transport
