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

// `audit` in text: one line per event of an agent's page (TIME EVENT RESULT
// and the event's disk, key, version, service account, user, caller and
// message as NAME=VALUE), escaped.
void print_audit_events(const nlohmann::json& page, std::ostream& out);
// The end of `audit` in text: "No events." when none were printed, and the
// number of lines of the source that were not events.
void print_audit_end(const nlohmann::json& done, bool printed, std::ostream& out);

// "63.0 MiB".
std::string human_size(unsigned long long bytes);

}  // namespace diskcrypt::cli
