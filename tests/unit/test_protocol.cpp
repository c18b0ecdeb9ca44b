// The agent protocol: envelopes, argument schemas, and each parse error.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "agent/error.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/text.hpp"

using diskcrypt::Errc;
using diskcrypt::Error;
using nlohmann::json;
namespace proto = diskcrypt::proto;

namespace {

void request_refused(const std::string& text, const std::string& message, Errc code = Errc::protocol)
{
    INFO("request: " << text.substr(0, 200));
    try {
        (void)proto::parse_request(text);
        FAIL("accepted");
    } catch (const Error& e) {
        CHECK(e.code() == code);
        CHECK(std::string(e.what()) == message);
    }
}

const json kFormatArgs = {
    {"device", "/dev/vdb"}, {"disk_id", "d1"}, {"type", "network-ssd"}, {"service_account", "s"}, {"user", "u"}};

}  // namespace

TEST_CASE("protocol: requests round trip", "[protocol]")
{
    const proto::FormatArgs a{.device = "/dev/vdb",
                              .disk_id = "d1",
                              .type = "network-ssd-io-m3",
                              .key = "hsm:k1",
                              .service_account = "sa1",
                              .user = "alice",
                              .lineage = std::nullopt,
                              .sector_size = 512,
                              .force = true};
    const proto::Request r = proto::parse_request(proto::encode_request("format", proto::to_json(a)));
    CHECK(r.op == "format");
    const proto::FormatArgs b = proto::format_args(r.args);
    CHECK(b.device == a.device);
    CHECK(b.disk_id == a.disk_id);
    CHECK(b.type == a.type);
    CHECK(b.key == a.key);
    CHECK(b.service_account == a.service_account);
    CHECK(b.user == "alice");
    CHECK_FALSE(b.lineage.has_value());
    CHECK(b.sector_size == a.sector_size);
    CHECK(b.force);

    const proto::Request s = proto::parse_request(R"({"protocol":1,"op":"status"})");
    CHECK(s.op == "status");
    CHECK(s.args.empty());

    const auto v = proto::verify_args(
        proto::parse_request(
            proto::encode_request("verify", proto::to_json(proto::VerifyArgs{"/d", "x", "network-hdd", "hsm:k", "sa"})))
            .args);
    CHECK(v.device == "/d");
    CHECK(v.disk_id == "x");
    CHECK(v.type == std::optional<std::string>("network-hdd"));
    CHECK(v.key == "hsm:k");
    CHECK(v.service_account == "sa");
}

TEST_CASE("protocol: each malformed request is refused with its message", "[protocol]")
{
    request_refused("not json",
                    "request is not valid JSON: [json.exception.parse_error.101] parse error at line 1, column 2: "
                    "syntax error while parsing value - invalid literal; last read: 'no'");
    request_refused("[1,2]", "request must be a JSON object");
    request_refused(R"({"op":"status"})", "request has no 'protocol' field");
    request_refused(R"({"protocol":"1","op":"status"})", "request: 'protocol' must be an integer");
    request_refused(R"({"protocol":2,"op":"status"})",
                    "protocol version 2 is not supported (this side speaks version 1)");
    request_refused(R"({"protocol":1})", "request has no 'op' field");
    request_refused(R"({"protocol":1,"op":7})", "request: 'op' must be a string");
    request_refused(R"({"protocol":1,"op":"mount"})",
                    "unknown op 'mount' (known: status, list, attach, detach, format, verify, copy, rewrap, import, "
                    "key, decrypt, recover, check-keys, audit, auto-attach, auto-detach)");
    request_refused(R"({"protocol":1,"op":"status","extra":1})", "request has an unknown field 'extra'");
    request_refused(R"({"protocol":1,"op":"status","op":"format"})", "request has the field 'op' twice");
    request_refused(R"({"protocol":1,"op":"format","args":[]})", "op format: 'args' must be an object");
    request_refused(R"({"protocol":1,"op":"format","args":{"device":"/d","type":"network-ssd"}})",
                    "op format: missing argument 'disk_id'");
    json a = kFormatArgs;
    a["force"] = "yes";
    request_refused(proto::encode_request("format", a), "op format: argument 'force' must be a boolean");
    a = kFormatArgs;
    a["sector_size"] = -512;
    request_refused(proto::encode_request("format", a),
                    "op format: argument 'sector_size' must be a non-negative integer");
    a = kFormatArgs;
    a["disk_id"] = 12;
    request_refused(proto::encode_request("format", a), "op format: argument 'disk_id' must be a string");
    a = kFormatArgs;
    a["cipher"] = "aes-cbc";
    request_refused(proto::encode_request("format", a), "op format: unknown argument 'cipher'");
    request_refused(R"({"protocol":1,"op":"status","args":{"verbose":true}})", "op status: unknown argument 'verbose'");
    a = kFormatArgs;
    a["disk_id"] = std::string(70000, 'x');
    request_refused(proto::encode_request("format", a), "request is larger than 65536 bytes");
}

