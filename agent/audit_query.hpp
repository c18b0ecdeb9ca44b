// Reading the key-use audit trail back (diskcrypt audit): the events the
// agent wrote (agent/audit.hpp) from the audit file or the systemd journal,
// filtered by disk, key and time, one bounded page at a time.
//
// Sources, in this order: the [audit] file when it is configured; else the
// journal when the agent writes its events there ([audit] journal = always,
// or auto and the agent runs under systemd); else Error(not_supported): the
// events went to the agent's log only.
//
// Both sources are untrusted input: the agent never crashes on them, never
// holds more than one line (kMaxAuditLine) or one field (kMaxAuditValue) of
// them at a time, and does a bounded amount of work per page (kMaxScanBytes
// or kMaxScanLines, whichever comes first; the page then has `next`, possibly
// with no events, and the client asks again). Every string of an event
// passes through sanitize() and is bounded (kMaxAuditValue input bytes, then
// "...(N bytes)"), and one event's JSON is at most kMaxEventJson bytes, so a
// page always dumps as ASCII without throwing and fits in a protocol message.
//
// Cursors (Page::next, Query::after) are opaque to clients:
//   "f:<inode>:<offset>"       the file: the byte offset of the next line
//   "f:<inode>:<offset>:skip"  the file: inside a line longer than
//                              kMaxAuditLine (already counted as skipped);
//                              reading resumes after its end
//   "j:<journal cursor>"       the journal: the last entry read (sd_journal)
// A file cursor for another inode (the file was rotated or replaced), past
// the file's end or not at a line start (truncated), or a cursor of the other
// source, is refused with Error(usage, "the audit cursor is stale ...").
//
// The journal is read with SYSLOG_IDENTIFIER=diskcrypt-agent and _UID=0 as
// matches: _UID is the sender's uid as journald saw it (a trusted field that
// a client cannot set), so DISKCRYPT_* entries that another, unprivileged,
// process sends do not appear. A process running as root can still forge
// entries; the [audit] file (root-owned 0600) is the trail to keep.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/audit.hpp"
#include "agent/names.hpp"

namespace diskcrypt::audit {

// A file line longer than this (without its newline) is skipped and counted.
inline constexpr std::size_t kMaxAuditLine = std::size_t{64} * 1024;
// One page reads at most this many bytes, or lines (journal: entries), of
// its source, however few of them matched.
inline constexpr std::uint64_t kMaxScanBytes = std::uint64_t{64} * 1024 * 1024;
inline constexpr std::uint64_t kMaxScanLines = 1'000'000;
// A string of an event (a journal field's value, a string of a file line)
// shows at most this many input bytes; longer ones end in "...(N bytes)".
inline constexpr std::size_t kMaxAuditValue = 4096;
// One event's JSON text (dumped compact) is at most this long: a longer
// event has its longest strings cut further (each marked "...(N bytes)").
inline constexpr std::size_t kMaxEventJson = std::size_t{16} * 1024;
// The default page budget (as proto::kListPageBudget: a page and its envelope
// fit in one protocol message).
inline constexpr std::size_t kAuditPageBudget = std::size_t{48} * 1024;

struct Query {
    std::optional<std::string> disk_id;     // validated by the caller (names.hpp)
    std::optional<KeyRef> key;              // provider + key_id; matches events whose key has both (any version)
    std::optional<std::int64_t> since;      // seconds since the epoch; events at or after
    std::optional<std::string> after;       // the cursor a previous page returned
    std::size_t budget = kAuditPageBudget;  // bytes of JSON events per page (at least one event per page)
};

struct Page {
    std::vector<nlohmann::ordered_json> events;  // each as the file's JSON object (audit::to_json), oldest first
    std::optional<std::string> next;             // cursor when more remain
    std::string source;                          // "file /var/log/diskcrypt/audit.jsonl" or "journal"
    std::size_t skipped = 0;                     // lines/entries that were not valid events (never fatal)
};

// One page of events from the configured source (see above). Errors: usage
// (stale or malformed cursor), not_supported (no readable source), config
// (the file is not a regular file), internal (the file or the journal cannot
// be read).
Page query(const Settings& settings, const Query& q);

// The per-page work bound (tests use small ones; query() uses the defaults).
struct ScanLimits {
    std::uint64_t bytes = kMaxScanBytes;
    std::uint64_t lines = kMaxScanLines;
};

// One page from the JSON-lines file at `path` (query() with [audit] file). A
// missing file is an empty trail (the agent creates it with its next event).
Page query_file(const std::string& path, const Query& q, const ScanLimits& limits = {});

// One page from the systemd journal (query() when the agent logs there).
Page query_journal(const Query& q, const ScanLimits& limits = {});

// Parses one file line (without its newline) into an event. Strict: a JSON
// object of at most kMaxAuditLine bytes with "time" ("YYYY-MM-DDTHH:MM:SSZ",
// a valid UTC time), "event" and "result" (non-empty strings); "op",
// "disk_id", "service_account", "user", "device", "luks_uuid",
// "policy_revision", "reason", "message" strings or null; "caller" null or
// {uid, pid} (non-negative integers); "key" null or {provider, id (strings),
// version (string or null)}. Fields audit::to_json writes that are absent
// (lines of an older agent) become null; other names are ignored. Returns the
// event in to_json's shape and field order, every string sanitized and
// bounded; nullopt for anything else.
std::optional<nlohmann::ordered_json> parse_event_line(std::string_view line);

// One journal field's value as read: at most kMaxAuditValue bytes of it, and
// its full length (a reader need not copy more than it shows).
struct JournalValue {
    std::string data;
    std::size_t size = 0;  // the value's full length (data.size() when not cut)
};
// An entry's fields by name (MESSAGE, DISKCRYPT_EVENT, ...).
using JournalFields = std::map<std::string, JournalValue, std::less<>>;
// The journal field names an event may have (what a reader fetches).
const std::vector<std::string_view>& journal_field_names();

// Converts one journal entry's fields (audit::journal_fields' names) and its
// realtime timestamp (microseconds since the epoch) into the event JSON
// parse_event_line returns for the same event. The message is MESSAGE without
// the summary audit.cpp puts before it (all of MESSAGE when it does not start
// with that summary). Returns nullopt when DISKCRYPT_EVENT or
// DISKCRYPT_RESULT is missing or empty, or the time is past 9999.
std::optional<nlohmann::ordered_json> event_from_journal(const JournalFields& fields, std::uint64_t realtime_usec);

// "2026-12-03T15:48:07Z" (UTC), "2026-12-03" (midnight UTC), "@1764776887"
// (seconds since the epoch) or "-2h" / "-30m" / "-7d" / "-45s" (relative to
// `now`) -> seconds since the epoch; Error(usage) naming the accepted forms.
std::int64_t parse_since(std::string_view text, std::int64_t now);

// Seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ" (0 .. 9999-12-31T23:59:59Z).
std::string format_utc(std::int64_t seconds);

}  // namespace diskcrypt::audit
