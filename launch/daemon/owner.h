// Owner mode (Sprite, Condor): a workstation lends its CPUs to the pool only
// while its owner is away. The owner counts as present from their last
// input: the newest access time among the terminals of the login sessions
// in utmp (what `w` reports as idle time; the kernel updates it at most
// every few seconds), or, where paths are given instead (roamd
// --owner-input: a device, or a file a desktop session touches), the
// newest access or modification time among them. Present at once on input; away after policy's
// `owner_idle_after` without (policy::OwnerActive).
//
// Thread-safety: plain functions.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <span>

namespace roam::daemon {

// The time of the owner's last input (wall clock): on the login terminals
// when `inputs` is empty, else on `inputs`. nullopt when there is none to
// read: no owner at all.
std::optional<std::chrono::system_clock::time_point> LastOwnerInput(
    std::span<const std::filesystem::path> inputs);

}  // namespace roam::daemon
