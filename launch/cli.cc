#include "launch/cli.h"

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <string_view>

namespace roam::launch {
namespace {

int UsageError(const CLI::App& app, std::string_view what) {
  std::fprintf(stderr, "%s: %.*s (see %s --help)\n", app.get_name().c_str(),
               static_cast<int>(what.size()), what.data(), app.get_name().c_str());
  return kUsageError;
}

}  // namespace

std::string CheckMebibytes(const std::string& text) {
  std::int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || stop != end || value < 0) {
    return "'" + text + "' is not a whole number of MiB, 0 or more";
  }
  return "";
}

std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv) {
  // CLI11 reports an unknown command word only as "a subcommand is
  // required"; name it instead.
  const auto subcommands = app.get_subcommands([](CLI::App*) { return true; });
  if (argc > 1 && argv[1][0] != '-' && !subcommands.empty()) {
    bool known = false;
    for (const CLI::App* sub : subcommands) known = known || sub->check_name(argv[1]);
    if (!known) return UsageError(app, std::string("unknown command '") + argv[1] + "'");
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    return UsageError(app, e.what());
  }
  return std::nullopt;
}

}  // namespace roam::launch
