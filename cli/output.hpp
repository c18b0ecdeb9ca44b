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

// Progress messages of a long operation: JSON lines on `out` with --json, a
// progress bar on `err` when `tty` (stderr is a terminal), nothing otherwise.
// The agent's figures are not trusted: the bar is clamped to full, the text
// escaped.
class ProgressPrinter {
public:
    ProgressPrinter(bool json, bool tty, std::ostream& out, std::ostream& err);
    void update(const nlohmann::json& progress);
    // Ends the bar's line, if one was drawn.
    void finish();

private:
    bool json_;
    bool tty_;
    bool shown_ = false;
    std::ostream& out_;
    std::ostream& err_;
};

// "63.0 MiB".
std::string human_size(unsigned long long bytes);

}  // namespace diskcrypt::cli
