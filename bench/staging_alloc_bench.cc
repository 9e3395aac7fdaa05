// What growing a migration target's staging region costs: Fabric::Allocate
// (UCX backend; it hands back memory already faulted in), as
// TargetImpl::EnsureStaging calls it, next to plain anonymous memory of the
// same size in the same run:
//   - mmap_populate: mmap + MADV_POPULATE_WRITE (the floor: one touch of
//     each small page);
//   - mmap_thp_populate: the same with MADV_HUGEPAGE first (what transparent
//     huge pages cost or save here);
//   - ucx_alloc_memset_populate: what a staging grow cost before
//     Fabric::Allocate mapped its own memory, step by step (ucp_mem_map with
//     UCP_MEM_MAP_ALLOCATE, the memset, EnsureStaging's populate,
//     ucp_mem_unmap);
//   - fabric_allocate: roam's Fabric::Allocate now, then the free.
// Each figure is the median over the repeats, with min and max beside it;
// the kinds are interleaved within each repeat so that a slow phase of the
// machine hits them alike. Huge-page figures come from /proc/self/smaps
// (AnonHugePages of the region) and /proc/vmstat deltas (thp_fault_alloc,
// thp_fault_fallback, compact_stall).
//
// --settle S sleeps S seconds before each sample. A VM whose balloon reports
// free pages (virtio-balloon free page reporting, order >= 9 blocks) hands
// memory freed a few seconds ago back to its host, so that the next touch of
// it faults on the host too: with a settle of a few seconds every sample
// touches such memory, as a staging region grown after an idle spell does.
//
// Run: build/bench/staging_alloc_bench [--mib 256,1024,2048] [--repeats 5]
//        [--settle S]
// UCX_TLS defaults to tcp (as in a pool) unless set.
#include <sys/mman.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "roam/transport/transport.h"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "staging_alloc_bench: %s\n", what.c_str());
  std::exit(1);
}

// kB of AnonHugePages and Rss over the mappings that overlap [p, p + n).
struct Residency {
  std::uint64_t rss_kb = 0;
  std::uint64_t anon_huge_kb = 0;
  std::string backing;  // pathname of the first mapping ("" for anonymous)
};

Residency ReadResidency(const void* p, std::size_t n) {
  const auto lo = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t hi = lo + n;
  std::ifstream smaps("/proc/self/smaps");
  Residency r;
  std::string line;
  bool inside = false;
  bool first = true;
  while (std::getline(smaps, line)) {
    std::uint64_t start = 0;
    std::uint64_t end = 0;
    if (std::sscanf(line.c_str(), "%" SCNx64 "-%" SCNx64 " ", &start, &end) == 2 &&
        line.find(':') > line.find(' ')) {
      inside = start < hi && end > lo;
      if (inside && first) {
        first = false;
        std::istringstream fields(line);
        std::string field;
        for (int i = 0; i < 5; ++i) fields >> field;  // range, perms, offset, dev, inode
        std::getline(fields, r.backing);
        r.backing.erase(0, r.backing.find_first_not_of(' '));
      }
      continue;
    }
    if (!inside) continue;
    std::uint64_t kb = 0;
    if (std::sscanf(line.c_str(), "Rss: %" SCNu64 " kB", &kb) == 1) r.rss_kb += kb;
    if (std::sscanf(line.c_str(), "AnonHugePages: %" SCNu64 " kB", &kb) == 1) r.anon_huge_kb += kb;
  }
  return r;
}

std::map<std::string, std::uint64_t> ReadVmstat() {
  std::ifstream in("/proc/vmstat");
  std::map<std::string, std::uint64_t> out;
  std::string name;
  std::uint64_t value = 0;
  while (in >> name >> value) {
    if (name == "thp_fault_alloc" || name == "thp_fault_fallback" || name == "compact_stall") {
      out[name] = value;
    }
  }
  return out;
}

json VmstatDelta(const std::map<std::string, std::uint64_t>& before) {
  json out;
  for (const auto& [name, value] : ReadVmstat()) out[name] = value - before.at(name);
  return out;
}

// One repeat of one kind: named step durations in seconds plus residency.
using Sample = std::map<std::string, double>;

Sample MmapPopulate(std::size_t bytes, bool huge, json& info) {
  Sample s;
  const auto vm = ReadVmstat();
  auto t = Clock::now();
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) Die("mmap failed");
  if (huge) (void)madvise(p, bytes, MADV_HUGEPAGE);
  s["map_s"] = Since(t);
  t = Clock::now();
  if (madvise(p, bytes, MADV_POPULATE_WRITE) != 0) Die("MADV_POPULATE_WRITE failed");
  s["populate_s"] = Since(t);
  const Residency r = ReadResidency(p, bytes);
  info["anon_huge_mib"] = r.anon_huge_kb / 1024;
  t = Clock::now();
  munmap(p, bytes);
  s["free_s"] = Since(t);
  info["vmstat"] = VmstatDelta(vm);
  return s;
}

