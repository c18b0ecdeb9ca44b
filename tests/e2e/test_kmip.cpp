// `diskcrypt format` and `verify` through the KMIP provider end to end: the
// agent and the CLI as processes, a real PyKMIP server on 127.0.0.1 with the
// test's PKI, real LUKS2 in a file. (Attach through KMIP runs in the guest:
// tests/attach/kmip.sh.)
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "tests/support/pykmip.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::test::PyKmipServer;
using diskcrypt::test::Result;
using diskcrypt::test::TempDir;
using nlohmann::json;

namespace {

class KmipWorld {
public:
    explicit KmipWorld(const std::string& endpoint_override = "")
    {
        uid = server.create_key("disk-key");
        const auto& pki = server.pki();
        const std::string policy =
            diskcrypt::test::write_tests_policy(dir / "policy.toml", {"kms:disk-key", "kms:k-life"});
        // key-admin is kms.admin on the tests' folder (the key lifecycle test).
        diskcrypt::test::write_file(dir / "policy.toml",
                                    diskcrypt::test::read_file(dir / "policy.toml") +
                                        "[[bindings]]\nsubject = \"userAccount:key-admin\"\nrole = \"kms.admin\"\n"
                                        "resource = \"folder:tests\"\n",
                                    0644);
        const std::string endpoint = endpoint_override.empty() ? server.endpoint() : endpoint_override;
        diskcrypt::test::write_file(
            config,
            "[agent]\nsocket = \"" + socket + "\"\ndefault_key = \"kms:disk-key\"\nlock_dir = \"" + (dir / "lock") +
                "\"\n" + policy + "\n[audit]\nfile = \"" + audit + "\"\njournal = \"never\"\n" +
                "\n[providers.kms]\ntype = \"kmip\"\nendpoints = [\"" + endpoint +
                "\"]\nserver_name = \"kmip.test\"\nca_file = \"" + pki.ca() + "\"\nclient_certificate = \"" +
                pki.client().cert + "\"\nclient_key_file = \"" + pki.client().key +
                "\"\nrequest_timeout = 3\nconnect_timeout = 1\nread_timeout = 1\n",
            0600);
        agent = diskcrypt::test::start_agent({"--config", config, "--log-level", "debug"}, socket, log);
    }

    [[nodiscard]] Result cli(std::vector<std::string> args) const
    {
        return diskcrypt::test::run_cli(socket, diskcrypt::test::with_identity(std::move(args), "kms:disk-key"));
    }
    [[nodiscard]] Result cli_ok(const std::vector<std::string>& args) const
    {
        Result r = cli(args);
        INFO("stdout: " << r.out << "\nstderr: " << r.err << "\nagent log:\n" << diskcrypt::test::read_file(log));
        REQUIRE(r.status == 0);
        return r;
    }

    TempDir dir;
    PyKmipServer server{dir};
    std::string uid;
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string log = dir / "agent.log";
    std::string audit = dir / "audit.jsonl";
    std::unique_ptr<diskcrypt::test::Background> agent;
};

std::string kmip_image(const TempDir& dir, const std::string& name)
{
    std::string path = dir / name;
    diskcrypt::test::write_file(path, "", 0600);
    std::filesystem::resize_file(path, std::uint64_t{32} << 20U);
    return path;
}

}  // namespace

