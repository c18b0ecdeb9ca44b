// Request handling: authorisation by peer credentials, and protocol errors
// as error responses (no KMS is contacted by these requests).
#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>

#include "agent/config.hpp"
#include "agent/server.hpp"

using nlohmann::json;

namespace {

const std::string kConfig =
    "[agent]\nstatus_group = \"nogroup\"\ndefault_key = \"hsm:k1\"\n"
    "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/nonexistent/module.so\"\ntoken_label = \"t\"\n"
    "pin_file = \"/nonexistent/pin\"\n";

json call(const diskcrypt::AgentConfig& cfg, const diskcrypt::Peer& peer, const std::string& request)
{
    return json::parse(diskcrypt::handle_request(cfg, peer, request, std::chrono::steady_clock::now()));
}

}  // namespace

TEST_CASE("server: root may do everything, status group members only status", "[server]")
{
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(kConfig, "agent.toml");
    const diskcrypt::Peer root{1, 0, 0, {}};
    const diskcrypt::Peer member{2, 1000, 1000, {cfg.status_gid}};
    const diskcrypt::Peer primary{3, 1000, cfg.status_gid, {}};
    const diskcrypt::Peer stranger{4, 1000, 1000, {100}};
    const std::string status = R"({"protocol":1,"op":"status"})";
    const std::string format =
        R"({"protocol":1,"op":"format","args":{"device":"/nonexistent","disk_id":"d1","type":"network-ssd"}})";

    const json s = call(cfg, root, status);
    REQUIRE(s.at("ok") == true);
    CHECK(s.at("result").at("agent") == "diskcrypt-agent");
    CHECK(s.at("result").at("protocol") == 1);
    CHECK(s.at("result").at("default_key") == "hsm:k1");
    CHECK(s.at("result").at("providers") == json::array({{{"name", "hsm"}, {"type", "pkcs11"}}}));

    CHECK(call(cfg, member, status).at("ok") == true);
    CHECK(call(cfg, primary, status).at("ok") == true);

    const json denied = call(cfg, stranger, status);
    CHECK(denied.at("ok") == false);
    CHECK(denied.at("error").at("code") == "permission-denied");
    CHECK(denied.at("error").at("exit") == 4);
    CHECK(denied.at("error").at("message") == "op 'status' is not allowed for uid 1000 (pid 4)");

    const json no_format = call(cfg, member, format);
    CHECK(no_format.at("error").at("code") == "permission-denied");
    CHECK(no_format.at("error").at("message") == "op 'format' is not allowed for uid 1000 (pid 2)");
    CHECK(no_format.at("error").at("hint") == "run it as root");

    // Root gets past authorisation to the device check.
    const json root_format = call(cfg, root, format);
    CHECK(root_format.at("error").at("code") == "device");
    CHECK(root_format.at("error").at("message") == "cannot open device /nonexistent: No such file or directory");
}

TEST_CASE("server: malformed requests become protocol errors", "[server]")
{
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(kConfig, "agent.toml");
    const diskcrypt::Peer root{1, 0, 0, {}};
    const json r = call(cfg, root, "{");
    CHECK(r.at("ok") == false);
    CHECK(r.at("protocol") == 1);
    CHECK(r.at("error").at("code") == "protocol");
    CHECK(r.at("error").at("exit") == 13);
    const json v =
        call(cfg, root, R"({"protocol":1,"op":"format","args":{"device":"/d","disk_id":"d 1","type":"network-ssd"}})");
    CHECK(v.at("error").at("code") == "usage");
    CHECK(v.at("error").at("message") == "invalid disk id 'd 1': it must be 1-100 characters from A-Z a-z 0-9 . _ -");
}
