// Fuzz target: what `diskcrypt audit` reads back (agent/audit_query.hpp).
//
// 1. The input as one line of the audit file: parse_event_line.
// 2. The input as a journal entry in export format ("NAME=value" lines;
//    __REALTIME_TIMESTAMP=USEC sets the entry's time): event_from_journal.
// 3. The input as a --since time: parse_since (Error(usage) is the refusal).
//
// Every event produced must dump as printable ASCII within kMaxEventJson,
// read back as a file line (a journal event is a valid file event), and, when
// no string of it was cut, read back as itself. Anything else (a crash, an
// exception, unbounded work) is a finding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "agent/audit_query.hpp"
#include "agent/error.hpp"

namespace {

namespace audit = diskcrypt::audit;

bool fuzz_ascii(std::string_view s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

void fuzz_expect(bool ok)
{
    if (!ok) {
        std::abort();
    }
}

// Whether every string of the event (and of caller and key) is at most
// kMaxAuditValue long: no string is cut when its dump is read back, so the
// event must come back unchanged.
bool fuzz_uncut(const nlohmann::ordered_json& event)
{
    const auto short_enough = [](const nlohmann::ordered_json& v) {
        return !v.is_string() || v.get_ref<const std::string&>().size() <= audit::kMaxAuditValue;
    };
    return std::all_of(event.begin(), event.end(), [&](const nlohmann::ordered_json& v) {
        return v.is_object() ? std::all_of(v.begin(), v.end(), short_enough) : short_enough(v);
    });
}

void fuzz_check_event(const nlohmann::ordered_json& event)
{
    const std::string text = event.dump(-1, ' ', true, nlohmann::ordered_json::error_handler_t::strict);
    fuzz_expect(fuzz_ascii(text));
    fuzz_expect(text.size() <= audit::kMaxEventJson);
    const auto again = audit::parse_event_line(text);
    fuzz_expect(again.has_value());
    if (fuzz_uncut(event)) {
        fuzz_expect(*again == event);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view input(reinterpret_cast<const char*>(data), size);

    if (const auto event = audit::parse_event_line(input)) {
        fuzz_check_event(*event);
    }

    audit::JournalFields fields;
    std::uint64_t usec = 1764776887000000;
    std::string_view rest = input;
    while (!rest.empty()) {
        const std::size_t end = rest.find('\n');
        const std::string_view entry = rest.substr(0, end);
        rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
        const std::size_t eq = entry.find('=');
        if (eq == std::string_view::npos) {
            continue;
        }
        const std::string_view name = entry.substr(0, eq);
        const std::string_view value = entry.substr(eq + 1);
        if (name == "__REALTIME_TIMESTAMP") {
            usec = std::strtoull(std::string(value).c_str(), nullptr, 10);
            continue;
        }
        // As the reader copies them: a prefix, and the full length.
        const std::size_t keep = name == "MESSAGE" ? 2 * audit::kMaxAuditValue : audit::kMaxAuditValue;
        fields.emplace(std::string(name), audit::JournalValue{std::string(value.substr(0, keep)), value.size()});
    }
    if (const auto event = audit::event_from_journal(fields, usec)) {
        fuzz_check_event(*event);
    }

    if (size <= 64) {
        try {
            const std::int64_t t = audit::parse_since(input, 1764776887);
            fuzz_expect(t >= 0);
            fuzz_expect(fuzz_ascii(audit::format_utc(t)));
        } catch (const diskcrypt::Error& e) {
            fuzz_expect(fuzz_ascii(e.what()));
            fuzz_expect(e.code() == diskcrypt::Errc::usage);
        }
    }
    return 0;
}
