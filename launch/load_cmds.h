// The load-sharing commands a user or an administrator runs against the
// node's roamd: `roam drain NODE` and `roam undrain NODE` (Condor's drain:
// the node takes no new guests and sends those it has away), `roam idle`
// (Sprite's idle-host query: the nodes with room), and `roam top` (a live
// view of the pool: load per node, guests, migrations per second).
//
// Thread-safety: call from main() only.
#pragma once

#include <CLI/CLI.hpp>

namespace roam::launch {

// Adds the subcommands to `app`; RunLoadCommands runs whichever was parsed
// and returns the exit status, or -1 if none was.
void AddLoadCommands(CLI::App& app);
int RunLoadCommands(const CLI::App& app);

}  // namespace roam::launch
