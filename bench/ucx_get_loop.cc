// The reference for get latency and bandwidth in transport_bench: the same
// loops as roam's, written straight against UCP, with nothing of roam in
// between. ucx_perftest's ucp_get over tcp waits ~1 ms per operation here
// (its own pacing, not UCX's), so it cannot be the reference for gets.
//
//   ucx_get_loop --serve ADDRESS_FILE
//   ucx_get_loop --client ADDRESS_FILE --iterations N
// The client prints one JSON object: get_lat_8 (median and average us),
// get_bw_65536 and get_bw_1048576 (MB/s of 2^20 bytes, 32 gets in flight,
// all from the start of the server's region, after a 10% warm-up).
#include <signal.h>
#include <sys/prctl.h>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kRegionBytes = std::size_t{16} << 20;
constexpr std::size_t kWindow = 32;

void Ok(ucs_status_t s, const char* what) {
  if (s != UCS_OK) {
    std::fprintf(stderr, "ucx_get_loop: %s: %s\n", what, ucs_status_string(s));
    std::exit(1);
  }
}

struct Ucx {
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
};

Ucx Init() {
  Ucx u;
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA;
  Ok(ucp_init(&params, nullptr, &u.context), "init");
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  Ok(ucp_worker_create(u.context, &wp, &u.worker), "worker");
  return u;
}

void Append(std::string& out, const void* data, std::uint64_t size) {
  out.append(reinterpret_cast<const char*>(&size), sizeof(size));
  out.append(static_cast<const char*>(data), size);
}

std::string Take(const std::string& in, std::size_t& pos) {
  std::uint64_t size = 0;
  std::memcpy(&size, in.data() + pos, sizeof(size));
  pos += sizeof(size);
  std::string out = in.substr(pos, size);
  pos += size;
  return out;
}

int Serve(const std::filesystem::path& file) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  Ucx u = Init();
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  mp.length = kRegionBytes;
  mp.flags = UCP_MEM_MAP_ALLOCATE;
  ucp_mem_h memh = nullptr;
  Ok(ucp_mem_map(u.context, &mp, &memh), "mem_map");
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
  Ok(ucp_mem_query(memh, &attr), "mem_query");
  void* rkey = nullptr;
  std::size_t rkey_size = 0;
  Ok(ucp_rkey_pack(u.context, memh, &rkey, &rkey_size), "rkey_pack");
  ucp_address_t* address = nullptr;
  std::size_t address_size = 0;
  Ok(ucp_worker_get_address(u.worker, &address, &address_size), "address");

  std::string blob;
  Append(blob, address, address_size);
  Append(blob, rkey, rkey_size);
  const auto base = reinterpret_cast<std::uint64_t>(attr.address);
  Append(blob, &base, sizeof(base));
  const std::filesystem::path tmp = file.string() + ".tmp";
  std::ofstream(tmp, std::ios::binary) << blob;
  std::filesystem::rename(tmp, file);
  while (true) ucp_worker_progress(u.worker);  // busy, as the perftest responder
}

struct Target {
  ucp_ep_h ep = nullptr;
  ucp_rkey_h rkey = nullptr;
  std::uint64_t base = 0;
};

void Wait(const Ucx& u, ucs_status_ptr_t request) {
  if (request == nullptr) return;
  if (UCS_PTR_IS_ERR(request)) Ok(UCS_PTR_STATUS(request), "operation");
  while (ucp_request_check_status(request) == UCS_INPROGRESS) ucp_worker_progress(u.worker);
  Ok(ucp_request_check_status(request), "operation");
  ucp_request_free(request);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

nlohmann::json Latency(const Ucx& u, const Target& t, std::uint64_t iterations) {
  std::uint64_t value = 0;
  ucp_request_param_t p{};
  std::vector<double> us;
  const std::uint64_t warmup = iterations / 10;
  Clock::time_point start{};
  for (std::uint64_t i = 0; i < warmup + iterations; ++i) {
    if (i == warmup) start = Clock::now();
    const Clock::time_point t0 = Clock::now();
    Wait(u, ucp_get_nbx(t.ep, &value, sizeof(value), t.base, t.rkey, &p));
    if (i >= warmup) {
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
  }
  const double overall = std::chrono::duration<double, std::micro>(Clock::now() - start).count() /
                         static_cast<double>(iterations);
  return {{"median_us", Median(us)}, {"average_us", overall}};
}

nlohmann::json Bandwidth(const Ucx& u, const Target& t, std::size_t size,
                         std::uint64_t iterations) {
  std::vector<char> local(size);
  std::deque<void*> window;  // up to kWindow gets in flight, oldest first
  ucp_request_param_t p{};
  auto stream = [&](std::uint64_t count) {
    for (std::uint64_t i = 0; i < count; ++i) {
      if (window.size() >= kWindow) {
        Wait(u, window.front());
        window.pop_front();
      }
      ucs_status_ptr_t r = ucp_get_nbx(t.ep, local.data(), size, t.base, t.rkey, &p);
      if (UCS_PTR_IS_ERR(r)) Ok(UCS_PTR_STATUS(r), "get");
      if (r != nullptr) window.push_back(r);
    }
    for (void* r : window) Wait(u, r);
    window.clear();
    Wait(u, ucp_ep_flush_nbx(t.ep, &p));
  };
  stream(iterations / 10);
  const Clock::time_point start = Clock::now();
  stream(iterations);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return {{"mb_per_s", static_cast<double>(size) * static_cast<double>(iterations) / seconds /
                           (1024.0 * 1024.0)},
          {"us_per_op", seconds * 1e6 / static_cast<double>(iterations)}};
}

int Client(const std::filesystem::path& file, std::uint64_t iterations) {
  Ucx u = Init();
  std::ifstream in(file, std::ios::binary);
  const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t pos = 0;
  const std::string address = Take(blob, pos);
  const std::string rkey = Take(blob, pos);
  Target t;
  std::memcpy(&t.base, Take(blob, pos).data(), sizeof(t.base));
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
  ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
  Ok(ucp_ep_create(u.worker, &ep, &t.ep), "ep_create");
  Ok(ucp_ep_rkey_unpack(t.ep, rkey.data(), &t.rkey), "rkey_unpack");
  nlohmann::json out;
  out["get_lat_8"] = Latency(u, t, iterations / 10);
  out["get_bw_65536"] = Bandwidth(u, t, 65536, std::max<std::uint64_t>(iterations / 5, 100));
  out["get_bw_1048576"] = Bandwidth(u, t, 1 << 20, std::max<std::uint64_t>(iterations / 50, 50));
  std::printf("%s\n", out.dump().c_str());
  std::fflush(stdout);
  std::_Exit(0);  // the server is killed by the driver; no goodbye needed
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 2 && args[0] == "--serve") return Serve(args[1]);
  if (args.size() == 4 && args[0] == "--client" && args[2] == "--iterations") {
    return Client(args[1], std::stoull(args[3]));
  }
  std::fprintf(stderr, "usage: ucx_get_loop --serve FILE | --client FILE --iterations N\n");
  return 2;
}
