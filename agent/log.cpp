#include "agent/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>

#include "agent/text.hpp"

namespace diskcrypt {

namespace {

struct LogState {
    std::atomic<int> level{static_cast<int>(LogLevel::info)};
    std::mutex mutex;
    std::string program = "diskcrypt";  // guarded by mutex
};

LogState& state()
{
    static LogState s;
    return s;
}

constexpr std::string_view level_name(LogLevel level)
{
    switch (level) {
        case LogLevel::error:
            return "error";
        case LogLevel::warning:
            return "warning";
        case LogLevel::info:
            return "info";
        case LogLevel::debug:
            return "debug";
    }
    return "?";
}

}  // namespace

void set_log_level(LogLevel level) { state().level = static_cast<int>(level); }

LogLevel log_level() { return static_cast<LogLevel>(state().level.load()); }

bool parse_log_level(std::string_view text, LogLevel& out)
{
    for (const auto l : {LogLevel::error, LogLevel::warning, LogLevel::info, LogLevel::debug}) {
        if (text == level_name(l)) {
            out = l;
            return true;
        }
    }
    return false;
}

void set_log_program(std::string_view name)
{
    const std::lock_guard lock(state().mutex);
    state().program = name;
}

void log(LogLevel level, std::string_view message)
{
    LogState& st = state();
    if (static_cast<int>(level) > st.level.load()) {
        return;
    }
    // The safety net: whatever reaches a log line is printable ASCII, one line.
    const std::string text = sanitize(message);
    const std::lock_guard lock(st.mutex);
    std::string line = st.program;
    line += ": ";
    line += level_name(level);
    line += ": ";
    line += text;
    line += '\n';
    // One write per line so concurrent writers do not interleave.
    [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

std::string hex_ulong(unsigned long value)
{
    static constexpr std::string_view kDigits = "0123456789abcdef";
    std::string out;
    do {
        out.insert(out.begin(), kDigits[value & 0xFU]);
        value >>= 4U;
    } while (value != 0);
    return out;
}

}  // namespace diskcrypt
