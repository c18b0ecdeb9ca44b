// What the CLI prints: human text by default, JSON with --json.
#pragma once

#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

#include "agent/error.hpp"
#include "cli/args.hpp"

namespace diskcrypt::cli {

// "diskcrypt: error: MESSAGE" and "diskcrypt: hint: HINT" on `err`; with
// `json` also {"ok": false, "error": {...}} on `out`.
void print_error(Errc code, const std::string& message, const std::string& hint, bool json, std::ostream& out,
                 std::ostream& err);

// A successful result of `command`.
void print_result(Command command, const nlohmann::json& result, bool json, std::ostream& out);

// "63.0 MiB".
std::string human_size(unsigned long long bytes);

}  // namespace diskcrypt::cli
