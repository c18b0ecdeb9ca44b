// Untrusted text for sinks: printable() where text enters, sanitize() as the
// sinks' safety net (log lines, audit events, the CLI's terminal output).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "agent/audit.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/text.hpp"

using diskcrypt::printable;
using diskcrypt::sanitize;

TEST_CASE("text: sanitize escapes every byte outside 0x20..0x7e and keeps backslashes", "[text]")
{
    CHECK(sanitize("plain text 0-9 ~") == "plain text 0-9 ~");
    CHECK(sanitize("\xff") == "\\xff");
    CHECK(sanitize("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m");
    CHECK(sanitize(std::string("a\0b", 3)) == "a\\x00b");
    CHECK(sanitize("line\nbreak\r\t") == "line\\x0abreak\\x0d\\x09");
    CHECK(sanitize("\x7f\x80") == "\\x7f\\x80");
    CHECK(sanitize("caf\xc3\xa9") == "caf\\xc3\\xa9");
    // A backslash stays one: text that went through printable() is not escaped again.
    CHECK(sanitize("a\\b") == "a\\b");
    for (const std::string raw : {"\xff", "x\\y\x1b", "\\xff"}) {
        CHECK(sanitize(printable(raw)) == printable(raw));
    }
    // Every byte value: the result is printable ASCII.
    std::string all;
    for (int c = 0; c < 256; ++c) {
        all.push_back(static_cast<char>(c));
    }
    for (const char c : sanitize(all)) {
        CHECK((c >= 0x20 && c <= 0x7e));
    }
}

TEST_CASE("text: dump_json does not throw on invalid UTF-8", "[text][protocol]")
{
    const nlohmann::json j = {{"message", std::string("bad \xff byte")}};
    CHECK_THROWS(j.dump());  // what the agent did before: std::terminate in a catch block
    CHECK(diskcrypt::proto::dump_json(j) == "{\"message\":\"bad \xef\xbf\xbd byte\"}");
}

TEST_CASE("text: audit events are printable in every sink", "[text][audit]")
{
    diskcrypt::audit::Event e{"attach", "failed", {}, "header", std::string("field \xff\x1b[2J")};
    e.context.disk_id = "disk-\xff";
    e.context.device = "/dev/\x1b]0;pwned\x07";
    e.context.key = diskcrypt::KeyRef{"hsm", "k\xff", "1\n2"};
    const std::string line = diskcrypt::audit::to_json(e, "2026-01-01T00:00:00Z").dump();
    CHECK(line.find("field \\\\xff\\\\x1b[2J") != std::string::npos);
    CHECK(line.find("disk-\\\\xff") != std::string::npos);
    for (const auto& f : diskcrypt::audit::journal_fields(e)) {
        for (const char c : f) {
            CHECK((c >= 0x20 && c <= 0x7e));
        }
    }
}
