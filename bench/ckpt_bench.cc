// Checkpoint/restore of a memory-resident process, stop-copy and post-copy:
// capture time, how long the process is frozen, restore time to resume, the
// downtime of a migration (freeze to resume), and for post-copy how long
// until every page is in place, for 16 MiB, 256 MiB and 1 GiB resident sets.
// Modes: stop_copy and post_copy through an image on tmpfs; stop_copy_staged
// through staging memory faulted in before the freeze (StagingPages, no
// file); post_copy_from_source, which writes nothing: the copy's pages come
// from the frozen original (CaptureAsSource). Same-run baseline: reading the
// same memory once with process_vm_readv and writing it to tmpfs.
//
// Run as root: build/bench/ckpt_bench [--sizes 16,256,1024] [--dir /dev/shm]
// Prints one JSON object per size.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/ckpt/image/image.pb.h"
#include "core/ckpt/image/staging_pages.h"
#include "core/ckpt/lazy_pages.h"
#include "roam/ckpt/capture.h"
#include "roam/ckpt/restore.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// A child holding `bytes` of written anonymous memory; it sleeps in a loop
// (so a checkpoint finds it in an interrupted nanosleep, as most idle
// processes are). Returns its pid and the address of the region.
std::pair<pid_t, std::uintptr_t> StartHog(std::size_t bytes) {
  int ready[2];
  if (pipe(ready) != 0) return {-1, 0};
  const pid_t pid = fork();
  if (pid == 0) {
    close(ready[0]);
    auto* mem = static_cast<std::uint64_t*>(
        mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    for (std::size_t i = 0; i < bytes / sizeof(std::uint64_t); ++i) mem[i] = i * 2654435761u + 1;
    const auto address = reinterpret_cast<std::uintptr_t>(mem);
    // Nothing inherited that roam would refuse; the ready pipe last (the
    // parent waits for its end).
    if (ready[1] > 3) close_range(3, ready[1] - 1, 0);
    close_range(ready[1] + 1, ~0U, 0);
    if (write(ready[1], &address, sizeof(address)) != sizeof(address)) _exit(1);
    close(ready[1]);
    for (;;) usleep(10000);
  }
  close(ready[1]);
  std::uintptr_t address = 0;
  if (read(ready[0], &address, sizeof(address)) != sizeof(address)) address = 0;
  char end;
  while (read(ready[0], &end, 1) > 0) {
  }
  close(ready[0]);
  return {pid, address};
}

void Reap(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

// The baseline: one process_vm_readv of the region into a pre-faulted
// buffer, then one write of it to a tmpfs file.
double BaselineMs(pid_t pid, std::uintptr_t address, std::size_t bytes, const fs::path& file) {
  std::vector<char> buffer(bytes);
  std::memset(buffer.data(), 1, bytes);  // pre-fault, as the capture's buffer is reused warm
  const auto start = Clock::now();
  iovec local{buffer.data(), bytes};
  iovec remote{reinterpret_cast<void*>(address), bytes};
  if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != static_cast<ssize_t>(bytes)) return -1;
  const int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::size_t done = 0;
  while (done < bytes) {
    const ssize_t n = write(fd, buffer.data() + done, bytes - done);
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  close(fd);
  const double ms = Ms(Clock::now() - start);
  fs::remove(file);
  return done == bytes ? ms : -1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> sizes_mib = {16, 256, 1024};
  fs::path base = "/dev/shm";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--dir") base = argv[i + 1];
    if (std::string(argv[i]) == "--sizes") {
      sizes_mib.clear();
      std::stringstream list(argv[i + 1]);
      for (std::string item; std::getline(list, item, ',');) sizes_mib.push_back(std::stoul(item));
    }
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "ckpt_bench: run as root (ptrace, PR_SET_MM_MAP exe link)\n");
    return 2;
  }
  const fs::path dir = base / ("roam-ckpt-bench-" + std::to_string(getpid()));
  for (const std::size_t mib : sizes_mib) {
    for (const std::string mode :
         {"stop_copy", "stop_copy_staged", "post_copy", "post_copy_from_source"}) {
      const bool lazy = mode.starts_with("post_copy");
      const std::size_t bytes = mib << 20;
      fs::remove_all(dir);
      fs::create_directories(dir);
      auto [pid, address] = StartHog(bytes);
      if (pid <= 0 || address == 0) return 1;
      const double baseline_ms = BaselineMs(pid, address, bytes, dir / "baseline");

      roam::ckpt::RestoreOptions options;
      options.lazy = lazy;
      roam::Result<roam::ckpt::CaptureStats> captured;
      roam::Result<roam::ckpt::RestoreStats> restored;
      double capture_ms = 0, restore_ms = 0;
      Clock::time_point restore_start;
      std::unique_ptr<roam::ckpt::FrozenSource> source;
      roam::image::Image meta;
      if (mode == "stop_copy_staged") {
        // Stop-copy through pre-faulted memory instead of an image file, as
        // a migration stages pages on the target: the staging exists before
        // the freeze (not timed), is filled while frozen, and the restore
        // reads from it.
        auto staging = roam::ckpt::StagingPages::Create(bytes + (bytes >> 6) + (16 << 20));
        if (!staging) {
          std::fprintf(stderr, "ckpt_bench: %s\n", staging.error().ToString().c_str());
          return 1;
        }
        const auto capture_start = Clock::now();
        captured = roam::ckpt::Capture(pid, {}, &meta, **staging);
        capture_ms = Ms(Clock::now() - capture_start);
        if (captured) {
          waitpid(pid, nullptr, 0);  // the capture killed it
          restore_start = Clock::now();
          restored = roam::ckpt::Restore(meta, **staging, options);
          restore_ms = Ms(Clock::now() - restore_start);
        }
      } else if (mode == "post_copy_from_source") {
        // Nothing written: the copy's pages come from the frozen original.
        roam::ckpt::CaptureStats stats;
        const auto capture_start = Clock::now();
        auto frozen = roam::ckpt::CaptureAsSource(pid, &meta, &stats);
        capture_ms = Ms(Clock::now() - capture_start);
        if (!frozen) {
          captured = tl::unexpected(frozen.error());
        } else {
          captured = stats;
          source = std::move(*frozen);
          restore_start = Clock::now();
          restored = roam::ckpt::Restore(meta, *source, options);
          restore_ms = Ms(Clock::now() - restore_start);
        }
      } else {
        const auto capture_start = Clock::now();
        captured = roam::ckpt::CheckpointToDirectory(pid, dir / "img", {});
        capture_ms = Ms(Clock::now() - capture_start);
        if (captured) {
          waitpid(pid, nullptr, 0);  // the checkpoint killed it
          restore_start = Clock::now();
          restored = roam::ckpt::RestoreFromDirectory(dir / "img", options);
          restore_ms = Ms(Clock::now() - restore_start);
        }
      }
      if (!captured) {
        std::fprintf(stderr, "ckpt_bench: %s\n", captured.error().ToString().c_str());
        Reap(pid);
        return 1;
      }
      if (!restored) {
        std::fprintf(stderr, "ckpt_bench: %s\n", restored.error().ToString().c_str());
        if (source) source->Resume();
        Reap(pid);
        return 1;
      }
      double all_pages_ms = restore_ms;
      std::uint64_t faults = 0;
      if (restored->post_copy) {
        auto served = restored->post_copy->Wait();
        if (!served) {
          std::fprintf(stderr, "ckpt_bench: %s\n", served.error().ToString().c_str());
          return 1;
        }
        all_pages_ms = Ms(Clock::now() - restore_start);
        faults = served->faults;
      }
      if (source) {
        source->Kill();  // the copy has every page now
        waitpid(pid, nullptr, 0);
      }
      // Alive and sleeping in its loop after restore?
      usleep(50000);
      const bool alive = waitpid(restored->pid, nullptr, WNOHANG) == 0;
      Reap(restored->pid);

      const double frozen_ms = static_cast<double>(captured->frozen_ns) / 1e6;
      const nlohmann::json out = {
          {"bench", "ckpt_" + mode},
          {"size_mib", mib},
          {"image_dir", dir.string()},
          {"pages", captured->pages_written},
          {"capture_ms", capture_ms},
          {"frozen_ms", frozen_ms},
          {"restore_to_resume_ms", restore_ms},
          {"downtime_ms", frozen_ms + restore_ms},
          {"all_pages_in_place_ms", all_pages_ms},
          {"lazy_pages", restored->lazy_pages},
          {"faults", faults},
          {"injected_syscalls_restore", restored->injected_syscalls},
          {"restored_alive", alive},
          {"baseline_readv_write_ms", baseline_ms},
          {"notes", restored->notes},
      };
      std::printf("%s\n", out.dump().c_str());
      std::fflush(stdout);
    }
  }
  fs::remove_all(dir);
  return 0;
}