TEST_CASE("protocol: responses", "[protocol]")
{
    const proto::Response ok = proto::parse_response(proto::encode_result({{"usable_size", 5}}));
    CHECK(ok.ok);
    CHECK(ok.result.at("usable_size") == 5);

    const proto::Response err = proto::parse_response(proto::encode_error(Error(Errc::kms_key, "no key", "create it")));
    CHECK_FALSE(err.ok);
    CHECK(err.code == Errc::kms_key);
    CHECK(err.message == "no key");
    CHECK(err.hint == "create it");
    CHECK(json::parse(proto::encode_error(Error(Errc::kms_key, "x"))).at("error").at("exit") == 10);

    // An unknown error code still fails (as internal), never as success.
    const proto::Response odd =
        proto::parse_response(R"({"protocol":1,"ok":false,"error":{"code":"new-thing","exit":42,"message":"m"}})");
    CHECK_FALSE(odd.ok);
    CHECK(odd.code == Errc::internal);

    CHECK_THROWS_WITH(proto::parse_response(R"({"protocol":1,"ok":"yes"})"), "response has no boolean 'ok' field");
    CHECK_THROWS_WITH(proto::parse_response(R"({"protocol":1,"ok":true})"), "response has no 'result' object");
    CHECK_THROWS_WITH(proto::parse_response(R"({"protocol":1,"ok":false,"error":{"code":"x"}})"),
                      "response error has no 'code' and 'message' strings");
    CHECK_THROWS_WITH(proto::parse_response(R"({"protocol":3,"ok":true,"result":{}})"),
                      "protocol version 3 is not supported (this side speaks version 1)");
}

