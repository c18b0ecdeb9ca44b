#include "agent/disk/header.hpp"

#include <libcryptsetup.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "agent/error.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

using nlohmann::json;

constexpr std::size_t kMaxShown = 200;

// A header value for a message: the header's bytes, escaped.
std::string shown(std::string_view value) { return printable(raw_bytes(value), kMaxShown); }

std::string shown_value(const json& v)
{
    if (v.is_string()) {
        return "'" + shown(std::string_view(v.get_ref<const std::string&>())) + "'";
    }
    // Non-strings: dumped from the ASCII-only parse (no invalid UTF-8), escaped again.
    return printable(v.dump(-1, ' ', true, json::error_handler_t::replace), kMaxShown);
}

// Checks one JSON object of the metadata against what format writes; every
// refusal names the field by its path ("keyslots.0.kdf.iterations").
class Layout {
public:
    explicit Layout(std::string device) : device_(std::move(device)) {}

    [[noreturn]] void fail(const std::string& path, const std::string& what) const
    {
        throw Error(Errc::header,
                    "device " + device_ + ": LUKS2 header field '" + path + "' " + what +
                        "; diskcrypt opens only the header its format writes",
                    "the header was edited or was not written by diskcrypt; restore a header backup");
    }

    [[nodiscard]] const json& object(const json& parent, const std::string& key, const std::string& path) const
    {
        const auto it = parent.find(key);
        if (it == parent.end()) {
            fail(path, "is missing");
        }
        if (!it->is_object()) {
            fail(path, "is " + shown_value(*it) + ", not an object");
        }
        return *it;
    }

    // Exactly these keys (optional ones may be absent).
    void keys(const json& obj, const std::string& path, std::initializer_list<std::string_view> required,
              std::initializer_list<std::string_view> optional = {}) const
    {
        for (const auto& [key, value] : obj.items()) {
            bool known = false;
            for (const auto k : required) {
                known = known || key == k;
            }
            for (const auto k : optional) {
                known = known || key == k;
            }
            if (!known) {
                fail(join(path, key), "is not written by diskcrypt");
            }
        }
        for (const auto k : required) {
            if (!obj.contains(k)) {
                fail(join(path, k), "is missing");
            }
        }
    }

    [[nodiscard]] const json& field(const json& obj, const std::string& path, const std::string& key) const
    {
        const auto it = obj.find(key);
        if (it == obj.end()) {
            fail(join(path, key), "is missing");
        }
        return *it;
    }

    void string_is(const json& obj, const std::string& path, const std::string& key, std::string_view want) const
    {
        const json& v = field(obj, path, key);
        if (!v.is_string() || v.get<std::string>() != want) {
            fail(join(path, key), "is " + shown_value(v) + ", not '" + std::string(want) + "'");
        }
    }

    void number_is(const json& obj, const std::string& path, const std::string& key, std::uint64_t want) const
    {
        const json& v = field(obj, path, key);
        if (!v.is_number_unsigned() || v.get<std::uint64_t>() != want) {
            fail(join(path, key), "is " + shown_value(v) + ", not " + std::to_string(want));
        }
    }

    // LUKS2 writes 64-bit sizes and offsets as decimal strings.
    void size_is(const json& obj, const std::string& path, const std::string& key, std::uint64_t want) const
    {
        string_is(obj, path, key, std::to_string(want));
    }

    // A one-entry object ("0": {...}); returns its key.
    [[nodiscard]] std::string single(const json& obj, const std::string& path, std::string_view what) const
    {
        if (obj.size() != 1) {
            fail(path,
                 "holds " + std::to_string(obj.size()) + " " + std::string(what) + "; diskcrypt writes exactly one");
        }
        return obj.begin().key();
    }

    static std::string join(const std::string& path, std::string_view key)
    {
        std::string out = path;
        out += '.';
        out += shown(key);
        return out;
    }

private:
    std::string device_;
};

