// Transport benchmark: put and get latency (8 B) and bandwidth (64 KiB,
// 1 MiB) through roam's transport (UCX backend), next to ucx_perftest on the
// same path in the same run:
//   - tcp between two network namespaces (veth; UCX_TLS=tcp), root only;
//   - shared memory between two processes in one namespace
//     (UCX_TLS=posix,cma,self, peer-failure detection off: UCX 1.13 has none
//     on shared memory).
// Like with like: put latency is a ping-pong of 8-byte puts, each side
// busy-polling its own memory, half the round trip (perftest ucp_put_lat);
// bandwidth streams puts or gets back to back and ends with a flush
// (ucp_put_bw, ucp_get). Latency figures are medians over the iterations
// (perftest's 50th percentile) with the averages beside them.
//
// Run: build/bench/transport_bench [--iterations N] [--paths tcp_netns,shm]
// Prints one JSON object per path and measurement.
//
// Internal roles (started by the driver in the right namespace):
//   transport_bench --serve ADDRESS_FILE
//   transport_bench --client ADDRESS_FILE --iterations N
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "roam/launch/local_nodes.h"
#include "roam/transport/transport.h"

namespace {

namespace fs = std::filesystem;
using namespace roam;
using namespace roam::transport;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr std::size_t kRegionBytes = std::size_t{16} << 20;
constexpr std::uint16_t kSetup = 1;     // payload: client address + key; reply: server key
constexpr std::uint16_t kPingPong = 2;  // payload: uint64 rounds; server answers puts
constexpr std::size_t kWindow = 32;     // puts or gets in flight in bandwidth runs

[[noreturn]] void Die(const Error& error) {
  std::fprintf(stderr, "transport_bench: %s\n", error.ToString().c_str());
  std::exit(1);
}
template <typename T>
T Check(Result<T> r) {
  if (!r.has_value()) Die(r.error());
  return std::move(*r);
}
void Check(const Status& s) {
  if (!s.has_value()) Die(s.error());
}

std::uint64_t LoadFlag(const MemoryRegion& region) {
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(region.data()))
      .load(std::memory_order_acquire);
}

// Length-prefixed pair, for the setup message.
Bytes Pack(const Bytes& a, const Bytes& b) {
  Bytes out(sizeof(std::uint32_t));
  const auto n = static_cast<std::uint32_t>(a.size());
  std::memcpy(out.data(), &n, sizeof(n));
  out.insert(out.end(), a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}
Result<std::pair<Bytes, Bytes>> Unpack(ByteView in) {
  std::uint32_t n = 0;
  if (in.size() < sizeof(n)) return MakeError(Errc::kProtocol, "short setup message");
  std::memcpy(&n, in.data(), sizeof(n));
  if (in.size() - sizeof(n) < n) return MakeError(Errc::kProtocol, "bad setup message");
  const auto a = in.subspan(sizeof(n), n);
  const auto b = in.subspan(sizeof(n) + n);
  return std::pair{Bytes(a.begin(), a.end()), Bytes(b.begin(), b.end())};
}

FabricOptions Options(std::string name) {
  FabricOptions options{.name = std::move(name)};
  // Shared memory has no peer-failure detection in UCX 1.13; asking for it
  // would rule shared memory out.
  const char* tls = std::getenv("UCX_TLS");
  options.detect_peer_failure =
      tls == nullptr || std::string_view(tls).find("tcp") != std::string_view::npos;
  return options;
}

// --- server -----------------------------------------------------------------

int Serve(const fs::path& address_file) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  auto fabric = Check(OpenFabric("ucx", Options("bench-server")));
  auto region = Check(fabric->Allocate(kRegionBytes));
  std::unique_ptr<Endpoint> back;
  std::unique_ptr<RemoteKey> back_key;
  std::uint64_t rounds = 0;
  std::uint64_t next = 0;
  std::uint64_t pong = 0;

  fabric->Handle(kSetup, [&](const Message& m) -> Result<Bytes> {
    ROAM_ASSIGN_OR_RETURN(auto pair, Unpack(m.payload));
    ROAM_ASSIGN_OR_RETURN(back, fabric->Connect(pair.first));
    ROAM_ASSIGN_OR_RETURN(back_key, back->UnpackKey(pair.second));
    return region->PackKey();
  });
  fabric->Handle(kPingPong, [&](const Message& m) -> Result<Bytes> {
    if (m.payload.size() != sizeof(rounds)) return MakeError(Errc::kProtocol, "bad ping-pong");
    std::memcpy(&rounds, m.payload.data(), sizeof(rounds));
    next = 1;
    std::memset(region->data(), 0, sizeof(std::uint64_t));
    return Bytes{};
  });

  const Bytes address = Check(fabric->Address());
  {
    const fs::path tmp = address_file.string() + ".tmp";
    std::ofstream out(tmp, std::ios::binary);
    out.write(reinterpret_cast<const char*>(address.data()),
              static_cast<std::streamsize>(address.size()));
    out.close();
    fs::rename(tmp, address_file);
  }
  // Busy-polls, as perftest's responder does.
  while (true) {
    fabric->Progress();
    if (next != 0 && next <= rounds && LoadFlag(*region) == next) {
      pong = next;
      Check(back->Put(ByteView(reinterpret_cast<const std::byte*>(&pong), sizeof(pong)),
                      back_key->base(), *back_key));
      ++next;
    }
  }
}

