#include "agent/disk/token.hpp"

#include <ctime>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "agent/disk/header.hpp"
#include "agent/encoding.hpp"
#include "agent/error.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

using nlohmann::json;

constexpr std::size_t kIvBytes = 12;
constexpr std::size_t kTagBytes = 16;

[[noreturn]] void fail(const std::string& what)
{
    throw Error(Errc::header, "diskcrypt-kms token: " + what,
                "the header was damaged or edited; restore it from a header backup");
}

std::string type_of(const json& v)
{
    if (v.is_null()) {
        return "null";
    }
    if (v.is_boolean()) {
        return "a boolean";
    }
    if (v.is_number()) {
        return "a number";
    }
    if (v.is_string()) {
        return "a string";
    }
    if (v.is_array()) {
        return "an array";
    }
    return "an object";
}

// Reads fields of one JSON object, remembering which were read.
class Fields {
public:
    Fields(const json& obj, std::string path) : obj_(obj), path_(std::move(path))
    {
        if (!obj_.is_object()) {
            fail(label() + " must be an object, not " + type_of(obj_));
        }
    }

    const json& required(const std::string& key)
    {
        const auto it = obj_.find(key);
        if (it == obj_.end()) {
            fail("missing field " + name(key));
        }
        seen_.insert(key);
        return *it;
    }

    [[nodiscard]] bool has(const std::string& key) const { return obj_.contains(key); }

    std::string string(const std::string& key)
    {
        const json& v = required(key);
        if (!v.is_string()) {
            fail("field " + name(key) + " must be a string, not " + type_of(v));
        }
        return v.get<std::string>();
    }

    std::string checked(const std::string& key, void (*validate)(std::string_view))
    {
        std::string v = string(key);
        try {
            validate(v);
        } catch (const Error& e) {
            std::string what = "field " + name(key);
            what += ": ";
            what += e.what();
            // The validators quote values with '?' for odd bytes; show them escaped.
            if (!is_printable(v)) {
                what += " (the header has '";
                what += printable(raw_bytes(v), 200);
                what += "')";
            }
            fail(what);
        }
        return v;
    }

    long long integer(const std::string& key)
    {
        const json& v = required(key);
        if (!v.is_number_integer()) {
            fail("field " + name(key) + " must be an integer, not " + type_of(v));
        }
        return v.get<long long>();
    }

    // A byte count: a non-negative integer below 2^62.
    std::uint64_t size(const std::string& key)
    {
        const json& v = required(key);
        if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<long long>() >= 0)) {
            fail("field " + name(key) + " must be a non-negative integer, not " + type_of(v));
        }
        const auto n = v.get<std::uint64_t>();
        if (n >= (std::uint64_t{1} << 62U)) {
            fail("field " + name(key) + " is too large");
        }
        return n;
    }

    ResourceKind kind(const std::string& key)
    {
        const std::string text = string(key);
        const auto k = kind_from_name(text);
        if (!k) {
            fail("field " + name(key) + R"( must be "disk", "snapshot" or "image", not ')" +
                 printable(raw_bytes(text), 40) + "'");
        }
        return *k;
    }

    std::vector<std::uint8_t> base64(const std::string& key, std::size_t size)
    {
        const std::string text = string(key);
        auto bytes = base64_decode(text);
        if (!bytes) {
            fail("field " + name(key) + " is not canonical base64");
        }
        if (bytes->size() != size) {
            fail("field " + name(key) + " must decode to " + std::to_string(size) + " bytes, not " +
                 std::to_string(bytes->size()));
        }
        return *bytes;
    }

    // Refuses fields that were not read (a newer schema would bump the version).
    void finish(std::initializer_list<std::string_view> also_allowed = {}) const
    {
        for (const auto& [key, value] : obj_.items()) {
            bool allowed = seen_.contains(key);
            for (const auto a : also_allowed) {
                allowed = allowed || key == a;
            }
            if (!allowed) {
                fail("unknown field " + name(key) + " (schema version " + std::to_string(kTokenVersion) + ")");
            }
        }
    }

    [[nodiscard]] std::string name(const std::string& key) const
    {
        std::string out = "'";
        if (!path_.empty()) {
            out += path_;
            out += '.';
        }
        out += printable(raw_bytes(key), 200);
        out += '\'';
        return out;
    }

private:
    [[nodiscard]] std::string label() const { return path_.empty() ? "the token" : "field '" + path_ + "'"; }

    const json& obj_;
    std::string path_;
    std::set<std::string, std::less<>> seen_;
};

void validate_disk_id_field(std::string_view v) { validate_disk_id(v); }

void validate_type_name(std::string_view v)
{
    const bool ok = !v.empty() && v.size() <= 64 &&
                    v.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") == std::string_view::npos;
    if (!ok) {
        throw Error(Errc::usage, "a disk type has 1-64 characters from a-z 0-9 -");
    }
}

