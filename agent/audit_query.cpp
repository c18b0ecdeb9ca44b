#include "agent/audit_query.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <memory>
#include <utility>

#include "agent/error.hpp"
#include "agent/raii.hpp"
#include "agent/text.hpp"

namespace diskcrypt::audit {

namespace {

using AuditJson = nlohmann::ordered_json;

constexpr std::string_view kFileCursorPrefix = "f:";
constexpr std::string_view kJournalCursorPrefix = "j:";
constexpr std::string_view kSkipCursorSuffix = "skip";
constexpr std::size_t kMaxCursorText = 1024;
// Events nest two levels (the event, caller and key); lines nesting deeper
// than this are refused before the JSON parser builds them.
constexpr int kMaxLineNesting = 8;
// What each string of an event that is longer than kMaxEventJson keeps.
constexpr std::size_t kCutEventString = 256;
constexpr std::int64_t kMaxUtc = 253402300799;  // 9999-12-31T23:59:59Z
constexpr std::int64_t kSecondsPerDay = 86400;
constexpr std::size_t kFileReadChunk = std::size_t{64} * 1024;
constexpr std::string_view kAgentIdentifier = "diskcrypt-agent";  // audit::journal_fields' SYSLOG_IDENTIFIER

// The optional strings of an event, in audit::to_json's order, before and
// after "caller", with their journal field names.
struct AuditStringField {
    std::string_view json;
    std::string_view journal;
};
constexpr std::array<AuditStringField, 4> kStringsBeforeCaller = {{
    {"op", "DISKCRYPT_OP"},
    {"disk_id", "DISKCRYPT_DISK_ID"},
    {"service_account", "DISKCRYPT_SERVICE_ACCOUNT"},
    {"user", "DISKCRYPT_USER"},
}};
constexpr std::array<AuditStringField, 4> kStringsAfterCaller = {{
    {"device", "DISKCRYPT_DEVICE"},
    {"luks_uuid", "DISKCRYPT_LUKS_UUID"},
    {"policy_revision", "DISKCRYPT_POLICY_REVISION"},
    {"reason", "DISKCRYPT_REASON"},
}};

// The agent writes its events to the journal under systemd (audit.cpp's rule).
bool agent_under_systemd()
{
    // NOLINTBEGIN(concurrency-mt-unsafe): the agent does not change its environment
    return std::getenv("JOURNAL_STREAM") != nullptr || std::getenv("INVOCATION_ID") != nullptr;
    // NOLINTEND(concurrency-mt-unsafe)
}

// A string sd_journal_get_cursor allocated.
struct JournalCursorFree {
    // NOLINTNEXTLINE(cppcoreguidelines-no-malloc, cppcoreguidelines-owning-memory): sd_journal_get_cursor's pair
    void operator()(char* p) const { std::free(p); }
};

// Untrusted text for an event: sanitized, at most kMaxAuditValue input bytes,
// then "...(N bytes)" with N the full length (`full_size` when the caller
// holds only a prefix of the text).
std::string bounded_text(std::string_view text, std::size_t full_size = 0)
{
    const std::size_t full = std::max(full_size, text.size());
    std::string out = sanitize(text.substr(0, kMaxAuditValue));
    if (full > kMaxAuditValue) {
        out += "...(" + std::to_string(full) + " bytes)";
    }
    return out;
}

std::string dump_event(const AuditJson& event)
{
    return event.dump(-1, ' ', true, AuditJson::error_handler_t::replace);
}

// Keeps one event's JSON within kMaxEventJson: when it is longer, every
// string longer than kCutEventString is cut there (marked with its length).
AuditJson fit_event(AuditJson event)
{
    if (dump_event(event).size() <= kMaxEventJson) {
        return event;
    }
    const auto cut = [](AuditJson& value) {
        if (value.is_string() && value.get_ref<const std::string&>().size() > kCutEventString) {
            const auto& s = value.get_ref<const std::string&>();
            std::string shortened = s.substr(0, kCutEventString) + "...(" + std::to_string(s.size()) + " bytes)";
            value = std::move(shortened);
        }
    };
    for (auto& value : event) {
        if (value.is_object()) {
            for (auto& inner : value) {
                cut(inner);
            }
        } else {
            cut(value);
        }
    }
    return event;
}

// Decimal digits only (no sign, no space), at most max_digits of them.
std::optional<std::int64_t> audit_decimal(std::string_view text, std::size_t max_digits)
{
    if (text.empty() || text.size() > max_digits ||
        !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return std::nullopt;
    }
    std::int64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

// "YYYY-MM-DD" (1970..9999, a real date) -> days since the epoch.
std::optional<std::int64_t> audit_date_days(std::string_view text)
{
    if (text.size() != 10 || text[4] != '-' || text[7] != '-') {
        return std::nullopt;
    }
    const auto year = audit_decimal(text.substr(0, 4), 4);
    const auto month = audit_decimal(text.substr(5, 2), 2);
    const auto day = audit_decimal(text.substr(8, 2), 2);
    if (!year || !month || !day || *year < 1970) {
        return std::nullopt;
    }
    const std::chrono::year_month_day ymd{std::chrono::year{static_cast<int>(*year)},
                                          std::chrono::month{static_cast<unsigned>(*month)},
                                          std::chrono::day{static_cast<unsigned>(*day)}};
    if (!ymd.ok()) {
        return std::nullopt;
    }
    return std::chrono::sys_days{ymd}.time_since_epoch().count();
}

// "YYYY-MM-DDTHH:MM:SSZ" (what utc_timestamp() writes) -> seconds since the epoch.
std::optional<std::int64_t> audit_utc_seconds(std::string_view text)
{
    if (text.size() != 20 || text[10] != 'T' || text[13] != ':' || text[16] != ':' || text[19] != 'Z') {
        return std::nullopt;
    }
    const auto days = audit_date_days(text.substr(0, 10));
    const auto hours = audit_decimal(text.substr(11, 2), 2);
    const auto minutes = audit_decimal(text.substr(14, 2), 2);
    const auto seconds = audit_decimal(text.substr(17, 2), 2);
    if (!days || !hours || !minutes || !seconds || *hours > 23 || *minutes > 59 || *seconds > 59) {
        return std::nullopt;
    }
    return *days * kSecondsPerDay + *hours * 3600 + *minutes * 60 + *seconds;
}

// Whether `text` nests objects and arrays at most kMaxLineNesting deep (strings skipped).
bool audit_line_shallow(std::string_view text)
{
    int depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > kMaxLineNesting) {
                return false;
            }
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return true;
}

// A file event's string or null: nullopt when present with another type.
std::optional<AuditJson> line_string_or_null(const AuditJson& object, std::string_view name)
{
    const auto it = object.find(name);
    if (it == object.end() || it->is_null()) {
        return AuditJson(nullptr);
    }
    if (!it->is_string()) {
        return std::nullopt;
    }
    return AuditJson(bounded_text(it->get_ref<const std::string&>()));
}

// A JSON integer in 0..max.
std::optional<std::int64_t> line_integer(const AuditJson& object, std::string_view name, std::int64_t max)
{
    const auto it = object.find(name);
    if (it == object.end()) {
        return std::nullopt;
    }
    if (it->is_number_unsigned()) {
        const auto v = it->get<std::uint64_t>();
        if (v <= static_cast<std::uint64_t>(max)) {
            return static_cast<std::int64_t>(v);
        }
    } else if (it->is_number_integer()) {
        const auto v = it->get<std::int64_t>();
        if (v >= 0 && v <= max) {
            return v;
        }
    }
    return std::nullopt;
}

AuditJson caller_json(std::int64_t uid, std::int64_t pid)
{
    return AuditJson{{"uid", static_cast<std::uint32_t>(uid)}, {"pid", pid}};
}

constexpr std::int64_t kMaxCallerUid = std::numeric_limits<std::uint32_t>::max();
constexpr std::int64_t kMaxCallerPid = std::numeric_limits<std::int32_t>::max();

// "caller": null or {uid, pid}.
std::optional<AuditJson> line_caller(const AuditJson& object)
{
    const auto it = object.find("caller");
    if (it == object.end() || it->is_null()) {
        return AuditJson(nullptr);
    }
    if (!it->is_object()) {
        return std::nullopt;
    }
    const auto uid = line_integer(*it, "uid", kMaxCallerUid);
    const auto pid = line_integer(*it, "pid", kMaxCallerPid);
    if (!uid || !pid) {
        return std::nullopt;
    }
    return caller_json(*uid, *pid);
}

// "key": null or {provider, id, version}.
std::optional<AuditJson> line_key(const AuditJson& object)
{
    const auto it = object.find("key");
    if (it == object.end() || it->is_null()) {
        return AuditJson(nullptr);
    }
    if (!it->is_object()) {
        return std::nullopt;
    }
    const auto provider = it->find("provider");
    const auto id = it->find("id");
    if (provider == it->end() || !provider->is_string() || id == it->end() || !id->is_string()) {
        return std::nullopt;
    }
    const auto version = line_string_or_null(*it, "version");
    if (!version) {
        return std::nullopt;
    }
    return AuditJson{{"provider", bounded_text(provider->get_ref<const std::string&>())},
                     {"id", bounded_text(id->get_ref<const std::string&>())},
                     {"version", *version}};
}

std::optional<AuditJson> event_from_line_object(const AuditJson& j)
{
    if (!j.is_object()) {
        return std::nullopt;
    }
    const auto time = j.find("time");
    const auto event = j.find("event");
    const auto result = j.find("result");
    if (time == j.end() || !time->is_string() || !audit_utc_seconds(time->get_ref<const std::string&>()) ||
        event == j.end() || !event->is_string() || event->get_ref<const std::string&>().empty() || result == j.end() ||
        !result->is_string() || result->get_ref<const std::string&>().empty()) {
        return std::nullopt;
    }
    AuditJson out = AuditJson::object();
    out["time"] = *time;  // checked above: printable ASCII
    out["event"] = bounded_text(event->get_ref<const std::string&>());
    out["result"] = bounded_text(result->get_ref<const std::string&>());
    const auto strings = [&](const auto& fields) {
        for (const auto& f : fields) {
            auto value = line_string_or_null(j, f.json);
            if (!value) {
                return false;
            }
            out[std::string(f.json)] = std::move(*value);
        }
        return true;
    };
    if (!strings(kStringsBeforeCaller)) {
        return std::nullopt;
    }
    auto caller = line_caller(j);
    if (!caller) {
        return std::nullopt;
    }
    out["caller"] = std::move(*caller);
    if (!strings(kStringsAfterCaller)) {
        return std::nullopt;
    }
    auto message = line_string_or_null(j, "message");
    auto key = line_key(j);
    if (!message || !key) {
        return std::nullopt;
    }
    out["message"] = std::move(*message);
    out["key"] = std::move(*key);
    return fit_event(std::move(out));
}

// Journal fields.

const JournalValue* journal_value(const JournalFields& fields, std::string_view name)
{
    const auto it = fields.find(name);
    return it == fields.end() ? nullptr : &it->second;
}

// A field's value as event text; null when missing or empty (journal_fields
// leaves out empty fields, to_json writes them as null).
AuditJson journal_text(const JournalFields& fields, std::string_view name)
{
    const JournalValue* v = journal_value(fields, name);
    if (v == nullptr || v->data.empty()) {
        return nullptr;
    }
    return bounded_text(v->data, v->size);
}

// The whole value when the reader holds it all (for comparisons); nullopt when cut.
std::optional<std::string_view> journal_whole(const JournalFields& fields, std::string_view name)
{
    const JournalValue* v = journal_value(fields, name);
    if (v == nullptr) {
        return std::string_view{};
    }
    if (v->size > v->data.size()) {
        return std::nullopt;
    }
    return std::string_view(v->data);
}

std::optional<std::int64_t> journal_integer(const JournalFields& fields, std::string_view name, std::int64_t max)
{
    const JournalValue* v = journal_value(fields, name);
    if (v == nullptr || v->size > v->data.size()) {
        return std::nullopt;
    }
    const auto n = audit_decimal(v->data, 10);
    if (!n || *n > max) {
        return std::nullopt;
    }
    return n;
}

// The event's message: MESSAGE without the summary audit.cpp's journal_fields
// puts before it ("audit: EVENT RESULT[ disk=D][ key=P:K[@V]] uid=U pid=P[
// reason=R]", then ": " and the message when there is one).
AuditJson journal_message(const JournalFields& fields)
{
    const JournalValue* message = journal_value(fields, "MESSAGE");
    if (message == nullptr || message->data.empty()) {
        return nullptr;
    }
    const std::size_t full = std::max(message->size, message->data.size());
    const std::array<std::optional<std::string_view>, 9> parts = {
        journal_whole(fields, "DISKCRYPT_EVENT"),      journal_whole(fields, "DISKCRYPT_RESULT"),
        journal_whole(fields, "DISKCRYPT_DISK_ID"),    journal_whole(fields, "DISKCRYPT_KEY_PROVIDER"),
        journal_whole(fields, "DISKCRYPT_KEY_ID"),     journal_whole(fields, "DISKCRYPT_KEY_VERSION"),
        journal_whole(fields, "DISKCRYPT_CALLER_UID"), journal_whole(fields, "DISKCRYPT_CALLER_PID"),
        journal_whole(fields, "DISKCRYPT_REASON"),
    };
    if (std::all_of(parts.begin(), parts.end(), [](const auto& p) { return p.has_value(); })) {
        const auto& [event, result, disk, provider, key_id, version, uid, pid, reason] = parts;
        std::string summary = "audit: " + std::string(*event) + " " + std::string(*result);
        if (!disk->empty()) {
            summary += " disk=" + std::string(*disk);
        }
        if (!provider->empty() || !key_id->empty()) {
            summary += " key=" + std::string(*provider) + ":" + std::string(*key_id);
            if (!version->empty()) {
                summary += "@" + std::string(*version);
            }
        }
        summary += " uid=" + std::string(*uid) + " pid=" + std::string(*pid);
        if (!reason->empty()) {
            summary += " reason=" + std::string(*reason);
        }
        const std::string_view text = message->data;
        if (text.size() == summary.size() && full == text.size() && text == summary) {
            return nullptr;  // no message: the summary alone
        }
        const std::string separated = summary + ": ";
        if (text.size() >= separated.size() && text.substr(0, separated.size()) == separated) {
            const std::string_view rest = text.substr(separated.size());
            if (rest.empty() && full == text.size()) {
                return nullptr;
            }
            return bounded_text(rest, full - separated.size());
        }
    }
    return bounded_text(message->data, full);  // not the agent's summary: all of MESSAGE
}

// Cursors.

struct AuditFileCursor {
    std::uint64_t inode = 0;
    std::uint64_t offset = 0;
    bool skip = false;  // offset is inside an over-long line: resume after its end
};

std::string audit_file_cursor_text(const AuditFileCursor& c)
{
    return std::string(kFileCursorPrefix) + std::to_string(c.inode) + ":" + std::to_string(c.offset) +
           (c.skip ? ":" + std::string(kSkipCursorSuffix) : "");
}

std::optional<std::uint64_t> cursor_number(std::string_view text)
{
    if (text.empty() || text.size() > 20 ||
        !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return std::nullopt;
    }
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

// "f:<inode>:<offset>[:skip]".
std::optional<AuditFileCursor> parse_audit_file_cursor(std::string_view text)
{
    if (text.substr(0, kFileCursorPrefix.size()) != kFileCursorPrefix) {
        return std::nullopt;
    }
    text.remove_prefix(kFileCursorPrefix.size());
    const std::size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
        return std::nullopt;
    }
    const auto inode = cursor_number(text.substr(0, colon));
    std::string_view rest = text.substr(colon + 1);
    bool skip = false;
    if (const std::size_t second = rest.find(':'); second != std::string_view::npos) {
        if (rest.substr(second + 1) != kSkipCursorSuffix) {
            return std::nullopt;
        }
        skip = true;
        rest = rest.substr(0, second);
    }
    const auto offset = cursor_number(rest);
    if (!inode || !offset) {
        return std::nullopt;
    }
    return AuditFileCursor{*inode, *offset, skip};
}

[[noreturn]] void stale_audit_cursor(const std::string& why)
{
    throw Error(Errc::usage, "the audit cursor is stale: " + why,
                "run the command again without a cursor: it starts from the oldest event the agent keeps");
}

[[noreturn]] void invalid_audit_cursor(std::string_view cursor)
{
    throw Error(Errc::usage, "the audit cursor '" + printable(cursor, 128) + "' is not valid",
                "pass the cursor (\"next\") of the previous page unchanged, or none to start from the oldest event");
}

bool event_matches(const AuditJson& event, const Query& q)
{
    const auto string_is = [](const AuditJson& object, std::string_view name, const std::string& expected) {
        const auto it = object.find(name);
        return it != object.end() && it->is_string() && it->get_ref<const std::string&>() == expected;
    };
    if (q.disk_id && !string_is(event, "disk_id", *q.disk_id)) {
        return false;
    }
    if (q.key) {
        const auto key = event.find("key");
        if (key == event.end() || !key->is_object() || !string_is(*key, "provider", q.key->provider) ||
            !string_is(*key, "id", q.key->key_id)) {
            return false;
        }
    }
    if (q.since) {
        const auto time = event.find("time");
        if (time == event.end() || !time->is_string()) {
            return false;
        }
        const auto t = audit_utc_seconds(time->get_ref<const std::string&>());
        if (!t || *t < *q.since) {
            return false;
        }
    }
    return true;
}

// Collects a page's events within its budget (at least one).
class PageFiller {
public:
    PageFiller(Page& page, const Query& q) : page_(page), query_(q) {}

