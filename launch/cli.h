// Command-line conventions shared by roam and roamd: a usage error is one
// line on stderr naming what is wrong, and exit status 2.
//
// Thread-safety: call from main() only.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace roam::launch {

inline constexpr int kUsageError = 2;

// Parses argv into `app`. Returns an exit status when the program should stop
// now (--help and --version: 0 after printing; bad input: kUsageError after
// one line on stderr), nullopt when it should go on.
std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv);

// For option->check(): a whole number of MiB, 0 or more ("" when it is; the
// one-line complaint otherwise).
std::string CheckMebibytes(const std::string& text);

}  // namespace roam::launch
