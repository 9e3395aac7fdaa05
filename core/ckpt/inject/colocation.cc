#include "core/ckpt/inject/colocation.h"

#include <algorithm>

namespace roam::ckpt {

Colocation::Colocation() {
  cpu_ = sched_getcpu();
  if (cpu_ < 0) return;
  Add(0);
}

Colocation::~Colocation() {
  // The calling thread (added first) last.
  for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
    (void)sched_setaffinity(it->tid, sizeof(it->mask), &it->mask);
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
  (void)sched_setaffinity(it->tid, sizeof(it->mask), &it->mask);
  saved_.erase(it);
}

}  // namespace roam::ckpt
