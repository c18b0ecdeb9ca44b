// Reading the audit trail back (agent/audit_query.hpp): file pages and
// cursors, filters, lines that are not events, the per-page work bound,
// --since, the journal's fields as events, and the agent without a source.
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "agent/audit.hpp"
#include "agent/audit_query.hpp"
#include "agent/error.hpp"
#include "tests/support/support.hpp"

namespace audit = diskcrypt::audit;
using diskcrypt::Errc;
using diskcrypt::Error;
using nlohmann::ordered_json;

namespace {

constexpr std::int64_t kAuditT0 = 1764776887;  // 2025-12-03T15:48:07Z

audit::Event audit_test_event(int i, const std::string& disk = "d1", const std::string& key = "hsm:k1",
                              const std::string& version = "1")
{
    audit::Event e{"attach", "ok", {}, {}, "event " + std::to_string(i)};
    e.context.op = "attach";
    e.context.uid = 0;
    e.context.pid = 100 + i;
    e.context.disk_id = disk;
    e.context.service_account = "sa1";
    e.context.device = "/dev/loop0";
    if (!key.empty()) {
        diskcrypt::KeyRef k = diskcrypt::parse_key_spec(key);
        k.version = version;
        e.context.key = k;
    }
    return e;
}

std::string audit_test_line(const audit::Event& e, std::int64_t t)
{
    return audit::to_json(e, audit::format_utc(t)).dump() + "\n";
}

void append_text(const std::string& path, const std::string& text)
{
    std::ofstream out(path, std::ios::binary | std::ios::app);
    out << text;
    REQUIRE(out.good());
}

std::uint64_t inode_of(const std::string& path)
{
    struct stat st {};
    REQUIRE(stat(path.c_str(), &st) == 0);
    return st.st_ino;
}

// Every page from the start, following `next`; checks each page's budget.
std::vector<ordered_json> all_events(const std::string& path, audit::Query q, std::size_t* pages = nullptr,
                                     std::size_t* skipped = nullptr, const audit::ScanLimits& limits = {})
{
    std::vector<ordered_json> events;
    std::size_t n = 0;
    std::size_t skips = 0;
    for (;;) {
        const audit::Page page = audit::query_file(path, q, limits);
        ++n;
        REQUIRE(n < 100000);
        skips += page.skipped;
        std::size_t used = 0;
        for (const auto& e : page.events) {
            used += e.dump().size() + 1;
            events.push_back(e);
        }
        CHECK((page.events.size() <= 1 || used <= q.budget));
        if (!page.next) {
            break;
        }
        q.after = page.next;
    }
    if (pages != nullptr) {
        *pages = n;
    }
    if (skipped != nullptr) {
        *skipped = skips;
    }
    return events;
}

std::vector<std::string> audit_messages(const std::vector<ordered_json>& events)
{
    std::vector<std::string> out;
    out.reserve(events.size());
    for (const auto& e : events) {
        out.push_back(e.at("message").is_string() ? e.at("message").get<std::string>() : "(null)");
    }
    return out;
}

// The error code and message f throws (internal and "" if it does not throw an Error).
std::pair<Errc, std::string> audit_error_of(const std::function<void()>& f)
{
    try {
        f();
    } catch (const Error& e) {
        return {e.code(), e.what()};
    }
    return {Errc::internal, ""};
}

bool all_ascii(const std::string& s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

// An event's journal fields (audit::journal_fields) as a reader gets them.
audit::JournalFields journal_entry(const audit::Event& e)
{
    audit::JournalFields fields;
    for (const std::string& f : audit::journal_fields(e)) {
        const std::size_t eq = f.find('=');
        const std::string value = f.substr(eq + 1);
        fields.emplace(f.substr(0, eq), audit::JournalValue{value, value.size()});
    }
    return fields;
}

}  // namespace

TEST_CASE("audit query: a file line reads back as the event audit::to_json wrote", "[audit-query]")
{
    audit::Event e = audit_test_event(1);
    e.context.user = "alice";
    e.context.luks_uuid = "20f3e9cb-b5ad-4a56-811a-a589b22f6784";
    e.context.policy_revision = "sha256:5d0c";
    e.result = "refused";
    e.reason = "binding";
    const ordered_json written = audit::to_json(e, "2026-11-22T15:48:07Z");
    const auto read = audit::parse_event_line(written.dump());
    REQUIRE(read.has_value());
    CHECK(*read == written);
    CHECK(read->dump() == written.dump());  // the same fields in the same order

    // Without a key, a key version, or a message.
    audit::Event bare{"policy", "ok", {}, {}, {}};
    const ordered_json bare_json = audit::to_json(bare, "2026-01-01T00:00:00Z");
    CHECK(audit::parse_event_line(bare_json.dump()) == bare_json);
    audit::Event unversioned = audit_test_event(2, "d1", "hsm:k1", "");
    const ordered_json unversioned_json = audit::to_json(unversioned, "2026-01-01T00:00:00Z");
    CHECK(audit::parse_event_line(unversioned_json.dump()) == unversioned_json);

    // An older agent's line without some fields: they read as null.
    const auto old = audit::parse_event_line(R"({"time":"2026-01-01T00:00:00Z","event":"attach","result":"ok"})");
    REQUIRE(old.has_value());
    CHECK(old->at("disk_id").is_null());
    CHECK(old->at("caller").is_null());
    CHECK(old->at("key").is_null());
    CHECK(old->size() == written.size());

    // Escaped control characters and non-ASCII text come back sanitized.
    const auto hostile = audit::parse_event_line(
        R"({"time":"2026-01-01T00:00:00Z","event":"attach","result":"ok","message":"caf\u00e9 \u001b[2J"})");
    REQUIRE(hostile.has_value());
    CHECK(hostile->at("message") == "caf\\xc3\\xa9 \\x1b[2J");
}

TEST_CASE("audit query: file pages with a small budget hold every event once, in order", "[audit-query]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir / "audit.jsonl";
    std::string text;
    std::vector<std::string> expected;
    for (int i = 0; i < 60; ++i) {
        text += audit_test_line(audit_test_event(i), kAuditT0 + i);
        expected.push_back("event " + std::to_string(i));
    }
    diskcrypt::test::write_file(path, text);

    audit::Query q;
    q.budget = 1500;  // a few events per page
    std::size_t pages = 0;
    const auto events = all_events(path, q, &pages);
    CHECK(audit_messages(events) == expected);
    CHECK(pages > 10);

    // The first page: its cursor, its source.
    const audit::Page first = audit::query_file(path, q);
    REQUIRE(first.next.has_value());
    CHECK(first.source == "file " + path);
    CHECK(first.skipped == 0);
    const std::string prefix = "f:" + std::to_string(inode_of(path)) + ":";
    CHECK(first.next->rfind(prefix, 0) == 0);
    // A budget smaller than one event: one event per page.
    q.budget = 1;
    CHECK(audit::query_file(path, q).events.size() == 1);
    CHECK(audit_messages(all_events(path, q)) == expected);
    // The default budget: all 60 in one page, no cursor.
    const audit::Page all = audit::query(audit::Settings{path, audit::Journal::never}, audit::Query{});
    CHECK(all.events.size() == 60);
    CHECK_FALSE(all.next.has_value());

    // Events appended after a page are on the next pages.
    q.budget = 1500;
    const audit::Page page = audit::query_file(path, q);
    append_text(path, audit_test_line(audit_test_event(60), kAuditT0 + 60));
    q.after = page.next;
    auto rest = all_events(path, q);
    std::vector<std::string> seen = audit_messages(page.events);
    for (const auto& m : audit_messages(rest)) {
        seen.push_back(m);
    }
    expected.emplace_back("event 60");
    CHECK(seen == expected);

    // A missing file holds no events yet.
    const audit::Page none = audit::query_file(dir / "missing.jsonl", audit::Query{});
    CHECK(none.events.empty());
    CHECK_FALSE(none.next.has_value());
}

TEST_CASE("audit query: filters by disk, key (any version) and time", "[audit-query]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir / "audit.jsonl";
    std::string text;
    text += audit_test_line(audit_test_event(0, "d1", "hsm:k1", "1"), kAuditT0);
    text += audit_test_line(audit_test_event(1, "d2", "hsm:k1", "2"), kAuditT0 + 10);
    text += audit_test_line(audit_test_event(2, "d1", "hsm:k2", "1"), kAuditT0 + 20);
    text += audit_test_line(audit_test_event(3, "d1", "kms:k1", "1"), kAuditT0 + 30);
    text += audit_test_line(audit_test_event(4, "d1", "", ""), kAuditT0 + 40);
    text += audit_test_line(audit_test_event(5, "", "hsm:k1", "3"), kAuditT0 + 50);
    text += audit_test_line(audit_test_event(6, "d1", "hsm:k1", "1"), kAuditT0 + 60);
    diskcrypt::test::write_file(path, text);

    audit::Query q;
    q.budget = 400;
    q.disk_id = "d1";
    CHECK(audit_messages(all_events(path, q)) ==
          std::vector<std::string>{"event 0", "event 2", "event 3", "event 4", "event 6"});
    q.disk_id.reset();
    q.key = diskcrypt::parse_key_spec("hsm:k1");
    CHECK(audit_messages(all_events(path, q)) == std::vector<std::string>{"event 0", "event 1", "event 5", "event 6"});
    q.key.reset();
    q.since = kAuditT0 + 30;  // at or after
    CHECK(audit_messages(all_events(path, q)) == std::vector<std::string>{"event 3", "event 4", "event 5", "event 6"});
    q.disk_id = "d1";
    q.key = diskcrypt::parse_key_spec("hsm:k1");
    CHECK(audit_messages(all_events(path, q)) == std::vector<std::string>{"event 6"});
    q.disk_id = "none";
    const audit::Page empty = audit::query_file(path, q);
    CHECK(empty.events.empty());
    CHECK_FALSE(empty.next.has_value());
}

TEST_CASE("audit query: lines that are not events are skipped and counted", "[audit-query]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir / "audit.jsonl";
    const std::string good0 = audit_test_line(audit_test_event(0), kAuditT0);
    audit::Event long_event = audit_test_event(99);
    long_event.message = std::string(std::size_t{100} * 1024, 'm');  // a valid event, but a 100 KiB line
    std::string text = good0;
    text += "{not json\n";
    text += audit_test_line(long_event, kAuditT0);
    text += std::string(
        "{\"time\":\"2026-01-01T00:00:00Z\",\"event\":\"attach\",\"result\":\"ok\",\"message\":\"\xff\xfe\"}\n");
    text += std::string("\x00\x01\x02\xff binary\n", 12);
    text += R"([{"time":"2026-01-01T00:00:00Z","event":"attach","result":"ok"}])"
            "\n";
    text += R"({"event":"attach","result":"ok"})"
            "\n";  // no time
    text += R"({"time":"2026-01-01T00:00:00Z","result":"ok"})"
            "\n";  // no event
    text += R"({"time":"2026-01-01 00:00:00","event":"attach","result":"ok"})"
            "\n";  // another time format
    text += R"({"time":"2026-02-30T00:00:00Z","event":"attach","result":"ok"})"
            "\n";  // no such day
    text += R"({"time":"2026-01-01T00:00:00Z","event":"attach","result":7})"
            "\n";  // a number
    text += R"({"time":"2026-01-01T00:00:00Z","event":"a","result":"ok","caller":{"uid":-1,"pid":1}})"
            "\n";
    text += R"({"time":"2026-01-01T00:00:00Z","event":"a","result":"ok","caller":{"uid":1e9999,"pid":1}})"
            "\n";
    text += R"({"time":"2026-01-01T00:00:00Z","event":"a","result":"ok","key":{"provider":"hsm"}})"
            "\n";
    text += R"({"time":"2026-01-01T00:00:00Z","event":"a","result":"ok","x":[[[[[[[[[[[[]]]]]]]]]]]]})"
            "\n";
    text += "\n";
    const std::string good1 = audit_test_line(audit_test_event(1), kAuditT0 + 1);
    text += good1;
    text += "{\"truncated\":";  // a last line without its newline
    diskcrypt::test::write_file(path, text);
    const std::size_t bad_lines = 16;

    const audit::Page page = audit::query_file(path, audit::Query{});
    CHECK(audit_messages(page.events) == std::vector<std::string>{"event 0", "event 1"});
    CHECK(page.skipped == bad_lines);
    CHECK_FALSE(page.next.has_value());
    for (const auto& e : page.events) {
        CHECK(all_ascii(e.dump()));
    }

    // Page by page: the same events and the same count.
    audit::Query q;
    q.budget = 1;
    std::size_t skipped = 0;
    CHECK(audit_messages(all_events(path, q, nullptr, &skipped)) == std::vector<std::string>{"event 0", "event 1"});
    CHECK(skipped == bad_lines);

    // A last line without its newline that is an event is read.
    append_text(path, "\n" + good1.substr(0, good1.size() - 1));
    CHECK(audit::query_file(path, audit::Query{}).events.size() == 3);
}

TEST_CASE("audit query: events with long or hostile strings stay bounded and ASCII", "[audit-query]")
{
    ordered_json line = audit::to_json(audit_test_event(0), "2026-01-01T00:00:00Z");
    for (const char* name :
         {"op", "disk_id", "service_account", "user", "device", "luks_uuid", "policy_revision", "reason", "message"}) {
        line[name] = std::string(1000, '\x01');  // 6 bytes each in the line, 4 once sanitized
    }
    line["key"]["id"] = std::string(5000, 'k');
    REQUIRE(line.dump().size() <= audit::kMaxAuditLine);
    const auto event = audit::parse_event_line(line.dump());
    REQUIRE(event.has_value());
    const std::string text = event->dump();
    CHECK(text.size() <= audit::kMaxEventJson);
    CHECK(all_ascii(text));
    // Too long as a whole: each long string keeps its first 256 characters.
    std::string shown;
    for (int i = 0; i < 64; ++i) {
        shown += "\\x01";
    }
    CHECK(event->at("message") == shown + "...(4000 bytes)");
    CHECK(event->at("key").at("id") == std::string(256, 'k') + "...(4111 bytes)");  // 4096 and "...(5000 bytes)"
    CHECK(event->at("time") == "2026-01-01T00:00:00Z");

    // One long string alone: cut at kMaxAuditValue bytes, marked with its length.
    ordered_json one = audit::to_json(audit_test_event(0), "2026-01-01T00:00:00Z");
    one["message"] = std::string(10000, 'm');
    const auto cut = audit::parse_event_line(one.dump());
    REQUIRE(cut.has_value());
    CHECK(cut->at("message") == std::string(audit::kMaxAuditValue, 'm') + "...(10000 bytes)");
}

TEST_CASE("audit query: stale and invalid cursors are refused", "[audit-query]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir / "audit.jsonl";
    std::string text;
    for (int i = 0; i < 20; ++i) {
        text += audit_test_line(audit_test_event(i), kAuditT0 + i);
    }
    diskcrypt::test::write_file(path, text);
    audit::Query q;
    q.budget = 1000;
    const audit::Page first = audit::query_file(path, q);
    REQUIRE(first.next.has_value());
    q.after = first.next;
    CHECK_FALSE(audit::query_file(path, q).events.empty());

    // The file replaced (rotated): another inode.
    const std::string rotated = dir / "audit.jsonl.new";
    diskcrypt::test::write_file(rotated, text);
    std::filesystem::rename(rotated, path);
    auto [code, message] = audit_error_of([&] { (void)audit::query_file(path, q); });
    CHECK(code == Errc::usage);
    CHECK_THAT(message, Catch::Contains("the audit cursor is stale") && Catch::Contains("rotated or replaced"));

    // Past the end of the file (truncated).
    const std::string ino = std::to_string(inode_of(path));
    q.after = "f:" + ino + ":" + std::to_string(text.size() + 1);
    std::tie(code, message) = audit_error_of([&] { (void)audit::query_file(path, q); });
    CHECK(code == Errc::usage);
    CHECK_THAT(message, Catch::Contains("the audit cursor is stale") && Catch::Contains("past the end"));
    // Not at a line start.
    q.after = "f:" + ino + ":5";
    std::tie(code, message) = audit_error_of([&] { (void)audit::query_file(path, q); });
    CHECK(code == Errc::usage);
    CHECK_THAT(message, Catch::Contains("the audit cursor is stale"));
    // At the end: nothing more.
    q.after = "f:" + ino + ":" + std::to_string(text.size());
    const audit::Page end = audit::query_file(path, q);
    CHECK(end.events.empty());
    CHECK_FALSE(end.next.has_value());
    // The file gone.
    q.after = "f:" + ino + ":0";
    std::tie(code, message) = audit_error_of([&] { (void)audit::query_file(dir / "gone.jsonl", q); });
    CHECK(code == Errc::usage);
    CHECK_THAT(message, Catch::Contains("the audit cursor is stale"));
    // A journal cursor for the file.
    q.after = "j:s=0123;i=1";
    std::tie(code, message) = audit_error_of([&] { (void)audit::query_file(path, q); });
    CHECK(code == Errc::usage);
    CHECK_THAT(message, Catch::Contains("the audit cursor is stale") && Catch::Contains("journal"));
    // Malformed.
    for (const std::string& bad :
         std::vector<std::string>{"", "x", "f:", "f:1", "f:a:0", "f:1:-1", "f:1:2:3", "f:1:2:skipx", "f: 1:2",
                                  "f:1:99999999999999999999999", "f:1:2\xff"}) {
        q.after = bad;
        std::tie(code, message) = audit_error_of([&] { (void)audit::query_file(path, q); });
        CHECK(code == Errc::usage);
        CHECK_THAT(message, Catch::Contains("is not valid"));
        CHECK(all_ascii(message));
    }
}

TEST_CASE("audit query: a page stops at the scan bound, even with no event", "[audit-query]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir / "audit.jsonl";
    {
        // kMaxScanLines lines that are not events, and one more, then an event.
        std::string text;
        text.reserve(2 * audit::kMaxScanLines + 4096);
        for (std::uint64_t i = 0; i < audit::kMaxScanLines + 1; ++i) {
            text += "x\n";
        }
        text += audit_test_line(audit_test_event(7), kAuditT0);
        diskcrypt::test::write_file(path, text);
    }
    audit::Query q;
    const audit::Page first = audit::query_file(path, q);
    CHECK(first.events.empty());
    CHECK(first.skipped == audit::kMaxScanLines);
    REQUIRE(first.next.has_value());
    CHECK(*first.next == "f:" + std::to_string(inode_of(path)) + ":" + std::to_string(2 * audit::kMaxScanLines));
    q.after = first.next;
    const audit::Page second = audit::query_file(path, q);
    CHECK(audit_messages(second.events) == std::vector<std::string>{"event 7"});
    CHECK(second.skipped == 1);
    CHECK_FALSE(second.next.has_value());

    // The byte bound, also inside a line longer than kMaxAuditLine: the
    // cursor resumes after that line, which is counted once.
    const std::string long_path = dir / "long.jsonl";
    std::string text = audit_test_line(audit_test_event(0), kAuditT0);
    text += std::string(std::size_t{300} * 1024, 'z') + "\n";
    text += audit_test_line(audit_test_event(1), kAuditT0 + 1);
    diskcrypt::test::write_file(long_path, text);
    const audit::ScanLimits small{std::uint64_t{64} * 1024, audit::kMaxScanLines};
    const audit::Page p1 = audit::query_file(long_path, audit::Query{}, small);
    CHECK(audit_messages(p1.events) == std::vector<std::string>{"event 0"});
    REQUIRE(p1.next.has_value());
    CHECK_THAT(*p1.next, Catch::EndsWith(":skip"));
    std::size_t pages = 0;
    std::size_t skipped = 0;
    CHECK(audit_messages(all_events(long_path, audit::Query{}, &pages, &skipped, small)) ==
          std::vector<std::string>{"event 0", "event 1"});
    CHECK(pages >= 4);
    CHECK(skipped == 1);
    // The line bound alone: one line per page.
    CHECK(audit_messages(
              all_events(long_path, audit::Query{}, &pages, &skipped, audit::ScanLimits{audit::kMaxScanBytes, 1})) ==
          std::vector<std::string>{"event 0", "event 1"});
    CHECK(pages == 3);
    CHECK(skipped == 1);
}

TEST_CASE("audit query: --since forms and errors", "[audit-query]")
{
    const std::int64_t now = kAuditT0;
    CHECK(audit::parse_since("2025-12-03T15:48:07Z", now) == kAuditT0);
    CHECK(audit::parse_since("1970-01-01T00:00:00Z", now) == 0);
    CHECK(audit::parse_since("2024-02-29T23:59:59Z", now) == 1709251199);
    CHECK(audit::parse_since("2025-12-03", now) == kAuditT0 - (15 * 3600 + 48 * 60 + 7));
    CHECK(audit::parse_since("@1764776887", now) == kAuditT0);
    CHECK(audit::parse_since("@0", now) == 0);
    CHECK(audit::parse_since("-2h", now) == now - 7200);
    CHECK(audit::parse_since("-30m", now) == now - 1800);
    CHECK(audit::parse_since("-7d", now) == now - std::int64_t{7} * 86400);
    CHECK(audit::parse_since("-45s", now) == now - 45);
    CHECK(audit::parse_since("-999999999d", now) == 0);
    CHECK(audit::format_utc(kAuditT0) == "2025-12-03T15:48:07Z");
    CHECK(audit::format_utc(0) == "1970-01-01T00:00:00Z");
    CHECK(audit::format_utc(253402300799) == "9999-12-31T23:59:59Z");

    for (const std::string& bad : std::vector<std::string>{"",
                                                           "yesterday",
                                                           "2025-12-03T15:48:07",
                                                           "2025-12-03T24:00:00Z",
                                                           "2025-02-29",
                                                           "2025-13-01",
                                                           "1969-12-31",
                                                           "2025-12-3",
                                                           "@",
                                                           "@-1",
                                                           "@1e9",
                                                           "@999999999999999",
                                                           "-2",
                                                           "-h",
                                                           "-2w",
                                                           "+2h",
                                                           "-1000000000h",
                                                           " -2h",
                                                           "2025-12-03T15:48:07+01:00",
                                                           "-2h\x1b[2J"}) {
        const auto [code, message] = audit_error_of([&] { (void)audit::parse_since(bad, now); });
        CHECK(code == Errc::usage);
        CHECK_THAT(message, Catch::Contains("YYYY-MM-DDTHH:MM:SSZ") && Catch::Contains("YYYY-MM-DD ") &&
                                Catch::Contains("@SECONDS") && Catch::Contains("-N"));
        CHECK(all_ascii(message));
    }
}

TEST_CASE("audit query: journal fields read back as the file's event", "[audit-query]")
{
    const std::uint64_t usec = static_cast<std::uint64_t>(kAuditT0) * 1'000'000 + 123456;
    const std::string time = audit::format_utc(kAuditT0);

    std::vector<audit::Event> events;
    events.push_back(audit_test_event(1));
    audit::Event refused = audit_test_event(2, "d2", "hsm:k1", "");
    refused.result = "refused";
    refused.reason = "binding";
    refused.message = "device /dev/loop0: this header belongs to disk x: not d2";  // ": " inside
    refused.context.user = "alice";
    refused.context.luks_uuid = "20f3e9cb-b5ad-4a56-811a-a589b22f6784";
    refused.context.policy_revision = "sha256:5d0c";
    events.push_back(refused);
    events.push_back(audit::Event{"policy", "ok", {}, {}, {}});  // no disk, no key, no message
    audit::Event hostile = audit_test_event(3);
    hostile.message = "line\nbreak \x1b[2J \xff";
    hostile.context.device = "/dev/\x1b]0;x\x07";
    events.push_back(hostile);
    for (const audit::Event& e : events) {
        const auto event = audit::event_from_journal(journal_entry(e), usec);
        REQUIRE(event.has_value());
        CHECK(*event == audit::to_json(e, time));
        CHECK(event->dump() == audit::to_json(e, time).dump());
        CHECK(audit::parse_event_line(event->dump()) == *event);
    }

    // MESSAGE that is not the agent's summary: all of it is the message.
    audit::JournalFields fields = journal_entry(events[0]);
    fields["MESSAGE"] = audit::JournalValue{"something else", 14};
    CHECK(audit::event_from_journal(fields, usec)->at("message") == "something else");

    // Values are untrusted: sanitized, and cut at kMaxAuditValue with a marker.
    fields = journal_entry(events[0]);
    fields["DISKCRYPT_DEVICE"] = audit::JournalValue{std::string(audit::kMaxAuditValue, 'd'), 100000};
    fields["DISKCRYPT_SERVICE_ACCOUNT"] = audit::JournalValue{"\xff\x01", 2};
    fields["DISKCRYPT_CALLER_UID"] = audit::JournalValue{"-1", 2};
    const auto forged = audit::event_from_journal(fields, usec);
    REQUIRE(forged.has_value());
    CHECK(forged->at("device") == std::string(audit::kMaxAuditValue, 'd') + "...(100000 bytes)");
    CHECK(forged->at("service_account") == "\\xff\\x01");
    CHECK(forged->at("caller").is_null());
    CHECK(all_ascii(forged->dump()));

    // Not an event: no DISKCRYPT_EVENT or DISKCRYPT_RESULT, or a time past 9999.
    fields = journal_entry(events[0]);
    fields.erase("DISKCRYPT_EVENT");
    CHECK_FALSE(audit::event_from_journal(fields, usec).has_value());
    fields = journal_entry(events[0]);
    fields["DISKCRYPT_RESULT"] = audit::JournalValue{"", 0};
    CHECK_FALSE(audit::event_from_journal(fields, usec).has_value());
    CHECK_FALSE(audit::event_from_journal(journal_entry(events[0]), UINT64_MAX).has_value());

    // The reader asks for every field journal_fields writes (but the constant ones).
    for (const audit::Event& e : events) {
        for (const std::string& f : audit::journal_fields(e)) {
            const std::string name = f.substr(0, f.find('='));
            if (name != "PRIORITY" && name != "SYSLOG_IDENTIFIER") {
                CHECK(std::find(audit::journal_field_names().begin(), audit::journal_field_names().end(), name) !=
                      audit::journal_field_names().end());
            }
        }
    }
}

TEST_CASE("audit query: an agent without a file or the journal has no trail to read", "[audit-query]")
{
    const auto [code, message] = audit_error_of([] {
        (void)audit::query(audit::Settings{std::nullopt, audit::Journal::never}, audit::Query{});
    });
    CHECK(code == Errc::not_supported);
    CHECK_THAT(message, Catch::Contains("only in its log (stderr)"));
    try {
        (void)audit::query(audit::Settings{std::nullopt, audit::Journal::never}, audit::Query{});
    } catch (const Error& e) {
        CHECK_THAT(e.hint(), Catch::Contains("[audit] file") && Catch::Contains("systemd"));
    }

    // automatic: the journal only under systemd (audit.cpp's rule).
    std::vector<std::pair<std::string, std::optional<std::string>>> saved;
    for (const char* name : {"JOURNAL_STREAM", "INVOCATION_ID"}) {
        const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): no other thread runs
        saved.emplace_back(name, value == nullptr ? std::nullopt : std::optional<std::string>(value));
        (void)unsetenv(name);  // NOLINT(concurrency-mt-unsafe)
    }
    CHECK(audit_error_of([] { (void)audit::query(audit::Settings{}, audit::Query{}); }).first == Errc::not_supported);
    for (const auto& [name, value] : saved) {
        if (value) {
            (void)setenv(name.c_str(), value->c_str(), 1);  // NOLINT(concurrency-mt-unsafe)
        }
    }

    // A cursor of the other source.
    audit::Query q;
    q.after = "f:1:0";
    const auto [journal_code, journal_message] = audit_error_of([&] { (void)audit::query_journal(q); });
    CHECK(journal_code == Errc::usage);
    CHECK_THAT(journal_message, Catch::Contains("the audit cursor is stale"));
    q.after = "j:";
    CHECK(audit_error_of([&] { (void)audit::query_journal(q); }).first == Errc::usage);
}