TEST_CASE("protocol: bytes that are not UTF-8 are refused with a printable message", "[protocol][hostile-peer]")
{
    for (const std::string& text :
         {std::string("\xff"), std::string(R"({"protocol":1,"op":"st)") + "\xff\xfe" + R"("})",
          std::string(R"({"protocol":1,"op":"status","args":{")") + "\xc3\x28" + R"(":1}})"}) {
        INFO(diskcrypt::printable(text));
        try {
            (void)proto::parse_request(text);
            FAIL("accepted");
        } catch (const Error& e) {
            CHECK(e.code() == Errc::protocol);
            CHECK(diskcrypt::sanitize(e.what()) == e.what());  // printable ASCII
            // The error response can always be encoded (it could not: terminate).
            const proto::Response r = proto::parse_response(proto::encode_error(e));
            CHECK(r.code == Errc::protocol);
        }
    }
    request_refused(R"({"protocol":1,"op":"\u001b[31m"})",
                    "unknown op '\\x1b[31m' (known: status, list, attach, detach, format, verify, copy, rewrap, "
                    "import, key, decrypt, recover, check-keys, audit, auto-attach, auto-detach)");
    request_refused(R"({"protocol":1,"op":"status","args":{"\u00ff":1}})", "op status: unknown argument '\\xc3\\xbf'");
    request_refused(R"({"protocol":1,"op":"status","x\u0007":1})", "request has an unknown field 'x\\x07'");
    // An error whose message carries invalid UTF-8 is still encoded.
    const std::string encoded = proto::encode_error(Error(Errc::header, std::string("bad \xff")));
    CHECK(proto::parse_response(encoded).message == "bad \xef\xbf\xbd");
    CHECK_NOTHROW(proto::encode_result({{"x", std::string("\xff")}}));
}

TEST_CASE("protocol: list takes an optional 'after'", "[protocol][list]")
{
    const proto::Request r = proto::parse_request(R"({"protocol":1,"op":"list","args":{"after":"disk-9"}})");
    CHECK(proto::list_args(r.args).after == "disk-9");
    CHECK_FALSE(proto::list_args(proto::parse_request(R"({"protocol":1,"op":"list"})").args).after);
    request_refused(R"({"protocol":1,"op":"list","args":{"after":1}})", "op list: argument 'after' must be a string");
    CHECK(proto::to_json(proto::ListArgs{"d"}) == json{{"after", "d"}});
    CHECK(proto::to_json(proto::ListArgs{}) == json::object());
}

TEST_CASE("protocol: a number out of range is a protocol error on both sides", "[protocol][fuzz]")
{
    // Found by the fuzz targets: nlohmann throws out_of_range, not parse_error.
    request_refused(R"({"protocol":1e9999})",
                    "request is not valid JSON: [json.exception.out_of_range.406] number overflow parsing '1e9999'");
    CHECK_THROWS_AS(proto::parse_response(R"({"protocol":1e9999})"), Error);
}

TEST_CASE("protocol: copy, rewrap and decrypt requests round trip", "[protocol][copy]")
{
    proto::CopyArgs c;
    c.device = "/dev/vdb";
    c.disk_id = "disk-1";
    c.key = "hsm:k1";
    c.service_account = "sa1";
    c.user = "alice";
    c.target_device = "/dev/vdc";
    c.target_id = "snap-1";
    c.target_kind = "snapshot";
    c.target_service_account = "sa2";
    c.force = true;
    const proto::Request r = proto::parse_request(proto::encode_request("copy", proto::to_json(c)));
    CHECK(r.op == "copy");
    const proto::CopyArgs d = proto::copy_args(r.args);
    CHECK(d.device == c.device);
    CHECK(d.target_device == c.target_device);
    CHECK(d.target_id == "snap-1");
    CHECK(d.target_kind == "snapshot");
    CHECK_FALSE(d.target_type.has_value());
    CHECK(d.target_service_account == "sa2");
    CHECK(d.force);
    CHECK_THROWS_WITH(proto::parse_request(R"({"protocol":1,"op":"copy","args":{"device":"/dev/vdb"}})"),
                      "op copy: missing argument 'disk_id'");

    proto::RewrapArgs w;
    w.device = "/dev/vdb";
    w.disk_id = "disk-1";
    w.key = "hsm:k1";
    w.service_account = "sa1";
    w.user = "alice";
    w.to_key = "hsm:k2";
    const proto::RewrapArgs v =
        proto::rewrap_args(proto::parse_request(proto::encode_request("rewrap", proto::to_json(w))).args);
    CHECK(v.to_key == "hsm:k2");
    CHECK_FALSE(v.type.has_value());

    const proto::DecryptArgs x = proto::decrypt_args(
        proto::parse_request(proto::encode_request("decrypt", proto::to_json(proto::DecryptArgs{std::nullopt, "d1"})))
            .args);
    CHECK(x.disk_id == "d1");
    CHECK_FALSE(x.device.has_value());

    CHECK(
        proto::recover_args(
            proto::parse_request(proto::encode_request("recover", proto::to_json(proto::RecoverArgs{"/dev/vdb"}))).args)
            .device == "/dev/vdb");
    CHECK_THROWS_WITH(proto::parse_request(R"({"protocol":1,"op":"recover","args":{}})"), Catch::Contains("device"));
}

TEST_CASE("protocol: key and check-keys requests round trip", "[protocol][keys]")
{
    proto::KeyArgs k;
    k.action = "destroy";
    k.key = "hsm:k1";
    k.user = "alice";
    k.force = true;
    const proto::KeyArgs a =
        proto::key_args(proto::parse_request(proto::encode_request("key", proto::to_json(k))).args);
    CHECK(a.action == "destroy");
    CHECK(a.key == std::optional<std::string>("hsm:k1"));
    CHECK_FALSE(a.provider.has_value());
    CHECK(a.user == "alice");
    CHECK(a.force);
    proto::KeyArgs l;
    l.action = "list";
    l.provider = "hsm";
    l.user = "bob";
    const proto::KeyArgs b =
        proto::key_args(proto::parse_request(proto::encode_request("key", proto::to_json(l))).args);
    CHECK(b.provider == std::optional<std::string>("hsm"));
    CHECK_FALSE(b.key.has_value());
    CHECK_FALSE(b.force);
    CHECK_THROWS_WITH(proto::parse_request(R"({"protocol":1,"op":"key","args":{"action":"list"}})"),
                      "op key: missing argument 'user'");
    CHECK_THROWS_WITH(
        proto::parse_request(R"({"protocol":1,"op":"key","args":{"action":"list","user":"u","force":1}})"),
        Catch::Contains("force"));
    CHECK(proto::parse_request(R"({"protocol":1,"op":"check-keys"})").op == "check-keys");
    proto::AuditArgs q;
    q.disk_id = "d1";
    q.since = "-2h";
    q.after = "f:12:34";
    const proto::AuditArgs qa =
        proto::audit_args(proto::parse_request(proto::encode_request("audit", proto::to_json(q))).args);
    CHECK(qa.disk_id == std::optional<std::string>("d1"));
    CHECK_FALSE(qa.key.has_value());
    CHECK(qa.since == std::optional<std::string>("-2h"));
    CHECK(qa.after == std::optional<std::string>("f:12:34"));
    CHECK(proto::to_json(proto::AuditArgs{}).empty());
    CHECK_THROWS_WITH(proto::parse_request(R"({"protocol":1,"op":"check-keys","args":{"x":1}})"),
                      "op check-keys: unknown argument 'x'");
}

TEST_CASE("protocol: progress messages come apart from the response", "[protocol][copy]")
{
    const proto::Response p = proto::parse_response(proto::encode_progress({{"done", 1}, {"total", 2}}));
    REQUIRE(p.progress.has_value());
    CHECK(p.progress->at("done") == 1);
    CHECK_FALSE(p.ok);
    CHECK_THROWS_WITH(proto::parse_response(R"({"protocol":1,"progress":7})"),
                      "progress message: 'progress' must be an object");
    // A response that also says "ok" is a response, not progress.
    const proto::Response r = proto::parse_response(R"({"protocol":1,"ok":true,"result":{},"progress":{}})");
    CHECK(r.ok);
    CHECK_FALSE(r.progress.has_value());
}

TEST_CASE("protocol: recover's response carries the announced secret after a NUL byte, and nothing else",
          "[protocol][recover]")
{
    auto bytes = [](const std::string& text) { return std::vector<std::uint8_t>(text.begin(), text.end()); };
    const std::string ok = R"({"protocol":1,"ok":true,"result":{"disk_id":"d1","passphrase_bytes":4}})";
    std::span<const std::uint8_t> secret;
    std::vector<std::uint8_t> m = bytes(ok + std::string("\0a\0cd", 5));
    const proto::Response r = proto::parse_recover_response(m, secret);
    CHECK(r.ok);
    CHECK(std::string(secret.begin(), secret.end()) == std::string("a\0cd", 4));
    CHECK(secret.data() == m.data() + ok.size() + 1);

    const std::vector<std::pair<std::string, std::string>> bad = {
        {ok + std::string("\0abc", 4), "announces 4 passphrase_bytes and carries 3"},
        {ok, "announces 4 passphrase_bytes and carries 0"},
        {R"({"protocol":1,"ok":true,"result":{"disk_id":"d1"}})" + std::string("\0abcd", 5),
         "must announce 1 to 1024 passphrase_bytes"},
        {R"({"protocol":1,"ok":true,"result":{"passphrase_bytes":0}})" + std::string(1, '\0'),
         "must announce 1 to 1024 passphrase_bytes"},
        {R"({"protocol":1,"ok":true,"result":{"passphrase_bytes":"4"}})" + std::string("\0abcd", 5),
         "must announce 1 to 1024 passphrase_bytes"},
        {R"({"protocol":1,"ok":false,"error":{"code":"usage","exit":2,"message":"m"}})" + std::string("\0x", 2),
         "an error response carries no secret"},
        {std::string("\0abcd", 5), "not valid JSON"},
    };
    for (const auto& [text, message] : bad) {
        INFO(message);
        m = bytes(text);
        CHECK_THROWS_WITH(proto::parse_recover_response(m, secret), Catch::Contains(message));
        CHECK(secret.empty());
    }
    m = bytes(R"({"protocol":1,"ok":false,"error":{"code":"not-supported","exit":21,"message":"off"}})");
    const proto::Response refused = proto::parse_recover_response(m, secret);
    CHECK_FALSE(refused.ok);
    CHECK(refused.code == diskcrypt::Errc::not_supported);
    CHECK(secret.empty());
}
