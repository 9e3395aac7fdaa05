#include "core/ckpt/inject/colocation.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

namespace roam::ckpt {
namespace {

// The CPUs online (/sys/devices/system/cpu/online: "0-3,6"); empty if unknown.
cpu_set_t OnlineCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::ifstream in("/sys/devices/system/cpu/online");
  std::string list;
  std::getline(in, list);
  std::stringstream items(list);
  for (std::string item; std::getline(items, item, ',');) {
    const auto dash = item.find('-');
    try {
      const int lo = std::stoi(item.substr(0, dash));
      const int hi = dash == std::string::npos ? lo : std::stoi(item.substr(dash + 1));
      for (int c = lo; c <= hi && c < CPU_SETSIZE; ++c) CPU_SET(c, &set);
    } catch (const std::exception&) {
      CPU_ZERO(&set);
      return set;
    }
  }
  return set;
}

// The mask to give a thread back. A thread that could run on every online
// CPU gets all of them, present and future, not the list seen now: writing
// a mask makes it the thread's requested one (Linux >= 6.2), and a
// requested list would keep it off CPUs its cpuset gains later, as if it
// had been pinned. One that was narrower gets exactly what it had.
cpu_set_t MaskToRestore(const cpu_set_t& saved, const cpu_set_t& online) {
  if (CPU_COUNT(&online) == 0 || !CPU_EQUAL(&saved, &online)) return saved;
  cpu_set_t all;
  CPU_ZERO(&all);
  for (int c = 0; c < CPU_SETSIZE; ++c) CPU_SET(c, &all);
  return all;
}

}  // namespace

Colocation::Colocation() {
  cpu_ = sched_getcpu();
  if (cpu_ < 0) return;
  Add(0);
}

Colocation::~Colocation() {
  // The calling thread (added first) last.
  const cpu_set_t online = OnlineCpus();
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
    const cpu_set_t mask = MaskToRestore(it->mask, online);
    (void)sched_setaffinity(it->tid, sizeof(mask), &mask);
  }
}

void Colocation::Add(pid_t tid) {
  if (cpu_ < 0) return;
  Saved saved{tid, {}};
  if (sched_getaffinity(tid, sizeof(saved.mask), &saved.mask) != 0) return;
  if (!CPU_ISSET(cpu_, &saved.mask)) return;  // not allowed there: leave it be
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu_, &one);
  if (sched_setaffinity(tid, sizeof(one), &one) != 0) return;
  saved_.push_back(saved);
}

void Colocation::Release(pid_t tid) {
  const auto it =
      std::find_if(saved_.begin(), saved_.end(), [tid](const Saved& s) { return s.tid == tid; });
  if (it == saved_.end()) return;
  const cpu_set_t mask = MaskToRestore(it->mask, OnlineCpus());
  (void)sched_setaffinity(it->tid, sizeof(mask), &mask);
  saved_.erase(it);
}

}  // namespace roam::ckpt