    // Offers one candidate (nullopt: not an event, counted); false when the
    // page is full and the candidate is left for the next page.
    bool offer(std::optional<AuditJson> event)
    {
        if (!event) {
            ++page_.skipped;
            return true;
        }
        if (!event_matches(*event, query_)) {
            return true;
        }
        const std::size_t size = dump_event(*event).size() + 1;
        if (!page_.events.empty() && used_ + size > query_.budget) {
            return false;
        }
        used_ += size;
        page_.events.push_back(std::move(*event));
        return true;
    }

private:
    Page& page_;
    const Query& query_;
    std::size_t used_ = 0;
};

std::string audit_file_name(const std::string& path) { return printable(path); }

std::uint64_t audit_file_size(int fd, const std::string& path)
{
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        throw Error(Errc::internal, errno_text("cannot stat the audit file " + audit_file_name(path), errno),
                    "check [audit] file in the agent's configuration");
    }
    return static_cast<std::uint64_t>(st.st_size);
}

// Reads the file from `from` on into the page, line by line, within the
// limits; sets page.next when it stops before the end.
void scan_audit_file(int fd, const std::string& path, AuditFileCursor from, const Query& q, const ScanLimits& limits,
                     Page& page)
{
    PageFiller filler(page, q);
    std::vector<char> buffer(kFileReadChunk);
    std::string line;
    bool skipping = from.skip;               // inside an over-long line (already counted)
    std::uint64_t pos = from.offset;         // the next byte to read
    std::uint64_t line_start = from.offset;  // where the current line begins
    std::uint64_t lines = 0;
    const auto stop_at = [&](std::uint64_t offset, bool skip) {
        page.next = audit_file_cursor_text(AuditFileCursor{from.inode, offset, skip});
    };
    for (;;) {
        if (skipping && pos - from.offset >= limits.bytes) {
            stop_at(pos, true);
            return;
        }
        const ssize_t n = pread(fd, buffer.data(), buffer.size(), static_cast<off_t>(pos));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            throw Error(Errc::internal, errno_text("cannot read the audit file " + audit_file_name(path), errno),
                        "check [audit] file in the agent's configuration");
        }
        if (n == 0) {
            break;
        }
        std::string_view chunk(buffer.data(), static_cast<std::size_t>(n));
        std::uint64_t chunk_pos = pos;
        pos += static_cast<std::uint64_t>(n);
        while (!chunk.empty()) {
            const std::size_t newline = chunk.find('\n');
            const std::string_view part = chunk.substr(0, newline);
            if (!skipping) {
                if (line.size() + part.size() > kMaxAuditLine) {
                    skipping = true;
                    ++page.skipped;
                    std::string().swap(line);
                } else {
                    line.append(part);
                }
            }
            if (newline == std::string_view::npos) {
                break;
            }
            chunk.remove_prefix(newline + 1);
            chunk_pos += newline + 1;
            if (!skipping && !filler.offer(parse_event_line(line))) {
                stop_at(line_start, false);  // the page is full: this line starts the next one
                return;
            }
            skipping = false;
            line.clear();
            ++lines;
            line_start = chunk_pos;
            if (lines >= limits.lines || line_start - from.offset >= limits.bytes) {
                if (line_start < audit_file_size(fd, path)) {
                    stop_at(line_start, false);
                }
                return;
            }
        }
    }
    // The end: a last line without its newline (an interrupted write) is read as it is.
    if (!skipping && !line.empty() && !filler.offer(parse_event_line(line))) {
        stop_at(line_start, false);
    }
}

}  // namespace