void validate_timestamp(std::string_view v)
{
    // YYYY-MM-DDTHH:MM:SSZ
    constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:ddZ";
    bool ok = v.size() == kShape.size();
    for (std::size_t i = 0; ok && i < v.size(); ++i) {
        ok = kShape[i] == 'd' ? (v[i] >= '0' && v[i] <= '9') : v[i] == kShape[i];
    }
    if (!ok) {
        throw Error(Errc::usage, "expected a UTC time as YYYY-MM-DDTHH:MM:SSZ");
    }
}

// Parses JSON and refuses duplicate keys at any level (two parsers, this one
// and libcryptsetup's, must never disagree about a field's value).
json parse_strict(std::string_view text)
{
    std::vector<std::set<std::string>> stack;
    bool duplicate = false;
    std::string dup_key;
    const json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
        switch (event) {
            case json::parse_event_t::object_start:
                stack.emplace_back();
                break;
            case json::parse_event_t::object_end:
                if (!stack.empty()) {
                    stack.pop_back();
                }
                break;
            case json::parse_event_t::key:
                if (!stack.empty() && !stack.back().insert(parsed.get<std::string>()).second) {
                    duplicate = true;
                    dup_key = parsed.get<std::string>();
                }
                break;
            default:
                break;
        }
        return true;
    };
    json j;
    const std::string ascii = ascii_json(text);
    try {
        j = json::parse(ascii.begin(), ascii.end(), cb);
    } catch (const json::exception& e) {
        // parse_error, or out_of_range for a number like 1e9999. The
        // parser's message quotes the bytes it choked on.
        fail(std::string("not valid JSON: ") + printable(e.what()));
    }
    if (duplicate) {
        fail("duplicate field '" + printable(raw_bytes(dup_key), 200) + "'");
    }
    return j;
}

}  // namespace

std::string_view kind_name(ResourceKind kind)
{
    switch (kind) {
        case ResourceKind::disk:
            return "disk";
        case ResourceKind::snapshot:
            return "snapshot";
        case ResourceKind::image:
            return "image";
    }
    return "disk";
}

std::optional<ResourceKind> kind_from_name(std::string_view name)
{
    for (const auto k : {ResourceKind::disk, ResourceKind::snapshot, ResourceKind::image}) {
        if (kind_name(k) == name) {
            return k;
        }
    }
    return std::nullopt;
}

std::string encode_token(const Token& t)
{
    json key = {{"provider", t.key.provider},
                {"provider_type", t.provider_type},
                {"id", t.key.key_id},
                {"version", t.key.version}};
    json wrap = {{"alg", t.wrapped.algorithm},
                 {"ad_version", t.ad_version},
                 {"iv", base64_encode(t.wrapped.iv)},
                 {"ciphertext", base64_encode(t.wrapped.ciphertext)},
                 {"tag", base64_encode(t.wrapped.tag)}};
    json disk = {{"id", t.disk_id}, {"type", t.disk_type}, {"lineage", t.lineage_id}};
    if (t.service_account) {
        disk["service_account"] = *t.service_account;
    }
    if (t.kind != ResourceKind::disk) {
        disk["kind"] = kind_name(t.kind);
    }
    if (t.origin) {
        disk["origin"] = {
            {"kind", kind_name(t.origin->kind)}, {"id", t.origin->id}, {"luks_uuid", t.origin->luks_uuid}};
    }
    json j = {{"type", kTokenType},
              {"keyslots", json::array({std::to_string(t.keyslot)})},
              {"version", kTokenVersion},
              {"key", key},
              {"wrap", wrap},
              {"disk", disk},
              {"created", t.created}};
    if (t.incomplete) {
        j["incomplete"] = {
            {"operation", t.incomplete->operation}, {"done", t.incomplete->done}, {"total", t.incomplete->total}};
    }
    std::string text = j.dump();
    // Round-trip through the strict decoder: never write a token we would refuse.
    (void)decode_token(text);
    return text;
}

