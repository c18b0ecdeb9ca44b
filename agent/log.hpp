// The agent's log: one line per event on stderr (journald adds time and unit
// under systemd). Never pass a secret, a PIN or a wrapped blob to it. Every
// message passes through sanitize() (agent/text.hpp): a line is printable
// ASCII whatever it quotes.
#pragma once

#include <string>
#include <string_view>

namespace diskcrypt {

enum class LogLevel { error = 0, warning = 1, info = 2, debug = 3 };

void set_log_level(LogLevel level);
LogLevel log_level();
// Parses "error", "warning", "info", "debug".
bool parse_log_level(std::string_view text, LogLevel& out);
// The prefix of every line, e.g. "diskcrypt-agent".
void set_log_program(std::string_view name);

void log(LogLevel level, std::string_view message);
inline void log_error(std::string_view m) { log(LogLevel::error, m); }
inline void log_warning(std::string_view m) { log(LogLevel::warning, m); }
inline void log_info(std::string_view m) { log(LogLevel::info, m); }
inline void log_debug(std::string_view m) { log(LogLevel::debug, m); }

// Routes libcryptsetup's messages into this log (its errors at warning level,
// everything else at debug: the agent reports failures in its own words).
void route_libcryptsetup_log();

std::string hex_ulong(unsigned long value);

}  // namespace diskcrypt
