// The PMIx bootstrap (roam/transport/bootstrap.h OpenPmixBootstrap): the
// launcher's own key-value exchange. srun --mpi=pmix and mpirun run a PMIx
// server on every node; each rank is its client.
//
// PMIx answers a Get with the newest value a rank committed, which may be
// from a round still under way (a fast rank commits its next round's puts
// before a slow one reads the last). So, as in the directory bootstrap,
// each rank publishes at fence round n one key, "roam.round.<n>", holding
// every entry it has put so far (a RankFile): PMIx_Put(PMIX_GLOBAL) and
// PMIx_Commit, then PMIx_Fence over the whole namespace with
// PMIX_COLLECT_DATA, after which every server holds every rank's file. Get
// reads another rank's file of the last completed round once, from the
// local server with PMIX_IMMEDIATE (a missing key is "not found" at once,
// not requested from the resource manager), and keeps it.
#include <pmix.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "roam/transport/bootstrap.h"
#include "transport/bootstrap/entries.h"

namespace roam::transport {
namespace {

Error PmixError(pmix_status_t status, std::string_view what) {
  const Errc code = status == PMIX_ERR_TIMEOUT           ? Errc::kTimeout
                    : status == PMIX_ERR_NOT_FOUND       ? Errc::kNotFound
                    : status == PMIX_ERR_UNREACH         ? Errc::kUnavailable
                    : status == PMIX_ERR_LOST_CONNECTION ? Errc::kUnavailable
                                                         : Errc::kInternal;
  return Error(code, fmt::format("PMIx: {}: {} ({})", what, PMIx_Error_string(status), status));
}

// The job-level value `key` of the namespace `self` belongs to (rank
// wildcard) or of `self` itself.
Result<pmix_value_t*> GetValue(const pmix_proc_t& proc, const char* key) {
  pmix_value_t* value = nullptr;
  const pmix_status_t status = PMIx_Get(&proc, key, nullptr, 0, &value);
  if (status != PMIX_SUCCESS) return PmixError(status, fmt::format("get {}", key));
  return value;
}

Result<std::uint32_t> GetNumber(const pmix_proc_t& proc, const char* key) {
  ROAM_ASSIGN_OR_RETURN(pmix_value_t * value, GetValue(proc, key));
  std::uint32_t out = 0;
  bool known = true;
  switch (value->type) {
    case PMIX_UINT32:
      out = value->data.uint32;
      break;
    case PMIX_UINT16:
      out = value->data.uint16;
      break;
    case PMIX_INT:
      out = static_cast<std::uint32_t>(value->data.integer);
      break;
    default:
      known = false;
  }
  const auto type = value->type;
  PMIX_VALUE_RELEASE(value);
  if (!known) {
    return MakeError(Errc::kInternal, "PMIx: {} has unexpected type {}", key,
                     PMIx_Data_type_string(type));
  }
  return out;
}

class PmixRank final : public PmixBootstrap {
 public:
  ~PmixRank() override {
    if (initialized_) PMIx_Finalize(nullptr, 0);
  }

