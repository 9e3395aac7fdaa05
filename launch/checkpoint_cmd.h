// `roam checkpoint` and `roam restore`: thin command-line users of core/ckpt.
//
// Thread-safety: call from main() only.
#pragma once

#include <CLI/CLI.hpp>

namespace roam::launch {

// Adds the subcommands to `app`; RunCheckpointCommands runs whichever was
// parsed and returns the exit status, or -1 if neither was.
void AddCheckpointCommands(CLI::App& app);
int RunCheckpointCommands(const CLI::App& app);

}  // namespace roam::launch