int check_keyslot(const Layout& l, const json& keyslots)
{
    const std::string id = l.single(keyslots, "keyslots", "keyslots");
    const std::string p = Layout::join("keyslots", id);
    if (id.empty() || id.size() > 2 || id.find_first_not_of("0123456789") != std::string::npos) {
        l.fail(p, "is not a keyslot number");
    }
    const json& ks = keyslots.at(id);
    if (!ks.is_object()) {
        l.fail(p, "is not an object");
    }
    l.keys(ks, p, {"type", "key_size", "af", "area", "kdf"});
    l.string_is(ks, p, "type", "luks2");
    l.number_is(ks, p, "key_size", kVolumeKeyBytes);

    const json& af = l.object(ks, "af", p + ".af");
    l.keys(af, p + ".af", {"type", "stripes", "hash"});
    l.string_is(af, p + ".af", "type", "luks1");
    l.number_is(af, p + ".af", "stripes", kAfStripes);
    l.string_is(af, p + ".af", "hash", "sha256");

    const json& area = l.object(ks, "area", p + ".area");
    l.keys(area, p + ".area", {"type", "offset", "size", "encryption", "key_size"});
    l.string_is(area, p + ".area", "type", "raw");
    l.size_is(area, p + ".area", "offset", 2 * kMetadataBytes);
    l.size_is(area, p + ".area", "size", kKeyslotAreaBytes);
    l.string_is(area, p + ".area", "encryption", kLuksCipher);
    l.number_is(area, p + ".area", "key_size", kVolumeKeyBytes);

    // The price of opening the keyslot: PBKDF2-SHA256 at format's count, nothing else.
    const json& kdf = l.object(ks, "kdf", p + ".kdf");
    l.string_is(kdf, p + ".kdf", "type", "pbkdf2");
    l.keys(kdf, p + ".kdf", {"type", "hash", "iterations", "salt"});
    l.string_is(kdf, p + ".kdf", "hash", "sha256");
    l.number_is(kdf, p + ".kdf", "iterations", kPbkdfIterations);
    if (!kdf.at("salt").is_string()) {
        l.fail(p + ".kdf.salt", "is not a string");
    }
    return std::stoi(id);
}

void check_segment(const Layout& l, const json& segments)
{
    const std::string id = l.single(segments, "segments", "segments");
    const std::string p = Layout::join("segments", id);
    if (id != "0") {
        l.fail(p, "is not segment 0");
    }
    const json& seg = segments.at(id);
    if (!seg.is_object()) {
        l.fail(p, "is not an object");
    }
    l.keys(seg, p, {"type", "offset", "size", "iv_tweak", "encryption", "sector_size"});
    l.string_is(seg, p, "type", "crypt");
    l.size_is(seg, p, "offset", kHeaderBytes);
    l.string_is(seg, p, "size", "dynamic");
    l.string_is(seg, p, "iv_tweak", "0");
    l.string_is(seg, p, "encryption", kLuksCipher);
    const json& ss = seg.at("sector_size");
    const bool ok = ss.is_number_unsigned() && (ss.get<std::uint64_t>() == 512 || ss.get<std::uint64_t>() == 1024 ||
                                                ss.get<std::uint64_t>() == 2048 || ss.get<std::uint64_t>() == 4096);
    if (!ok) {
        l.fail(p + ".sector_size", "is " + shown_value(ss) + ", not 512, 1024, 2048 or 4096");
    }
}

void check_digest(const Layout& l, const json& digests, int keyslot)
{
    const std::string id = l.single(digests, "digests", "digests");
    const std::string p = Layout::join("digests", id);
    const json& d = digests.at(id);
    if (!d.is_object()) {
        l.fail(p, "is not an object");
    }
    l.string_is(d, p, "type", "pbkdf2");
    l.keys(d, p, {"type", "keyslots", "segments", "hash", "iterations", "salt", "digest"});
    if (d.at("keyslots") != json::array({std::to_string(keyslot)})) {
        l.fail(p + ".keyslots", "is " + shown_value(d.at("keyslots")) + ", not [\"" + std::to_string(keyslot) + "\"]");
    }
    if (d.at("segments") != json::array({"0"})) {
        l.fail(p + ".segments", "is " + shown_value(d.at("segments")) + ", not [\"0\"]");
    }
    l.string_is(d, p, "hash", "sha256");
    l.number_is(d, p, "iterations", kDigestIterations);
    for (const char* key : {"salt", "digest"}) {
        if (!d.at(key).is_string()) {
            l.fail(p + "." + key, "is not a string");
        }
    }
}

void check_config(const Layout& l, const json& config)
{
    // "flags" (persistent activation flags) are allowed and ignored; a
    // "requirements" entry (reencryption, unknown features) is refused.
    l.keys(config, "config", {"json_size", "keyslots_size"}, {"flags"});
    l.size_is(config, "config", "json_size", kMetadataBytes - 4096);
    l.size_is(config, "config", "keyslots_size", kKeyslotsBytes);
}