  // PMIx_Init, then what the launcher says of this rank and its job.
  Status Init() {
    const pmix_status_t status = PMIx_Init(&self_, nullptr, 0);
    if (status != PMIX_SUCCESS) return PmixError(status, "init");
    initialized_ = true;
    pmix_proc_t job;
    PMIX_LOAD_PROCID(&job, self_.nspace, PMIX_RANK_WILDCARD);
    ROAM_ASSIGN_OR_RETURN(const std::uint32_t size, GetNumber(job, PMIX_JOB_SIZE));
    size_ = static_cast<int>(size);
    rank_ = static_cast<int>(self_.rank);
    ROAM_TRY(CheckRankAndSize(rank_, size_));
    rounds_.emplace(rank_, size_);
    // The node-level facts are optional for a launcher; a missing one reads
    // as "alone on an unnamed node".
    if (auto local_rank = GetNumber(self_, PMIX_LOCAL_RANK))
      local_rank_ = static_cast<int>(*local_rank);
    if (auto local_size = GetNumber(job, PMIX_LOCAL_SIZE))
      local_size_ = static_cast<int>(*local_size);
    if (auto host = GetValue(self_, PMIX_HOSTNAME)) {
      if ((*host)->type == PMIX_STRING && (*host)->data.string != nullptr) {
        hostname_ = (*host)->data.string;
      }
      PMIX_VALUE_RELEASE(*host);
    }
    return Ok();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& hostname() const override { return hostname_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }

  Status Put(std::string_view key, std::span<const std::byte> value) override {
    ROAM_TRY(CheckEntry(key, value));
    if (broken_) return *broken_;
    rounds_->Put(key, value);
    return Ok();
  }

  Status Fence(std::chrono::milliseconds timeout) override {
    if (broken_) return *broken_;
    Status done = RunFence(timeout);
    if (!done) broken_ = done.error();
    return done;
  }

  Result<std::vector<std::byte>> Get(int rank, std::string_view key) const override {
    return rounds_->Get(rank, key, [this](int r, std::uint64_t round) { return Load(r, round); });
  }

 private:
  static std::string RoundKey(std::uint64_t round) { return fmt::format("roam.round.{}", round); }

  Status RunFence(std::chrono::milliseconds timeout) {
    const std::uint64_t round = rounds_->completed();
    const std::string key = RoundKey(round);
    ROAM_ASSIGN_OR_RETURN(std::string file, EncodeRankFile(rank_, round, rounds_->mine()));
    pmix_value_t value;
    PMIX_VALUE_CONSTRUCT(&value);
    value.type = PMIX_BYTE_OBJECT;
    // PMIx_Put copies the bytes.
    value.data.bo.bytes = file.data();
    value.data.bo.size = file.size();
    pmix_status_t status = PMIx_Put(PMIX_GLOBAL, key.c_str(), &value);
    if (status != PMIX_SUCCESS) return PmixError(status, fmt::format("put {}", key));
    status = PMIx_Commit();
    if (status != PMIX_SUCCESS) return PmixError(status, "commit");

    pmix_info_t info[2];
    PMIX_INFO_CONSTRUCT(&info[0]);
    PMIX_INFO_CONSTRUCT(&info[1]);
    bool collect = true;
    PMIX_INFO_LOAD(&info[0], PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
    // Whole seconds, rounded up: PMIx takes no finer timeout, and 0 would
    // mean none at all.
    int seconds = static_cast<int>((timeout.count() + 999) / 1000);
    if (seconds < 1) seconds = 1;
    PMIX_INFO_LOAD(&info[1], PMIX_TIMEOUT, &seconds, PMIX_INT);
    status = PMIx_Fence(nullptr, 0, info, 2);
    PMIX_INFO_DESTRUCT(&info[0]);
    PMIX_INFO_DESTRUCT(&info[1]);
    if (status != PMIX_SUCCESS) {
      // PMIx does not say which ranks were missing; the launcher's log does.
      return PmixError(status, fmt::format("fence round {} of {} ranks (rank {}, {} s)", round,
                                           size_, rank_, seconds));
    }
    rounds_->Complete();
    return Ok();
  }

  Result<EntryMap> Load(int rank, std::uint64_t round) const {
    const std::string key = RoundKey(round);
    pmix_proc_t proc;
    PMIX_LOAD_PROCID(&proc, self_.nspace, static_cast<pmix_rank_t>(rank));
    pmix_info_t info;
    PMIX_INFO_CONSTRUCT(&info);
    bool immediate = true;
    PMIX_INFO_LOAD(&info, PMIX_IMMEDIATE, &immediate, PMIX_BOOL);
    pmix_value_t* value = nullptr;
    const pmix_status_t status = PMIx_Get(&proc, key.c_str(), &info, 1, &value);
    PMIX_INFO_DESTRUCT(&info);
    if (status != PMIX_SUCCESS) {
      return PmixError(status, fmt::format("get {} of rank {}", key, rank));
    }
    const auto where = fmt::format("PMIx key {} of rank {}", key, rank);
    Result<EntryMap> out =
        MakeError(Errc::kCorrupt, "{}: a {}, not bytes", where, PMIx_Data_type_string(value->type));
    if (value->type == PMIX_BYTE_OBJECT) {
      out = DecodeRankFile(std::string_view(value->data.bo.bytes, value->data.bo.size), rank, round,
                           where);
    }
    PMIX_VALUE_RELEASE(value);
    return out;
  }

  pmix_proc_t self_{};
  bool initialized_ = false;
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  std::string hostname_;
  std::optional<RankRounds> rounds_;  // once the job's size is known
  std::optional<Error> broken_;
};

}  // namespace

Result<std::unique_ptr<PmixBootstrap>> OpenPmixBootstrap() {
  // Without a launcher PMIx_Init would look for a system server and fail
  // slowly; the launcher always passes its namespace in the environment.
  const char* nspace = std::getenv("PMIX_NAMESPACE");
  if (nspace == nullptr || *nspace == '\0') {
    return MakeError(Errc::kUnavailable,
                     "not started by a PMIx launcher (no PMIX_NAMESPACE in the environment): "
                     "start it with srun --mpi=pmix or mpirun");
  }
  auto rank = std::make_unique<PmixRank>();
  ROAM_TRY(rank->Init());
  return std::unique_ptr<PmixBootstrap>(std::move(rank));
}

}  // namespace roam::transport