TEST_CASE("e2e kmip: format and verify through a PyKMIP server", "[e2e][kmip]")
{
    KmipWorld w;
    const std::string img = kmip_image(w.dir, "disk-1.img");
    const Result f = w.cli_ok({"format", img, "--disk-id", "disk-1", "--type", "network-ssd", "--key", "kms:disk-key"});
    CHECK_THAT(f.out, Contains("key             kms:disk-key version " + w.uid + " (kmip)"));
    const json v = json::parse(w.cli_ok({"--json", "verify", img, "--disk-id", "disk-1"}).out);
    CHECK(v.dump().find(w.uid) != std::string::npos);
    // Every KMS use is audited with the key version (the KMIP object).
    const auto events = diskcrypt::test::audit_events(w.audit);
    CHECK(diskcrypt::test::count_events(events, {{"event", "unwrap"}, {"result", "ok"}}) >= 2);
    CHECK(diskcrypt::test::count_events(events, {{"event", "wrap"}, {"result", "ok"}}) == 1);
    CHECK(diskcrypt::test::count_events(
              events, {{"event", "unwrap"}, {"key", {{"provider", "kms"}, {"id", "disk-key"}, {"version", w.uid}}}}) >=
          2);

    SECTION("another disk id does not unwrap")
    {
        const Result r = w.cli({"verify", img, "--disk-id", "disk-2"});
        CHECK(r.status == 11);
    }
    SECTION("the key revoked: refused with its state")
    {
        w.server.revoke(w.uid, true);
        const Result r = w.cli({"verify", img, "--disk-id", "disk-1"});
        CHECK(r.status == 10);
        CHECK_THAT(r.err, Contains("is compromised, not active"));
        const Result f2 = w.cli({"format", kmip_image(w.dir, "disk-3.img"), "--disk-id", "disk-3", "--type",
                                 "network-ssd", "--key", "kms:disk-key"});
        CHECK(f2.status == 10);
        CHECK_THAT(f2.err, Contains("its state is compromised"));
    }
    SECTION("the server stopped: a clear error within the deadline")
    {
        (void)w.server.crash();  // at once: stop() would wait 10 s for the agent's pooled connection
        const auto t0 = std::chrono::steady_clock::now();
        const Result r = w.cli({"verify", img, "--disk-id", "disk-1"});
        const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        CHECK(took < 4.0);
        CHECK(r.status == 8);
        CHECK_THAT(r.err, Contains("no KMIP server completed Decrypt") && Contains(w.server.endpoint()) &&
                              Contains("Connection refused"));
    }
}

TEST_CASE("e2e kmip: key create, rotate, disable, enable (refused), destroy", "[e2e][kmip][keys]")
{
    KmipWorld w;
    const std::string user(diskcrypt::test::kUser);
    const json c = json::parse(w.cli_ok({"--json", "key", "create", "kms:k-life", "--user", user}).out).at("key");
    CHECK(c.at("provider_type") == "kmip");
    REQUIRE(c.at("versions").size() == 1);
    const std::string v1 = c.at("primary").get<std::string>();
    CHECK(w.cli({"key", "create", "kms:k-life", "--user", user}).status == 16);

    const std::string img = kmip_image(w.dir, "life.img");
    (void)w.cli_ok({"format", img, "--disk-id", "life", "--type", "network-ssd", "--key", "kms:k-life"});
    const json r = json::parse(w.cli_ok({"--json", "key", "rotate", "kms:k-life", "--user", user}).out).at("key");
    REQUIRE(r.at("versions").size() == 2);
    const std::string v2 = r.at("primary").get<std::string>();
    CHECK(v2 != v1);
    const std::string img2 = kmip_image(w.dir, "life2.img");
    const json f2 = json::parse(
        w.cli_ok({"--json", "format", img2, "--disk-id", "life2", "--type", "network-ssd", "--key", "kms:k-life"}).out);
    CHECK(f2.at("key").at("version") == v2);
    (void)w.cli_ok({"verify", img, "--disk-id", "life", "--type", "network-ssd", "--key", "kms:k-life"});

    const json l = json::parse(w.cli_ok({"--json", "key", "list", "kms", "--user", user}).out);
    bool listed = false;
    for (const json& k : l.at("keys")) {
        listed = listed || (k.at("id") == "k-life" && k.at("primary") == v2);
    }
    CHECK(listed);

    const json d = json::parse(w.cli_ok({"--json", "key", "disable", "kms:k-life", "--user", user}).out).at("key");
    for (const json& v : d.at("versions")) {
        CHECK(v.at("state") == "deactivated");
    }
    const Result refused = w.cli({"verify", img, "--disk-id", "life", "--type", "network-ssd", "--key", "kms:k-life"});
    CHECK(refused.status == 10);
    CHECK_THAT(refused.err, Contains("deactivated"));
    const Result enable = w.cli({"key", "enable", "kms:k-life", "--user", user});
    CHECK(enable.status == 21);
    CHECK_THAT(enable.err, Contains("cannot be enabled again"));

    CHECK(w.cli({"key", "destroy", "kms:k-life", "--user", user}).status == 18);
    (void)w.cli_ok({"key", "destroy", "kms:k-life", "--user", "key-admin"});
    const Result gone = w.cli({"verify", img2, "--disk-id", "life2", "--type", "network-ssd", "--key", "kms:k-life"});
    CHECK(gone.status == 10);
    const std::string audit = diskcrypt::test::read_file(w.audit);
    for (const char* e : {"key-create", "key-rotate", "key-disable", "key-enable", "key-destroy"}) {
        CHECK_THAT(audit, Contains(std::string("\"event\":\"") + e + "\""));
    }
}