// --- client -----------------------------------------------------------------

struct Client {
  std::unique_ptr<Fabric> fabric;
  std::unique_ptr<MemoryRegion> region;
  std::unique_ptr<Endpoint> ep;
  std::unique_ptr<RemoteKey> key;
};

Client Connect(const fs::path& address_file) {
  Client c;
  c.fabric = Check(OpenFabric("ucx", Options("bench-client")));
  c.region = Check(c.fabric->Allocate(kRegionBytes));
  std::ifstream in(address_file, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  c.ep = Check(c.fabric->Connect(Bytes(p, p + s.size())));
  const Bytes setup = Pack(Check(c.fabric->Address()), Check(c.region->PackKey()));
  const Bytes server_key =
      Check(RequestBlocking(*c.fabric, *c.ep, kSetup, setup, std::chrono::seconds(20)));
  c.key = Check(c.ep->UnpackKey(server_key));
  return c;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Half round trips of 8-byte put ping-pong, in microseconds.
json PutLatency(Client& c, std::uint64_t iterations) {
  const std::uint64_t warmup = iterations / 10;
  const std::uint64_t total = warmup + iterations;
  const Bytes rounds = [&] {
    Bytes b(sizeof(total));
    std::memcpy(b.data(), &total, sizeof(total));
    return b;
  }();
  std::memset(c.region->data(), 0, sizeof(std::uint64_t));
  Check(RequestBlocking(*c.fabric, *c.ep, kPingPong, rounds, std::chrono::seconds(20)));
  std::vector<double> half_rtt_us;
  half_rtt_us.reserve(iterations);
  std::uint64_t ping = 0;
  Clock::time_point measured_start{};
  for (std::uint64_t i = 1; i <= total; ++i) {
    if (i == warmup + 1) measured_start = Clock::now();
    const Clock::time_point t0 = Clock::now();
    ping = i;
    Check(c.ep->Put(ByteView(reinterpret_cast<const std::byte*>(&ping), sizeof(ping)),
                    c.key->base(), *c.key));
    while (LoadFlag(*c.region) != i) c.fabric->Progress();
    if (i > warmup) {
      half_rtt_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() /
                            2);
    }
  }
  const double overall =
      std::chrono::duration<double, std::micro>(Clock::now() - measured_start).count() /
      static_cast<double>(2 * iterations);
  return {{"median_us", Median(half_rtt_us)}, {"average_us", overall}};
}

// Streams `iterations` operations of `size` with kWindow in flight, all to
// the start of the peer's region as perftest does, then a flush; MB/s as ucx_perftest counts them
// (2^20 bytes).
json Bandwidth(Client& c, bool put, std::size_t size, std::uint64_t iterations) {
  Bytes local(size, std::byte{0x5a});
  std::size_t in_flight = 0;
  auto done = [&](const Status& s) {
    Check(s);
    --in_flight;
  };
  auto stream = [&](std::uint64_t count) {
    for (std::uint64_t i = 0; i < count; ++i) {
      while (in_flight >= kWindow) c.fabric->Progress();
      ++in_flight;
      if (put) {
        Check(c.ep->Put(local, c.key->base(), *c.key, done));
      } else {
        Check(c.ep->Get(local, c.key->base(), *c.key, done));
      }
    }
    while (in_flight != 0) c.fabric->Progress();
    Check(FlushBlocking(*c.fabric, *c.ep, std::chrono::seconds(60)));
  };
  stream(iterations / 10);  // warm-up, as perftest's -w
  const Clock::time_point start = Clock::now();
  stream(iterations);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return {{"mb_per_s", static_cast<double>(size) * static_cast<double>(iterations) / seconds /
                           (1024.0 * 1024.0)},
          {"us_per_op", seconds * 1e6 / static_cast<double>(iterations)}};
}

// 16 MiB as 4 MiB puts (a migration's put size) and a flush, in ms, each
// after `idle` with nothing sent: how fast a move's pages go when it
// starts on a quiet link, against the same burst back to back.
std::vector<double> Bursts(Client& c, std::chrono::milliseconds idle, int count) {
  constexpr std::size_t kBurst = std::size_t{16} << 20;
  constexpr std::size_t kPut = std::size_t{4} << 20;
  Bytes local(kPut, std::byte{0x5a});
  std::vector<double> ms;
  for (int r = 0; r < count; ++r) {
    std::this_thread::sleep_for(idle);
    std::size_t in_flight = 0;
    const Clock::time_point start = Clock::now();
    for (std::size_t done = 0; done < kBurst; done += kPut) {
      ++in_flight;
      Check(c.ep->Put(local, c.key->base(), *c.key, [&](const Status& s) {
        Check(s);
        --in_flight;
      }));
      c.fabric->Progress();
    }
    while (in_flight != 0) c.fabric->Progress();
    Check(FlushBlocking(*c.fabric, *c.ep, std::chrono::seconds(60)));
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return ms;
}

// One 8-byte get at a time, in microseconds.
json GetLatency(Client& c, std::uint64_t iterations) {
  Bytes local(8);
  std::vector<double> us;
  us.reserve(iterations);
  const std::uint64_t warmup = iterations / 10;
  Clock::time_point start{};
  for (std::uint64_t i = 0; i < warmup + iterations; ++i) {
    if (i == warmup) start = Clock::now();
    const Clock::time_point t0 = Clock::now();
    bool got = false;
    Check(c.ep->Get(local, c.key->base(), *c.key, [&](const Status& s) {
      Check(s);
      got = true;
    }));
    while (!got) c.fabric->Progress();
    if (i >= warmup) {
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
  }
  const double overall = std::chrono::duration<double, std::micro>(Clock::now() - start).count() /
                         static_cast<double>(iterations);
  return {{"median_us", Median(us)}, {"average_us", overall}};
}

int RunClient(const fs::path& address_file, std::uint64_t iterations) {
  Client c = Connect(address_file);
  json out;
  out["put_lat_8"] = PutLatency(c, iterations);
  out["get_lat_8"] = GetLatency(c, iterations / 10);
  out["burst_16MiB_back_to_back"] = Bursts(c, std::chrono::milliseconds(0), 5);
  out["burst_16MiB_after_idle"] = Bursts(c, std::chrono::milliseconds(300), 5);
  out["put_bw_65536"] = Bandwidth(c, true, 65536, std::max<std::uint64_t>(iterations / 5, 100));
  out["put_bw_1048576"] = Bandwidth(c, true, 1 << 20, std::max<std::uint64_t>(iterations / 50, 50));
  out["get_bw_65536"] = Bandwidth(c, false, 65536, std::max<std::uint64_t>(iterations / 5, 100));
  out["get_bw_1048576"] =
      Bandwidth(c, false, 1 << 20, std::max<std::uint64_t>(iterations / 50, 50));
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

// --- driver -----------------------------------------------------------------

struct PathSetup {
  std::string name;
  int nodes;  // 2: client in node 0, server in node 1; 1: both in node 0
  launch::LocalNodes::Environment env;
};

struct Perftest {
  std::string key;  // our name for the measurement
  std::string test;
  std::size_t size;
  std::uint64_t iterations;
};

// The "Final" numbers of ucx_perftest -f: iterations, latency 50%ile,
// average, overall (us), bandwidth average, overall (MB/s), message rates.
Result<std::vector<double>> ParseFinal(const std::string& out) {
  std::istringstream lines(out);
  std::string line;
  std::vector<double> last;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::vector<double> numbers;
    std::string field;
    bool all_numbers = true;
    while (fields >> field) {
      if (field == "Final:") continue;
      char* end = nullptr;
      const double v = std::strtod(field.c_str(), &end);
      if (end == field.c_str() || *end != '\0') {
        all_numbers = false;
        break;
      }
      numbers.push_back(v);
    }
    if (all_numbers && numbers.size() == 8) last = numbers;
  }
  if (last.empty()) return MakeError(Errc::kProtocol, "no final line in ucx_perftest output");
  return last;
}

Result<json> RunPerftest(launch::LocalNodes& nodes, const PathSetup& path, const Perftest& t,
                         int port) {
  const int server_node = path.nodes - 1;
  // The server's report goes nowhere: our stdout carries JSON only.
  ROAM_ASSIGN_OR_RETURN(
      pid_t server,
      nodes.Spawn(server_node,
                  {"sh", "-c", fmt::format("exec ucx_perftest -p {} >/dev/null 2>&1", port)},
                  path.env));
  Result<launch::CommandOutput> out = MakeError(Errc::kUnavailable, "not run");
  // The server needs a moment to listen; the client gives up at once.
  for (int attempt = 0; attempt < 50; ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    out = nodes.Run(0,
                    {"ucx_perftest", nodes.address(server_node), "-p", std::to_string(port), "-t",
                     t.test, "-s", std::to_string(t.size), "-n", std::to_string(t.iterations), "-w",
                     std::to_string(t.iterations / 10), "-f"},
                    path.env, std::chrono::seconds(120));
    if (!out.has_value() || out->exit_code == 0 || out->err.find("rror") == std::string::npos) {
      break;
    }
  }
  ::kill(server, SIGKILL);
  ::waitpid(server, nullptr, 0);
  ROAM_TRY(out);
  if (out->exit_code != 0) {
    return MakeError(Errc::kIo, "ucx_perftest {} failed: {}", t.test, out->err);
  }
  ROAM_ASSIGN_OR_RETURN(std::vector<double> f, ParseFinal(out->out));
  if (t.key.find("_lat_") != std::string::npos) {
    // ucp_put_lat reports half the round trip already.
    return json{{"median_us", f[1]}, {"average_us", f[3]}};
  }
  return json{{"mb_per_s", f[5]}, {"us_per_op", f[3]}};
}

// Runs `program --serve FILE` in the server's node and `program --client
// FILE --iterations N` in node 0; the client's JSON.
Result<json> RunPair(launch::LocalNodes& nodes, const PathSetup& path, const fs::path& dir,
                     const std::string& program, std::uint64_t iterations) {
  const std::string self = program;
  const fs::path address_file =
      dir / fmt::format("{}.{}.address", path.name, fs::path(program).filename().string());
  fs::remove(address_file);
  ROAM_ASSIGN_OR_RETURN(pid_t server,
                        nodes.Spawn(path.nodes - 1, {self, "--serve", address_file}, path.env));
  for (int i = 0; i < 200 && !fs::exists(address_file); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Result<launch::CommandOutput> out =
      nodes.Run(0, {self, "--client", address_file, "--iterations", std::to_string(iterations)},
                path.env, std::chrono::seconds(300));
  ::kill(server, SIGKILL);
  ::waitpid(server, nullptr, 0);
  ROAM_TRY(out);
  if (out->exit_code != 0) return MakeError(Errc::kIo, "client failed: {}", out->err);
  return json::parse(out->out);
}

double MedianOf(const std::vector<json>& runs, const std::string& key, const std::string& field) {
  std::vector<double> v;
  for (const json& r : runs) v.push_back(r.at(key).at(field).get<double>());
  return Median(v);
}

int Drive(const std::vector<std::string>& paths, std::uint64_t iterations, int repeat) {
  const std::vector<Perftest> tests = {
      {"put_lat_8", "ucp_put_lat", 8, iterations},
      {"get_lat_8", "ucp_get", 8, iterations / 10},
      {"put_bw_65536", "ucp_put_bw", 65536, std::max<std::uint64_t>(iterations / 5, 100)},
      {"put_bw_1048576", "ucp_put_bw", 1 << 20, std::max<std::uint64_t>(iterations / 50, 50)},
      {"get_bw_65536", "ucp_get", 65536, std::max<std::uint64_t>(iterations / 5, 100)},
      {"get_bw_1048576", "ucp_get", 1 << 20, std::max<std::uint64_t>(iterations / 50, 50)},
  };
  const std::string self = fs::canonical("/proc/self/exe").string();
  const std::string get_loop = (fs::path(self).parent_path() / "ucx_get_loop").string();
  const fs::path dir = fs::temp_directory_path() / fmt::format("transport_bench.{}", getpid());
  fs::create_directories(dir);
  int port = 20000 + static_cast<int>(getpid() % 20000);
  for (const std::string& name : paths) {
    PathSetup path;
    if (name == "tcp_netns") {
      path = {name, 2, {{"UCX_TLS", "tcp"}, {"UCX_NET_DEVICES", "eth0"}}};
    } else if (name == "shm") {
      path = {name, 1, {{"UCX_TLS", "posix,cma,self"}}};
    } else {
      Die(MakeError(Errc::kInvalidArgument, "unknown path '{}' (have: tcp_netns, shm)", name));
    }
    launch::LocalNodesOptions options;
    options.nodes = path.nodes;
    auto nodes = Check(launch::LocalNodes::Create(options));
    // Alternate references and ours, `repeat` times; report medians.
    std::vector<json> perftest_runs;
    std::vector<json> get_loop_runs;
    std::vector<json> our_runs;
    for (int r = 0; r < repeat; ++r) {
      json perftest;
      for (const Perftest& t : tests) perftest[t.key] = Check(RunPerftest(*nodes, path, t, port++));
      perftest_runs.push_back(perftest);
      get_loop_runs.push_back(Check(RunPair(*nodes, path, dir, get_loop, iterations)));
      our_runs.push_back(Check(RunPair(*nodes, path, dir, self, iterations)));
    }
    for (const Perftest& t : tests) {
      const bool latency = t.key.find("_lat_") != std::string::npos;
      const bool get = t.key.starts_with("get_");
      const std::string field = latency ? "median_us" : "mb_per_s";
      // Gets compare with the plain UCX loop; perftest's get is reported
      // beside it.
      const std::vector<json>& reference_runs = get ? get_loop_runs : perftest_runs;
      const double ref = MedianOf(reference_runs, t.key, field);
      const double ours = MedianOf(our_runs, t.key, field);
      json line = {{"bench", "transport"},
                   {"path", path.name},
                   {"measurement", t.key},
                   {"unit", latency ? "us" : "MB/s (2^20 B)"},
                   {"roam", ours},
                   {"reference", ref},
                   {"reference_program", get ? "ucx_get_loop" : "ucx_perftest -t " + t.test},
                   {"ratio", ref > 0 ? ours / ref : 0.0},
                   {"target", latency ? "ratio <= 1.2" : "ratio >= 0.9"},
                   {"repeats", repeat},
                   {"iterations", t.iterations}};
      if (get) line["ucx_perftest_ucp_get"] = MedianOf(perftest_runs, t.key, field);
      if (latency) {
        line["roam_average_us"] = MedianOf(our_runs, t.key, "average_us");
        line["reference_average_us"] = MedianOf(reference_runs, t.key, "average_us");
      }
      std::printf("%s\n", line.dump().c_str());
      std::fflush(stdout);
    }
    // Every burst of every repeat: medians and ranges.
    const auto bursts = [&our_runs](const std::string& key) {
      std::vector<double> all;
      for (const json& r : our_runs) {
        for (const double ms : r.at(key)) all.push_back(ms);
      }
      std::sort(all.begin(), all.end());
      return json{{"median_ms", Median(all)}, {"min_ms", all.front()}, {"max_ms", all.back()}};
    };
    const json line = {{"bench", "transport"},
                       {"path", path.name},
                       {"measurement", "put_burst_16MiB"},
                       {"what", "16 MiB as 4 MiB puts and a flush"},
                       {"after_idle_300ms", bursts("burst_16MiB_after_idle")},
                       {"back_to_back", bursts("burst_16MiB_back_to_back")},
                       {"repeats", repeat}};
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
  }
  fs::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 2 && args[0] == "--serve") return Serve(args[1]);
  if (args.size() == 4 && args[0] == "--client" && args[2] == "--iterations") {
    return RunClient(args[1], std::stoull(args[3]));
  }
  std::uint64_t iterations = 20000;
  int repeat = 3;
  std::vector<std::string> paths = {"tcp_netns", "shm"};
  for (std::size_t i = 0; i < args.size(); ++i) {
    const bool has_value = i + 1 < args.size();
    if (args[i] == "--iterations" && has_value) {
      iterations = std::stoull(args[++i]);
    } else if (args[i] == "--repeat" && has_value) {
      repeat = std::stoi(args[++i]);
    } else if (args[i] == "--paths" && has_value) {
      paths.clear();
      std::istringstream list(args[++i]);
      for (std::string p; std::getline(list, p, ',');) paths.push_back(p);
    } else {
      std::fprintf(
          stderr, "usage: transport_bench [--iterations N] [--repeat R] [--paths tcp_netns,shm]\n");
      return 2;
    }
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "transport_bench: needs root (network namespaces as nodes)\n");
    return 1;
  }
  return Drive(paths, iterations, repeat);
}
