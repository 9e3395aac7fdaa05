// The pool commands a user runs against the node's roamd: `roam run`, `roam
// ps`, `roam kill`, `roam migrate`, `roam nodes`. Each connects to the
// node's control socket (launch/daemon/control_socket.h says which) and
// speaks control.proto.
//
// Thread-safety: call from main() only.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace roam::launch {

// Adds the subcommands to `app`; RunProcessCommands runs whichever was
// parsed and returns the exit status, or -1 if none was.
void AddProcessCommands(CLI::App& app);
int RunProcessCommands(const CLI::App& app);

// `roam kill -9 ID` and `roam kill -TERM ID`: rewrites the signal argument
// into `--signal 9` so the parser does not take it for an option.
std::vector<std::string> RewriteKillSignal(std::vector<std::string> args);

}  // namespace roam::launch