// The diskcrypt-kms tokens' ids, from the metadata (crypt_token_status is
// never called: it may load a token plugin for a type the header names).
std::vector<int> diskcrypt_tokens(const json& tokens)
{
    std::vector<int> ids;
    for (const auto& [key, value] : tokens.items()) {
        if (!value.is_object() || !value.contains("type") || value.at("type") != json(kTokenType)) {
            continue;
        }
        if (key.empty() || key.size() > 2 || key.find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        ids.push_back(std::stoi(key));
    }
    return ids;
}

json parse_metadata(std::string_view json_text, const std::string& device)
{
    try {
        return json::parse(ascii_json(json_text));
    } catch (const json::exception& e) {
        throw Error(Errc::header, "device " + device + ": the LUKS2 metadata is not valid JSON: " + printable(e.what()),
                    "restore a header backup");
    }
}

int check_parsed_layout(const json& j, const std::string& device)
{
    const Layout l(device);
    if (!j.is_object()) {
        l.fail("(top level)", "is not an object");
    }
    l.keys(j, "(top level)", {"keyslots", "tokens", "segments", "digests", "config"});
    const int keyslot = check_keyslot(l, l.object(j, "keyslots", "keyslots"));
    check_segment(l, l.object(j, "segments", "segments"));
    check_digest(l, l.object(j, "digests", "digests"), keyslot);
    check_config(l, l.object(j, "config", "config"));
    (void)l.object(j, "tokens", "tokens");
    return keyslot;
}

}  // namespace

bool is_luks_uuid(std::string_view uuid)
{
    if (uuid.size() != 36) {
        return false;
    }
    for (std::size_t i = 0; i < uuid.size(); ++i) {
        const char c = uuid[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') {
                return false;
            }
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return false;
        }
    }
    return true;
}

void validate_luks_uuid(std::string_view uuid, std::string_view where)
{
    if (!is_luks_uuid(uuid)) {
        throw Error(Errc::header,
                    std::string(where) + ": the LUKS2 UUID '" + printable(uuid, kMaxShown) +
                        "' is not in the canonical form (36 characters, 8-4-4-4-12 hex digits)",
                    "the header was edited; restore a header backup, or set a UUID with cryptsetup luksUUID --uuid");
    }
}

CryptDevice open_luks2(const std::string& path) { return open_luks2(path, path); }

CryptDevice open_luks2(const std::string& path, const std::string& shown_name)
{
    const std::string name = printable(shown_name);
    crypt_device* raw = nullptr;
    int r = crypt_init_shared(&raw, path.c_str());
    CryptDevice cd(raw);
    if (r < 0) {
        throw Error(Errc::device, errno_text("cannot open device " + name, -r));
    }
    r = crypt_load(cd.get(), CRYPT_LUKS2, nullptr);
    if (r < 0) {
        if (crypt_load(cd.get(), CRYPT_LUKS1, nullptr) == 0) {
            throw Error(Errc::header, "device " + name + " holds a LUKS1 header, not a diskcrypt LUKS2 header");
        }
        throw Error(Errc::header,
                    "device " + name + " holds no valid LUKS2 header" +
                        (r == -EINVAL ? std::string() : " (" + std::string(std::strerror(-r)) + ")"),
                    "check the device path; a damaged header can be restored from a header backup");
    }
    return cd;
}

int check_layout(std::string_view json_text, const std::string& device)
{
    return check_parsed_layout(parse_metadata(json_text, device), device);
}