std::optional<nlohmann::ordered_json> parse_event_line(std::string_view line)
{
    if (line.empty() || line.size() > kMaxAuditLine || !audit_line_shallow(line)) {
        return std::nullopt;
    }
    try {
        const AuditJson j = AuditJson::parse(line, nullptr, false);
        if (j.is_discarded()) {
            return std::nullopt;
        }
        return event_from_line_object(j);
    } catch (const nlohmann::ordered_json::exception&) {
        return std::nullopt;  // e.g. out_of_range for a number too large for a double
    }
}

const std::vector<std::string_view>& journal_field_names()
{
    static const std::vector<std::string_view> names = {
        "MESSAGE",
        "DISKCRYPT_EVENT",
        "DISKCRYPT_RESULT",
        "DISKCRYPT_OP",
        "DISKCRYPT_DISK_ID",
        "DISKCRYPT_SERVICE_ACCOUNT",
        "DISKCRYPT_USER",
        "DISKCRYPT_POLICY_REVISION",
        "DISKCRYPT_DEVICE",
        "DISKCRYPT_LUKS_UUID",
        "DISKCRYPT_KEY_PROVIDER",
        "DISKCRYPT_KEY_ID",
        "DISKCRYPT_KEY_VERSION",
        "DISKCRYPT_REASON",
        "DISKCRYPT_CALLER_UID",
        "DISKCRYPT_CALLER_PID",
    };
    return names;
}

