// `roam pool up --local N` and `roam pool down`: the command line of the
// local pool (local_pool.h).
//
// Thread-safety: call from main() only (pool up forks).
#pragma once

#include <CLI/CLI.hpp>

namespace roam::launch {

// Adds `pool` with its subcommands to `app`; RunPoolCommands runs whichever
// was parsed and returns the exit status, or -1 if none was.
void AddPoolCommands(CLI::App& app);
int RunPoolCommands(const CLI::App& app);

}  // namespace roam::launch
