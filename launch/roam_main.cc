// roam: the command users type: `roam info` (this node), `roam checkpoint` /
// `roam restore`, and the pool commands (run, ps, kill, migrate, nodes;
// drain, undrain, idle, top) that talk to the node's roamd.
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "launch/checkpoint_cmd.h"
#include "launch/cli.h"
#include "launch/load_cmds.h"
#include "launch/node_report.h"
#include "launch/pool_cmd.h"
#include "launch/process_cmds.h"
#include "roam/base/version.h"

namespace {

int RunInfo(bool json) {
  auto report = roam::launch::BuildNodeReport();
  if (!report) {
    std::fprintf(stderr, "roam: info: %s\n", report.error().ToString().c_str());
    return 1;
  }
  const std::string out =
      json ? roam::launch::ToJson(*report).dump(2) + "\n" : roam::launch::ToText(*report);
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

// CLI11 throws only for mistakes in building the command line, never for user input.
int main(int argc, char** argv) {  // NOLINT(bugprone-exception-escape)
  CLI::App app{"roam: run programs on a pool of nodes as on one machine", "roam"};
  app.set_version_flag(
      "--version", std::string("roam ") + ROAM_VERSION_STRING + " (git " + ROAM_GIT_DESCRIBE + ")");
  app.require_subcommand(1);

  bool json = false;
  CLI::App* info = app.add_subcommand("info", "Show this node: topology, transports, PMIx");
  info->add_flag("--json", json, "Print one JSON object");
  roam::launch::AddCheckpointCommands(app);
  roam::launch::AddPoolCommands(app);
  roam::launch::AddProcessCommands(app);
  roam::launch::AddLoadCommands(app);

  std::vector<std::string> args = roam::launch::RewriteKillSignal({argv, argv + argc});
  std::vector<char*> rewritten;
  rewritten.reserve(args.size());
  for (auto& a : args) rewritten.push_back(a.data());
  if (const auto exit_code = roam::launch::ParseCommandLine(app, static_cast<int>(rewritten.size()),
                                                            rewritten.data())) {
    return *exit_code;
  }
  if (info->parsed()) return RunInfo(json);
  if (const int status = roam::launch::RunCheckpointCommands(app); status >= 0) return status;
  if (const int status = roam::launch::RunPoolCommands(app); status >= 0) return status;
  if (const int status = roam::launch::RunProcessCommands(app); status >= 0) return status;
  if (const int status = roam::launch::RunLoadCommands(app); status >= 0) return status;
  return roam::launch::kUsageError;  // unreachable: require_subcommand(1)
}
