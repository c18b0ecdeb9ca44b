// The diskcrypt-kms token: encode/decode and every corrupt-token case.
#include <algorithm>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/disk/token.hpp"
#include "agent/error.hpp"

using diskcrypt::Errc;
using diskcrypt::Error;
using diskcrypt::Token;
using nlohmann::json;

namespace {

Token sample()
{
    Token t;
    t.keyslot = 0;
    t.key = {"hsm", "disk-key-01", "1"};
    t.provider_type = "pkcs11";
    t.wrapped.iv = std::vector<std::uint8_t>(12, 0x11);
    t.wrapped.ciphertext = std::vector<std::uint8_t>(32, 0x22);
    t.wrapped.tag = std::vector<std::uint8_t>(16, 0x33);
    t.disk_id = "disk-1";
    t.disk_type = "network-ssd";
    t.lineage_id = "disk-0";
    t.service_account = "sa-builder@example";
    t.created = "2026-11-22T10:00:00Z";
    return t;
}

json sample_json() { return json::parse(diskcrypt::encode_token(sample())); }

// Decoding `j` must fail with Error(header) whose message contains `needle`.
void refuses(const std::string& text, const std::string& needle)
{
    INFO("token: " << text);
    try {
        (void)diskcrypt::decode_token(text);
        FAIL("decoded a corrupt token");
    } catch (const Error& e) {
        CHECK(e.code() == Errc::header);
        CHECK_THAT(e.what(), Catch::Matchers::Contains(needle));
    }
}

void refuses(const json& j, const std::string& needle) { refuses(j.dump(), needle); }

bool printable_ascii(std::string_view s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

}  // namespace

TEST_CASE("token: encode and decode round trip", "[token]")
{
    const Token t = sample();
    const Token d = diskcrypt::decode_token(diskcrypt::encode_token(t));
    CHECK(d.keyslot == 0);
    CHECK(d.key.provider == "hsm");
    CHECK(d.key.key_id == "disk-key-01");
    CHECK(d.key.version == "1");
    CHECK(d.provider_type == "pkcs11");
    CHECK(d.ad_version == 1);
    CHECK(d.wrapped.algorithm == "AES-256-GCM");
    CHECK(d.wrapped.iv == t.wrapped.iv);
    CHECK(d.wrapped.ciphertext == t.wrapped.ciphertext);
    CHECK(d.wrapped.tag == t.wrapped.tag);
    CHECK(d.disk_id == "disk-1");
    CHECK(d.disk_type == "network-ssd");
    CHECK(d.lineage_id == "disk-0");
    REQUIRE(d.service_account.has_value());
    CHECK(*d.service_account == "sa-builder@example");
    CHECK(d.created == "2026-11-22T10:00:00Z");
}

TEST_CASE("token: the documented layout is what is written", "[token]")
{
    const json j = sample_json();
    CHECK(j.at("type") == "diskcrypt-kms");
    CHECK(j.at("keyslots") == json::array({"0"}));
    CHECK(j.at("version") == 1);
    CHECK(j.at("key") ==
          json({{"provider", "hsm"}, {"provider_type", "pkcs11"}, {"id", "disk-key-01"}, {"version", "1"}}));
    CHECK(j.at("wrap").at("alg") == "AES-256-GCM");
    CHECK(j.at("wrap").at("ad_version") == 1);
    CHECK(j.at("wrap").at("iv") == "ERERERERERERERER");
    CHECK(j.at("wrap").at("tag") == "MzMzMzMzMzMzMzMzMzMzMw==");
    CHECK(j.at("disk").at("lineage") == "disk-0");
    CHECK(diskcrypt::encode_token(sample()).size() < 1024);
}

TEST_CASE("token: the service account is optional", "[token]")
{
    Token t = sample();
    t.service_account.reset();
    const std::string text = diskcrypt::encode_token(t);
    CHECK_FALSE(json::parse(text).at("disk").contains("service_account"));
    CHECK_FALSE(diskcrypt::decode_token(text).service_account.has_value());
}

TEST_CASE("token: missing fields are refused, each by name", "[token]")
{
    const std::vector<std::vector<std::string>> required = {
        {"type"},
        {"keyslots"},
        {"version"},
        {"key"},
        {"key", "provider"},
        {"key", "provider_type"},
        {"key", "id"},
        {"key", "version"},
        {"wrap"},
        {"wrap", "alg"},
        {"wrap", "ad_version"},
        {"wrap", "iv"},
        {"wrap", "ciphertext"},
        {"wrap", "tag"},
        {"disk"},
        {"disk", "id"},
        {"disk", "type"},
        {"disk", "lineage"},
        {"created"},
    };
    for (const auto& path : required) {
        json j = sample_json();
        std::string name = path[0];
        if (path.size() == 1) {
            j.erase(path[0]);
        } else {
            j[path[0]].erase(path[1]);
            name += "." + path[1];
        }
        SECTION("missing " + name) { refuses(j, "missing field '" + name + "'"); }
    }
}

TEST_CASE("token: wrong types are refused", "[token]")
{
    json j = sample_json();
    SECTION("version as a string")
    {
        j["version"] = "1";
        refuses(j, "field 'version' must be an integer, not a string");
    }
    SECTION("key.id as a number")
    {
        j["key"]["id"] = 7;
        refuses(j, "field 'key.id' must be a string, not a number");
    }
    SECTION("wrap.iv as null")
    {
        j["wrap"]["iv"] = nullptr;
        refuses(j, "field 'wrap.iv' must be a string, not null");
    }
    SECTION("disk as an array")
    {
        j["disk"] = json::array();
        refuses(j, "field 'disk' must be an object, not an array");
    }
    SECTION("key as a string")
    {
        j["key"] = "hsm:disk-key-01";
        refuses(j, "field 'key' must be an object, not a string");
    }
    SECTION("wrap.ad_version as a float")
    {
        j["wrap"]["ad_version"] = 1.5;
        refuses(j, "field 'wrap.ad_version' must be an integer, not a number");
    }
    SECTION("keyslots as a number")
    {
        j["keyslots"] = 0;
        refuses(j, "field 'keyslots' must be an array of exactly one keyslot");
    }
    SECTION("keyslots with a number inside")
    {
        j["keyslots"] = json::array({0});
        refuses(j, "field 'keyslots' must be an array of exactly one keyslot");
    }
    SECTION("the whole token is an array")
    {
        refuses(json::array({1, 2}), "the token must be an object, not an array");
    }
}

TEST_CASE("token: bad base64 is refused", "[token]")
{
    json j = sample_json();
    SECTION("characters outside the alphabet")
    {
        j["wrap"]["iv"] = "EREREREREREREREr!";
        refuses(j, "field 'wrap.iv' is not canonical base64");
    }
    SECTION("URL-safe alphabet")
    {
        j["wrap"]["tag"] = "MzMzMzMzMzMzMzMzMzMzM-==";
        refuses(j, "field 'wrap.tag' is not canonical base64");
    }
    SECTION("missing padding")
    {
        j["wrap"]["tag"] = "MzMzMzMzMzMzMzMzMzMzMw";
        refuses(j, "field 'wrap.tag' is not canonical base64");
    }
    SECTION("embedded whitespace")
    {
        j["wrap"]["iv"] = "ERERERER\nERERERER";
        refuses(j, "field 'wrap.iv' is not canonical base64");
    }
    SECTION("non-canonical trailing bits")
    {
        j["wrap"]["tag"] = "MzMzMzMzMzMzMzMzMzMzMx==";
        refuses(j, "field 'wrap.tag' is not canonical base64");
    }
    SECTION("wrong decoded length: 11-byte IV")
    {
        j["wrap"]["iv"] = "ERERERERERERERE=";
        refuses(j, "field 'wrap.iv' must decode to 12 bytes, not 11");
    }
    SECTION("wrong decoded length: 31-byte ciphertext")
    {
        j["wrap"]["ciphertext"] = "IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIg==";
        refuses(j, "field 'wrap.ciphertext' must decode to 32 bytes, not");
    }
    SECTION("empty")
    {
        j["wrap"]["tag"] = "";
        refuses(j, "field 'wrap.tag' must decode to 16 bytes, not 0");
    }
}

TEST_CASE("token: unknown versions are refused", "[token]")
{
    json j = sample_json();
    SECTION("schema version 2")
    {
        j["version"] = 2;
        refuses(j, "schema version 2 is not supported");
    }
    SECTION("schema version 0")
    {
        j["version"] = 0;
        refuses(j, "schema version 0 is not supported");
    }
    SECTION("AD version 3")
    {
        j["wrap"]["ad_version"] = 3;
        refuses(j, "field 'wrap.ad_version' 3 is not supported (only 1 and 2)");
    }
    SECTION("AD version 0")
    {
        j["wrap"]["ad_version"] = 0;
        refuses(j, "field 'wrap.ad_version' 0 is not supported");
    }
    SECTION("another algorithm")
    {
        j["wrap"]["alg"] = "AES-256-KWP";
        refuses(j, "field 'wrap.alg' must be \"AES-256-GCM\"");
    }
    SECTION("another token type")
    {
        j["type"] = "systemd-pkcs11";
        refuses(j, "field 'type' must be \"diskcrypt-kms\"");
    }
}

TEST_CASE("token: AD versions 1 and 2 both decode", "[token]")
{
    diskcrypt::Token t = sample();
    for (const unsigned v : {1U, 2U}) {
        t.ad_version = v;
        CHECK(diskcrypt::decode_token(diskcrypt::encode_token(t)).ad_version == v);
    }
}

TEST_CASE("token: bytes that are not UTF-8 are refused by field name, escaped", "[token]")
{
    // A header's token may hold any bytes: the error names the field and
    // shows them escaped, so the message is printable and valid UTF-8.
    std::string text = sample_json().dump();
    const std::string created = R"("created":"2026-11-22T10:00:00Z")";
    const auto at = text.find(created);
    REQUIRE(at != std::string::npos);
    text.replace(at, created.size(), "\"created\":\"\xff\\u001b[31m\"");
    refuses(text, "field 'created': expected a UTC time as YYYY-MM-DDTHH:MM:SSZ (the header has '\\xff\\x1b[31m')");
    try {
        (void)diskcrypt::decode_token(text);
    } catch (const Error& e) {
        CHECK(printable_ascii(e.what()));
    }
    // An unknown field whose name is not UTF-8, and bytes outside strings.
    std::string unknown = sample_json().dump();
    unknown.insert(1, "\"\xfe\":1,");
    refuses(unknown, "unknown field '\\xfe'");
    std::string bare = sample_json().dump();
    bare.insert(bare.begin() + 1, '\xff');
    refuses(bare, "not valid JSON");
    try {
        (void)diskcrypt::decode_token(bare);
    } catch (const Error& e) {
        CHECK(printable_ascii(e.what()));
    }
}

TEST_CASE("token: oversize, unknown and duplicate fields are refused", "[token]")
{
    json j = sample_json();
    SECTION("more than 4096 bytes")
    {
        j["padding"] = std::string(5000, 'x');
        refuses(j, "at most 4096 are allowed");
    }
    SECTION("unknown top-level field")
    {
        j["comment"] = "hi";
        refuses(j, "unknown field 'comment'");
    }
    SECTION("unknown nested field")
    {
        j["wrap"]["aad"] = "AAAA";
        refuses(j, "unknown field 'wrap.aad'");
    }
    SECTION("duplicate field")
    {
        std::string text = j.dump();
        text.insert(1, "\"version\":1,");
        refuses(text, "duplicate field 'version'");
    }
    SECTION("not JSON") { refuses(std::string(R"({"type": "diskcrypt-kms")"), "not valid JSON"); }
}

TEST_CASE("token: invalid values are refused", "[token]")
{
    json j = sample_json();
    SECTION("two keyslots")
    {
        j["keyslots"] = json::array({"0", "1"});
        refuses(j, "exactly one keyslot");
    }
    SECTION("keyslot 32")
    {
        j["keyslots"] = json::array({"32"});
        refuses(j, "keyslot number 0-31");
    }
    SECTION("keyslot with a sign")
    {
        j["keyslots"] = json::array({"-1"});
        refuses(j, "keyslot number 0-31");
    }
    SECTION("disk id with a slash")
    {
        j["disk"]["id"] = "../etc";
        refuses(j, "field 'disk.id': invalid disk id");
    }
    SECTION("disk id too long")
    {
        j["disk"]["id"] = std::string(101, 'a');
        refuses(j, "field 'disk.id': invalid disk id");
    }
    SECTION("provider name with upper case")
    {
        j["key"]["provider"] = "HSM";
        refuses(j, "field 'key.provider': invalid provider name");
    }
    SECTION("empty key version")
    {
        j["key"]["version"] = "";
        refuses(j, "field 'key.version': invalid key version");
    }
    SECTION("service account with a space")
    {
        j["disk"]["service_account"] = "a b";
        refuses(j, "field 'disk.service_account': invalid service account");
    }
    SECTION("timestamp not in UTC form")
    {
        j["created"] = "2026-11-22 10:00:00";
        refuses(j, "field 'created'");
    }
}

TEST_CASE("token: kind, origin and the incomplete mark round trip", "[token]")
{
    Token t = sample();
    t.kind = diskcrypt::ResourceKind::snapshot;
    t.origin = diskcrypt::Origin{diskcrypt::ResourceKind::disk, "disk-0", "0b6c1f1e-3c1e-4f53-9c6b-2a1e5a4e9d10"};
    t.incomplete = diskcrypt::Incomplete{"copy", 4194304, 8388608};
    const std::string text = diskcrypt::encode_token(t);
    const json j = json::parse(text);
    CHECK(j.at("disk").at("kind") == "snapshot");
    CHECK(j.at("disk").at("origin") ==
          json{{"kind", "disk"}, {"id", "disk-0"}, {"luks_uuid", "0b6c1f1e-3c1e-4f53-9c6b-2a1e5a4e9d10"}});
    CHECK(j.at("incomplete") == json{{"operation", "copy"}, {"done", 4194304}, {"total", 8388608}});
    const Token back = diskcrypt::decode_token(text);
    CHECK(back.kind == diskcrypt::ResourceKind::snapshot);
    REQUIRE(back.origin);
    CHECK(back.origin->kind == diskcrypt::ResourceKind::disk);
    CHECK(back.origin->id == "disk-0");
    REQUIRE(back.incomplete);
    CHECK(back.incomplete->done == 4194304);
    CHECK(back.incomplete->total == 8388608);

    // A disk (the default kind) writes no kind and no mark: format's token
    // is unchanged.
    const json plain = sample_json();
    CHECK_FALSE(plain.at("disk").contains("kind"));
    CHECK_FALSE(plain.at("disk").contains("origin"));
    CHECK_FALSE(plain.contains("incomplete"));
}

TEST_CASE("token: a bad kind, origin or incomplete mark is refused", "[token]")
{
    Token t = sample();
    t.origin = diskcrypt::Origin{diskcrypt::ResourceKind::disk, "disk-0", "0b6c1f1e-3c1e-4f53-9c6b-2a1e5a4e9d10"};
    t.incomplete = diskcrypt::Incomplete{"import", 0, 1048576};
    const json good = json::parse(diskcrypt::encode_token(t));
    SECTION("an unknown kind")
    {
        json j = good;
        j["disk"]["kind"] = "volume";
        refuses(j, R"(field 'disk.kind' must be "disk", "snapshot" or "image")");
    }
    SECTION("kind disk written out")
    {
        json j = good;
        j["disk"]["kind"] = "disk";
        refuses(j, "written only for a snapshot or an image");
    }
    SECTION("an origin without its UUID")
    {
        json j = good;
        j["disk"]["origin"].erase("luks_uuid");
        refuses(j, "missing field 'disk.origin.luks_uuid'");
    }
    SECTION("an origin with a bad UUID")
    {
        json j = good;
        j["disk"]["origin"]["luks_uuid"] = "not-a-uuid";
        refuses(j, "field 'disk.origin.luks_uuid'");
    }
    SECTION("an origin with an unknown field")
    {
        json j = good;
        j["disk"]["origin"]["parent"] = "x";
        refuses(j, "unknown field 'disk.origin.parent'");
    }
    SECTION("an unknown operation")
    {
        json j = good;
        j["incomplete"]["operation"] = "decrypt";
        refuses(j, R"(field 'incomplete.operation' must be "copy" or "import")");
    }
    SECTION("done beyond total")
    {
        json j = good;
        j["incomplete"]["done"] = 2097152;
        refuses(j, "'incomplete.done' is larger than 'incomplete.total'");
    }
    SECTION("a negative count")
    {
        json j = good;
        j["incomplete"]["done"] = -1;
        refuses(j, "field 'incomplete.done' must be a non-negative integer");
    }
    SECTION("a count as a string")
    {
        json j = good;
        j["incomplete"]["total"] = "1048576";
        refuses(j, "field 'incomplete.total' must be a non-negative integer");
    }
    SECTION("an absurd count")
    {
        json j = good;
        j["incomplete"]["total"] = 1ULL << 63U;
        refuses(j, "field 'incomplete.total' is too large");
    }
}
