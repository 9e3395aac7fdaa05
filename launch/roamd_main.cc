// roamd: the per-node daemon. Serving a pool (membership, load gossip,
// remote execution, migration) is not implemented yet; this program exists
// so that the install layout is stable, and says so when started.
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "launch/cli.h"
#include "roam/base/version.h"

// CLI11 throws only for mistakes in building the command line, never for user input.
int main(int argc, char** argv) {  // NOLINT(bugprone-exception-escape)
  CLI::App app{"roamd: the roam node daemon", "roamd"};
  app.set_version_flag("--version", std::string("roamd ") + ROAM_VERSION_STRING + " (git " +
                                        ROAM_GIT_DESCRIBE + ")");
  if (const auto exit_code = roam::launch::ParseCommandLine(app, argc, argv)) return *exit_code;

  std::fputs(
      "roamd: serving a pool is not implemented in this version; "
      "`roam info` checks what this node offers\n",
      stderr);
  return 2;
}