std::optional<nlohmann::ordered_json> event_from_journal(const JournalFields& fields, std::uint64_t realtime_usec)
{
    const JournalValue* event = journal_value(fields, "DISKCRYPT_EVENT");
    const JournalValue* result = journal_value(fields, "DISKCRYPT_RESULT");
    const std::uint64_t seconds = realtime_usec / 1'000'000;
    if (event == nullptr || event->data.empty() || result == nullptr || result->data.empty() ||
        seconds > static_cast<std::uint64_t>(kMaxUtc)) {
        return std::nullopt;
    }
    AuditJson out = AuditJson::object();
    out["time"] = format_utc(static_cast<std::int64_t>(seconds));
    out["event"] = bounded_text(event->data, event->size);
    out["result"] = bounded_text(result->data, result->size);
    for (const auto& f : kStringsBeforeCaller) {
        out[std::string(f.json)] = journal_text(fields, f.journal);
    }
    const auto uid = journal_integer(fields, "DISKCRYPT_CALLER_UID", kMaxCallerUid);
    const auto pid = journal_integer(fields, "DISKCRYPT_CALLER_PID", kMaxCallerPid);
    out["caller"] = uid && pid ? caller_json(*uid, *pid) : AuditJson(nullptr);
    for (const auto& f : kStringsAfterCaller) {
        out[std::string(f.json)] = journal_text(fields, f.journal);
    }
    out["message"] = journal_message(fields);
    const AuditJson provider = journal_text(fields, "DISKCRYPT_KEY_PROVIDER");
    const AuditJson key_id = journal_text(fields, "DISKCRYPT_KEY_ID");
    if (provider.is_null() && key_id.is_null()) {
        out["key"] = nullptr;
    } else {
        out["key"] = AuditJson{{"provider", provider.is_null() ? AuditJson("") : provider},
                               {"id", key_id.is_null() ? AuditJson("") : key_id},
                               {"version", journal_text(fields, "DISKCRYPT_KEY_VERSION")}};
    }
    return fit_event(std::move(out));
}

