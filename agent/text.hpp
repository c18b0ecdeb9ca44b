// Untrusted text made safe to print.
//
// Every string that comes from outside the agent (header fields, device
// paths, /proc, libcryptsetup and libdevmapper messages, peers) passes through
// printable() once, where it enters, before it can reach a message, a log
// line, an audit event or JSON. The result is printable ASCII and therefore
// valid UTF-8: it cannot make nlohmann::json::dump() throw, and it cannot send
// terminal escape sequences to an operator. Nothing is dropped: an operator
// still sees what was there.
//
//   printable ASCII 0x20..0x7e   kept, except the backslash
//   backslash                    "\\"
//   any other byte               "\xNN" (lowercase hex), so "\xff" for 0xff,
//                                "\x1b" for ESC, "\xc3\xa9" for a UTF-8 e-acute
//
// Text longer than `max_bytes` input bytes is cut there and marked with
// "...(N bytes)", N the full input length, so the output stays bounded.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace diskcrypt {

inline constexpr std::size_t kMaxPrintableInput = 4096;

std::string printable(std::string_view text, std::size_t max_bytes = kMaxPrintableInput);

// Whether text is already what printable() would return for it unchanged.
bool is_printable(std::string_view text);

// The sinks' safety net (log lines, audit events, journal fields): every byte
// outside 0x20..0x7e becomes "\xNN"; backslashes are kept as they are, so text
// that already went through printable() is not escaped twice. The result is
// printable ASCII. Unlike printable() it does not bound the length, and it is
// not reversible: it is for sinks, not for where outside text enters.
std::string sanitize(std::string_view text);

}  // namespace diskcrypt