DiskHeader read_header(crypt_device* cd, const std::string& device)
{
    DiskHeader h;
    h.device = printable(device);
    const std::string& dev = h.device;
    const char* uuid = crypt_get_uuid(cd);
    validate_luks_uuid(uuid != nullptr ? uuid : "", "device " + dev);
    h.luks_uuid = uuid;
    const char* subsystem = crypt_get_subsystem(cd);
    if (subsystem == nullptr || kSubsystem != subsystem) {
        throw Error(Errc::header,
                    "device " + dev + " holds a LUKS2 volume (UUID " + h.luks_uuid +
                        ") that is not a diskcrypt disk (subsystem '" +
                        printable(subsystem != nullptr ? subsystem : "", kMaxShown) + "')",
                    "diskcrypt opens only volumes it formatted");
    }
    std::uint32_t requirements = 0;
    if (crypt_persistent_flags_get(cd, CRYPT_FLAGS_REQUIREMENTS, &requirements) != 0 || requirements != 0) {
        throw Error(Errc::header,
                    "device " + dev + ": the LUKS2 header has requirements flags (" + std::to_string(requirements) +
                        ", e.g. an unfinished reencryption); diskcrypt opens only the header its format writes",
                    "restore a header backup");
    }
    const char* dump = nullptr;
    if (crypt_dump_json(cd, &dump, 0) < 0 || dump == nullptr) {
        throw Error(Errc::header, "device " + dev + ": cannot read the LUKS2 metadata");
    }
    const json metadata = parse_metadata(dump, dev);
    const int keyslot = check_parsed_layout(metadata, dev);

    const std::vector<int> tokens = diskcrypt_tokens(metadata.at("tokens"));
    if (tokens.empty()) {
        throw Error(Errc::header,
                    "device " + dev + " (LUKS2 UUID " + h.luks_uuid +
                        ") has no diskcrypt-kms token: its format did not complete or the token was removed",
                    "if the disk holds no data, format it again with --force; otherwise restore a header backup");
    }
    if (tokens.size() > 1) {
        throw Error(Errc::header,
                    "device " + dev + " has " + std::to_string(tokens.size()) +
                        " diskcrypt-kms tokens; exactly one is expected",
                    "restore a header backup");
    }
    h.token_id = tokens.front();
    const char* token_json = nullptr;
    if (crypt_token_json_get(cd, h.token_id, &token_json) < 0 || token_json == nullptr) {
        throw Error(Errc::header, "device " + dev + ": cannot read token " + std::to_string(h.token_id));
    }
    try {
        h.token = decode_token(token_json);
    } catch (const Error& e) {
        throw Error(Errc::header, "device " + dev + ": token " + std::to_string(h.token_id) + ": " + e.what(),
                    e.hint());
    }
    if (h.token.keyslot != keyslot) {
        throw Error(Errc::header,
                    "device " + dev + ": the diskcrypt-kms token names keyslot " + std::to_string(h.token.keyslot) +
                        ", but the header's one keyslot is " + std::to_string(keyslot),
                    "restore a header backup");
    }
    const crypt_keyslot_info ks = crypt_keyslot_status(cd, h.token.keyslot);
    if (ks != CRYPT_SLOT_ACTIVE && ks != CRYPT_SLOT_ACTIVE_LAST) {
        throw Error(Errc::header,
                    "device " + dev + ": the diskcrypt-kms token names keyslot " + std::to_string(h.token.keyslot) +
                        ", which is not in use",
                    "restore a header backup");
    }
    // The segment as libcryptsetup reads it (the same values the layout
    // check accepted; the AD of version 2 binds them).
    h.data_offset = crypt_get_data_offset(cd) * 512U;
    h.sector_size = static_cast<unsigned>(crypt_get_sector_size(cd));
    const char* cipher = crypt_get_cipher(cd);
    const char* mode = crypt_get_cipher_mode(cd);
    std::string full = cipher != nullptr ? cipher : "";
    full += '-';
    full += mode != nullptr ? mode : "";
    h.cipher = printable(full, kMaxShown);
    h.volume_key_bytes = crypt_get_volume_key_size(cd);
    h.iv_offset = crypt_get_iv_offset(cd);
    std::uint32_t flags = 0;
    if (crypt_persistent_flags_get(cd, CRYPT_FLAGS_ACTIVATION, &flags) == 0) {
        h.allow_discards = (flags & CRYPT_ACTIVATE_ALLOW_DISCARDS) != 0;
    }
    return h;
}

void replace_token(const std::string& path, const std::string& shown, int token_id, const Token& token)
{
    const CryptDevice cd = open_luks2(path, shown);
    const int r = crypt_token_json_set(cd.get(), token_id, encode_token(token).c_str());
    if (r != token_id) {
        throw Error(Errc::device,
                    errno_text("device " + shown + ": replacing the diskcrypt-kms token", r < 0 ? -r : EIO),
                    "the old token is still in place (LUKS2 updates its metadata atomically); retry");
    }
}

}  // namespace diskcrypt