Sample UcxAllocMemsetPopulate(ucp_context_h context, std::size_t bytes, json& info) {
  Sample s;
  const auto vm = ReadVmstat();
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  params.address = nullptr;
  params.length = bytes;
  params.flags = UCP_MEM_MAP_ALLOCATE;
  ucp_mem_h memh = nullptr;
  auto t = Clock::now();
  if (ucp_mem_map(context, &params, &memh) != UCS_OK) Die("ucp_mem_map failed");
  s["map_s"] = Since(t);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
  if (ucp_mem_query(memh, &attr) != UCS_OK) Die("ucp_mem_query failed");
  const Residency mapped = ReadResidency(attr.address, bytes);
  info["backing"] = mapped.backing;
  info["rss_mib_after_map"] = mapped.rss_kb / 1024;
  info["mapped_bytes"] = attr.length;
  (void)madvise(attr.address, bytes, MADV_DONTFORK);
  t = Clock::now();
  std::memset(attr.address, 0, bytes);
  s["memset_s"] = Since(t);
  t = Clock::now();
  (void)madvise(attr.address, bytes, MADV_POPULATE_WRITE);
  s["populate_s"] = Since(t);
  info["anon_huge_mib"] = ReadResidency(attr.address, bytes).anon_huge_kb / 1024;
  t = Clock::now();
  ucp_mem_unmap(context, memh);
  s["free_s"] = Since(t);
  info["vmstat"] = VmstatDelta(vm);
  return s;
}

Sample FabricAllocate(roam::transport::Fabric& fabric, std::size_t bytes, json& info) {
  Sample s;
  const auto vm = ReadVmstat();
  auto t = Clock::now();
  auto region = fabric.Allocate(bytes);
  if (!region) Die(region.error().ToString());
  s["allocate_s"] = Since(t);
  const Residency r = ReadResidency((*region)->data(), bytes);
  info["anon_huge_mib"] = r.anon_huge_kb / 1024;
  info["backing"] = r.backing;
  t = Clock::now();
  region->reset();
  s["free_s"] = Since(t);
  info["vmstat"] = VmstatDelta(vm);
  return s;
}

json Summarize(const std::vector<Sample>& samples, const std::vector<json>& infos) {
  json out;
  std::map<std::string, std::vector<double>> by_step;
  for (const Sample& s : samples) {
    double total = 0;
    for (const auto& [step, v] : s) {
      by_step[step].push_back(v);
      if (step != "free_s") total += v;
    }
    by_step["total_s"].push_back(total);
  }
  for (auto& [step, values] : by_step) {
    std::sort(values.begin(), values.end());
    out[step] = {
        {"median", values[values.size() / 2]}, {"min", values.front()}, {"max", values.back()}};
  }
  out["runs"] = infos;
  return out;
}

std::vector<std::size_t> ParseList(const std::string& s) {
  std::vector<std::size_t> out;
  std::istringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::strtoull(item.c_str(), nullptr, 10));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> mibs = {256, 1024, 2048};
  int repeats = 5;
  double settle_s = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--mib" && i + 1 < argc) {
      mibs = ParseList(argv[++i]);
    } else if (arg == "--repeats" && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--settle" && i + 1 < argc) {
      settle_s = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: staging_alloc_bench [--mib 256,1024,2048] [--repeats N] [--settle S]\n");
      return 2;
    }
  }
  setenv("UCX_TLS", "tcp", 0);

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
  ucp_context_h context = nullptr;
  if (ucp_init(&params, nullptr, &context) != UCS_OK) Die("ucp_init failed");
  auto fabric = roam::transport::OpenFabric("ucx", roam::transport::FabricOptions{});
  if (!fabric) Die(fabric.error().ToString());

  using Kind = std::function<Sample(std::size_t, json&)>;
  const std::vector<std::pair<std::string, Kind>> kinds = {
      {"mmap_populate", [](std::size_t b, json& i) { return MmapPopulate(b, false, i); }},
      {"mmap_thp_populate", [](std::size_t b, json& i) { return MmapPopulate(b, true, i); }},
      {"ucx_alloc_memset_populate",
       [&](std::size_t b, json& i) { return UcxAllocMemsetPopulate(context, b, i); }},
      {"fabric_allocate", [&](std::size_t b, json& i) { return FabricAllocate(**fabric, b, i); }},
  };
  for (const std::size_t mib : mibs) {
    const std::size_t bytes = mib << 20;
    std::map<std::string, std::vector<Sample>> samples;
    std::map<std::string, std::vector<json>> infos;
    for (int r = 0; r < repeats; ++r) {
      for (const auto& [name, run] : kinds) {
        if (settle_s > 0) {
          std::this_thread::sleep_for(std::chrono::duration<double>(settle_s));
        }
        json info;
        Sample sample = run(bytes, info);
        double total = 0;
        for (const auto& [step, v] : sample) total += step == "free_s" ? 0 : v;
        info["total_s"] = total;
        samples[name].push_back(std::move(sample));
        infos[name].push_back(std::move(info));
      }
    }
    for (const auto& [name, run] : kinds) {
      json out = Summarize(samples[name], infos[name]);
      out["kind"] = name;
      out["mib"] = mib;
      out["repeats"] = repeats;
      std::printf("%s\n", out.dump().c_str());
      std::fflush(stdout);
    }
  }
  fabric->reset();
  ucp_cleanup(context);
  return 0;
}
