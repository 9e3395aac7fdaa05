// Capture: freeze a running, unmodified process with ptrace and record its
// whole state: metadata into an image::Image, page contents into a PageSink.
// The process is left exactly as it was (leave_running) or killed once the
// capture is complete; on any failure it is resumed unharmed.
//
// Thread-safety: one capture per thread; ptrace ties the tracee to the
// calling thread for the duration of the call.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "roam/base/error.h"

namespace roam::image {
class Image;
}

namespace roam::ckpt {

class PageSink;

struct CaptureOptions {
  // Resume the process after capture instead of killing it.
  bool leave_running = false;
};

struct CaptureStats {
  std::size_t vmas = 0;
  std::uint64_t pages_written = 0;  // pages in the page stream
  std::uint64_t zero_pages_skipped = 0;
  std::uint64_t file_pages_skipped = 0;  // clean pages of private file mappings
  std::uint64_t frozen_ns = 0;           // how long the process was stopped
  std::size_t injected_syscalls = 0;
  std::vector<std::string> notes;  // what was adjusted, one line each
};

// Called after the pages are finished, while the process is still frozen:
// storing the metadata here means a process killed after capture is never
// lost, and never ran on past the image. An error resumes the process.
using CaptureCommit = std::function<Status(const image::Image& meta)>;

Result<CaptureStats> Capture(pid_t pid, const CaptureOptions& options, image::Image* meta,
                             PageSink& pages, const CaptureCommit& commit = {});

// Capture into an image directory (created with mode 0700).
Result<CaptureStats> CheckpointToDirectory(pid_t pid, const std::filesystem::path& dir,
                                           const CaptureOptions& options);

}  // namespace roam::ckpt