std::string format_utc(std::int64_t seconds)
{
    seconds = std::clamp<std::int64_t>(seconds, 0, kMaxUtc);
    const std::chrono::year_month_day ymd{std::chrono::sys_days{std::chrono::days{seconds / kSecondsPerDay}}};
    const std::int64_t in_day = seconds % kSecondsPerDay;
    const auto padded = [](std::int64_t value, std::size_t width) {
        std::string s = std::to_string(value);
        return std::string(s.size() < width ? width - s.size() : 0, '0') + s;
    };
    return padded(static_cast<int>(ymd.year()), 4) + "-" + padded(static_cast<unsigned>(ymd.month()), 2) + "-" +
           padded(static_cast<unsigned>(ymd.day()), 2) + "T" + padded(in_day / 3600, 2) + ":" +
           padded(in_day % 3600 / 60, 2) + ":" + padded(in_day % 60, 2) + "Z";
}

std::int64_t parse_since(std::string_view text, std::int64_t now)
{
    if (const auto t = audit_utc_seconds(text)) {
        return *t;
    }
    if (const auto days = audit_date_days(text)) {
        return *days * kSecondsPerDay;
    }
    if (text.size() >= 2 && text.front() == '@') {
        if (const auto n = audit_decimal(text.substr(1), 12); n && *n <= kMaxUtc) {
            return *n;
        }
    }
    if (text.size() >= 3 && text.front() == '-') {
        std::int64_t unit = 0;
        switch (text.back()) {
            case 's':
                unit = 1;
                break;
            case 'm':
                unit = 60;
                break;
            case 'h':
                unit = 3600;
                break;
            case 'd':
                unit = kSecondsPerDay;
                break;
            default:
                break;
        }
        if (const auto n = audit_decimal(text.substr(1, text.size() - 2), 9); n && unit != 0) {
            return std::max<std::int64_t>(0, now - *n * unit);
        }
    }
    throw Error(Errc::usage,
                "the time '" + printable(text, 64) +
                    "' is not valid: use YYYY-MM-DDTHH:MM:SSZ (UTC), YYYY-MM-DD (midnight UTC), @SECONDS (since "
                    "the epoch) or -N followed by s, m, h or d (that long ago)",
                "e.g. --since 2026-12-03T15:48:07Z, --since 2026-12-03, --since @1764776887 or --since -2h");
}