Token decode_token(std::string_view text)
{
    if (text.size() > kMaxTokenBytes) {
        fail("it is " + std::to_string(text.size()) + " bytes long; at most " + std::to_string(kMaxTokenBytes) +
             " are allowed");
    }
    const json j = parse_strict(text);
    Fields top(j, "");
    Token t;

    // The version first: a newer schema is refused before its fields are judged.
    const long long version = top.integer("version");
    if (version != kTokenVersion) {
        throw Error(Errc::header,
                    "diskcrypt-kms token: schema version " + std::to_string(version) +
                        " is not supported (this agent "
                        "reads version " +
                        std::to_string(kTokenVersion) + ")",
                    "upgrade diskcrypt on this host");
    }
    if (top.string("type") != kTokenType) {
        fail("field 'type' must be \"diskcrypt-kms\"");
    }
    const json& slots = top.required("keyslots");
    if (!slots.is_array() || slots.size() != 1 || !slots[0].is_string()) {
        fail("field 'keyslots' must be an array of exactly one keyslot number as a string");
    }
    const auto slot = slots[0].get<std::string>();
    if (slot.empty() || slot.size() > 2 || slot.find_first_not_of("0123456789") != std::string::npos ||
        (slot.size() > 1 && slot[0] == '0')) {
        fail("field 'keyslots' must name a keyslot number 0-31");
    }
    t.keyslot = std::stoi(slot);
    if (t.keyslot > 31) {
        fail("field 'keyslots' must name a keyslot number 0-31");
    }

    {
        Fields key(top.required("key"), "key");
        t.key.provider = key.checked("provider", [](std::string_view v) { validate_provider_name(v); });
        t.provider_type = key.checked("provider_type", validate_type_name);
        t.key.key_id = key.checked("id", [](std::string_view v) { validate_key_id(v); });
        t.key.version = key.checked("version", [](std::string_view v) { validate_key_version(v); });
        key.finish();
    }
    {
        Fields wrap(top.required("wrap"), "wrap");
        t.wrapped.algorithm = wrap.string("alg");
        if (t.wrapped.algorithm != "AES-256-GCM") {
            fail("field 'wrap.alg' must be \"AES-256-GCM\"");
        }
        const long long adv = wrap.integer("ad_version");
        if (adv != 1 && adv != 2) {
            fail("field 'wrap.ad_version' " + std::to_string(adv) + " is not supported (only 1 and 2)");
        }
        t.ad_version = static_cast<unsigned>(adv);
        t.wrapped.iv = wrap.base64("iv", kIvBytes);
        t.wrapped.ciphertext = wrap.base64("ciphertext", kSecretBytes);
        t.wrapped.tag = wrap.base64("tag", kTagBytes);
        wrap.finish();
    }
    {
        Fields disk(top.required("disk"), "disk");
        t.disk_id = disk.checked("id", validate_disk_id_field);
        t.disk_type = disk.checked("type", validate_type_name);
        t.lineage_id = disk.checked("lineage", validate_disk_id_field);
        if (disk.has("service_account")) {
            t.service_account =
                disk.checked("service_account", [](std::string_view v) { validate_service_account(v); });
        }
        if (disk.has("kind")) {
            t.kind = disk.kind("kind");
            if (t.kind == ResourceKind::disk) {
                fail("field 'disk.kind' is written only for a snapshot or an image");
            }
        }
        if (disk.has("origin")) {
            Fields origin(disk.required("origin"), "disk.origin");
            Origin o;
            o.kind = origin.kind("kind");
            o.id = origin.checked("id", validate_disk_id_field);
            o.luks_uuid = origin.checked("luks_uuid", [](std::string_view v) {
                if (!is_luks_uuid(v)) {
                    throw Error(Errc::usage, "not a LUKS2 UUID (8-4-4-4-12 hex digits)");
                }
            });
            origin.finish();
            t.origin = o;
        }
        disk.finish();
    }
    if (top.has("incomplete")) {
        Fields inc(top.required("incomplete"), "incomplete");
        Incomplete i;
        i.operation = inc.string("operation");
        if (i.operation != "copy" && i.operation != "import") {
            fail(R"(field 'incomplete.operation' must be "copy" or "import")");
        }
        i.done = inc.size("done");
        i.total = inc.size("total");
        if (i.done > i.total) {
            fail("field 'incomplete.done' is larger than 'incomplete.total'");
        }
        inc.finish();
        t.incomplete = i;
    }
    t.created = top.checked("created", validate_timestamp);
    top.finish();
    return t;
}

std::string ascii_json(std::string_view text)
{
    static constexpr std::string_view kHex = "0123456789abcdef";
    std::string out;
    out.reserve(text.size());
    for (const char ch : text) {
        const auto c = static_cast<unsigned char>(ch);
        if (c < 0x80) {
            out.push_back(ch);
            continue;
        }
        out.append("\\u00");
        out.push_back(kHex[c >> 4U]);
        out.push_back(kHex[c & 0xFU]);
    }
    return out;
}

std::string raw_bytes(std::string_view utf8)
{
    std::string out;
    out.reserve(utf8.size());
    for (std::size_t i = 0; i < utf8.size(); ++i) {
        const auto c = static_cast<unsigned char>(utf8[i]);
        const bool two_byte = (c == 0xC2 || c == 0xC3) && i + 1 < utf8.size() &&
                              (static_cast<unsigned char>(utf8[i + 1]) & 0xC0U) == 0x80U;
        if (two_byte) {
            const auto next = static_cast<unsigned char>(utf8[i + 1]);
            out.push_back(static_cast<char>(((c & 0x1FU) << 6U) | (next & 0x3FU)));
            ++i;
        } else {
            out.push_back(utf8[i]);  // ASCII, or a code point above 0xff: its UTF-8 bytes
        }
    }
    return out;
}

std::string utc_timestamp()
{
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    std::array<char, 32> buf{};
    const std::size_t n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return {buf.data(), n};
}

}  // namespace diskcrypt