Page query_file(const std::string& path, const Query& q, const ScanLimits& limits)
{
    Page page;
    page.source = "file " + audit_file_name(path);
    AuditFileCursor from;
    if (q.after) {
        const std::string_view after = *q.after;
        if (after.substr(0, kJournalCursorPrefix.size()) == kJournalCursorPrefix) {
            stale_audit_cursor("it is a journal cursor, and this agent now reads its audit events from the file " +
                               audit_file_name(path));
        }
        const auto cursor = after.size() <= kMaxCursorText ? parse_audit_file_cursor(after) : std::nullopt;
        if (!cursor) {
            invalid_audit_cursor(after);
        }
        from = *cursor;
    }
    // O_NONBLOCK: a FIFO in the file's place must not block the agent (refused below).
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
    const FileDescriptor fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd) {
        const int err = errno;
        if (err == ENOENT && !q.after) {
            return page;  // no event yet (the agent creates the file with its next event)
        }
        if (err == ENOENT) {
            stale_audit_cursor("the audit file " + audit_file_name(path) + " no longer exists");
        }
        throw Error(Errc::internal, errno_text("cannot open the audit file " + audit_file_name(path), err),
                    "check [audit] file in the agent's configuration and the file's owner and mode (root, 0600)");
    }
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) {
        throw Error(Errc::internal, errno_text("cannot stat the audit file " + audit_file_name(path), errno),
                    "check [audit] file in the agent's configuration");
    }
    if (!S_ISREG(st.st_mode)) {
        throw Error(Errc::config, "the audit file " + audit_file_name(path) + " is not a regular file",
                    "set [audit] file to a regular file (e.g. /var/log/diskcrypt/audit.jsonl)");
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (!q.after) {
        from.inode = static_cast<std::uint64_t>(st.st_ino);
    } else {
        if (from.inode != static_cast<std::uint64_t>(st.st_ino)) {
            stale_audit_cursor("the audit file " + audit_file_name(path) +
                               " was rotated or replaced since the previous page (it is another file now)");
        }
        if (from.offset > size) {
            stale_audit_cursor("it points past the end of the audit file " + audit_file_name(path) + " (" +
                               std::to_string(size) + " bytes): the file was truncated since the previous page");
        }
        if (!from.skip && from.offset > 0) {
            char previous = 0;
            const ssize_t n = pread(fd.get(), &previous, 1, static_cast<off_t>(from.offset - 1));
            if (n != 1 || previous != '\n') {
                stale_audit_cursor("it does not point at the start of a line of the audit file " +
                                   audit_file_name(path) + ": the file was truncated or rewritten since");
            }
        }
    }
    scan_audit_file(fd.get(), path, from, q, limits, page);
    return page;
}

Page query_journal(const Query& q, const ScanLimits& limits)
{
    Page page;
    page.source = "journal";
    std::optional<std::string> after;
    if (q.after) {
        const std::string_view text = *q.after;
        if (text.substr(0, kFileCursorPrefix.size()) == kFileCursorPrefix) {
            stale_audit_cursor(
                "it is an audit file's cursor, and this agent now reads its audit events from the journal");
        }
        const std::string_view rest = text.substr(std::min(text.size(), kJournalCursorPrefix.size()));
        if (text.substr(0, kJournalCursorPrefix.size()) != kJournalCursorPrefix || rest.empty() ||
            text.size() > kMaxCursorText || !is_printable(rest)) {
            invalid_audit_cursor(text);
        }
        after = std::string(rest);
    }
    sd_journal* raw = nullptr;
    int r = sd_journal_open(&raw, SD_JOURNAL_LOCAL_ONLY | SD_JOURNAL_SYSTEM);
    if (r < 0) {
        throw Error(Errc::internal, errno_text("cannot open the systemd journal", -r),
                    "check that systemd-journald runs, or set [audit] file to keep the audit events in a file");
    }
    const SdJournal journal(raw);
    sd_journal* j = journal.get();
    // The agent's entries only, and only those a root process sent (_UID is
    // journald's, not the sender's, field): an unprivileged process that sends
    // DISKCRYPT_* fields under the agent's identifier is not shown.
    std::vector<std::string> matches = {"SYSLOG_IDENTIFIER=" + std::string(kAgentIdentifier), "_UID=0"};
    if (q.disk_id) {
        matches.push_back("DISKCRYPT_DISK_ID=" + *q.disk_id);
    }
    if (q.key) {
        matches.push_back("DISKCRYPT_KEY_PROVIDER=" + q.key->provider);
        matches.push_back("DISKCRYPT_KEY_ID=" + q.key->key_id);
    }
    for (const auto& m : matches) {
        r = sd_journal_add_match(j, m.data(), m.size());
        if (r < 0) {
            throw Error(Errc::internal, errno_text("cannot filter the systemd journal by " + printable(m), -r));
        }
    }
    if (after) {
        r = sd_journal_seek_cursor(j, after->c_str());
        if (r < 0) {
            invalid_audit_cursor(*q.after);
        }
    } else if (q.since) {
        r = sd_journal_seek_realtime_usec(
            j, static_cast<std::uint64_t>(std::clamp<std::int64_t>(*q.since, 0, kMaxUtc)) * 1'000'000U);
    } else {
        r = sd_journal_seek_head(j);
    }
    if (r < 0) {
        throw Error(Errc::internal, errno_text("cannot seek in the systemd journal", -r));
    }
    const auto entry_cursor = [j] {
        char* c = nullptr;
        const int rc = sd_journal_get_cursor(j, &c);
        const std::unique_ptr<char, JournalCursorFree> owned(c);
        if (rc < 0 || c == nullptr) {
            throw Error(Errc::internal, errno_text("cannot read a systemd journal cursor", rc < 0 ? -rc : EINVAL));
        }
        return std::string(c);
    };
    PageFiller filler(page, q);
    std::string last;  // the cursor of the last entry read
    std::uint64_t entries = 0;
    std::uint64_t bytes = 0;
    bool first = true;
    for (;;) {
        if (entries >= limits.lines || bytes >= limits.bytes) {
            page.next = std::string(kJournalCursorPrefix) + last;
            return page;
        }
        r = sd_journal_next(j);
        if (r < 0) {
            throw Error(Errc::internal, errno_text("cannot read the systemd journal", -r));
        }
        if (r == 0) {
            return page;
        }
        ++entries;
        if (std::exchange(first, false) && after && sd_journal_test_cursor(j, after->c_str()) > 0) {
            last = *after;  // the previous page's last entry
            continue;
        }
        JournalFields fields;
        for (const std::string_view name : journal_field_names()) {
            const void* data = nullptr;
            std::size_t length = 0;
            if (sd_journal_get_data(j, std::string(name).c_str(), &data, &length) < 0 || data == nullptr ||
                length <= name.size()) {
                continue;
            }
            bytes += length;
            const std::string_view value(static_cast<const char*>(data) + name.size() + 1, length - name.size() - 1);
            // MESSAGE holds the summary before the message: room for both.
            const std::size_t keep = name == "MESSAGE" ? 2 * kMaxAuditValue : kMaxAuditValue;
            fields.emplace(std::string(name), JournalValue{std::string(value.substr(0, keep)), value.size()});
        }
        if (journal_value(fields, "DISKCRYPT_EVENT") == nullptr) {
            // The agent's log lines (its stderr under SyslogIdentifier=)
            // share the identifier: not events, and not counted as skipped.
            last = entry_cursor();
            continue;
        }
        std::uint64_t usec = 0;
        std::optional<AuditJson> event;
        if (sd_journal_get_realtime_usec(j, &usec) >= 0) {
            event = event_from_journal(fields, usec);
        }
        if (!filler.offer(std::move(event))) {
            page.next = std::string(kJournalCursorPrefix) + last;  // this entry starts the next page
            return page;
        }
        last = entry_cursor();
    }
}

Page query(const Settings& settings, const Query& q)
{
    if (settings.file) {
        return query_file(*settings.file, q);
    }
    if (settings.journal == Journal::always || (settings.journal == Journal::automatic && agent_under_systemd())) {
        return query_journal(q);
    }
    throw Error(Errc::not_supported,
                "this agent keeps its audit events only in its log (stderr): no [audit] file is configured, and it "
                "does not write them to the journal (not started by systemd, or [audit] journal = \"never\")",
                "set [audit] file (e.g. /var/log/diskcrypt/audit.jsonl) in the agent's configuration, or run the "
                "agent under systemd with [audit] journal = \"auto\" or \"always\"; until then, read the agent's log");
}

}  // namespace diskcrypt::audit
