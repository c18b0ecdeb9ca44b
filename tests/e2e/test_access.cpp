// The access policy through the agent and the CLI, on the host (no
// device-mapper needed: format and verify on image files, a real SoftHSM2
// token). The guest suite (tests/attach/access.sh) does the same for attach.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/policy/policy.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::test::Result;
using nlohmann::json;

namespace access_e2e {

// alice may create disks for sa-disk (iam.serviceAccounts.user on it,
// kms.viewer on the key); sa-disk may only encrypt; sa-vm, the VM's other
// service account, may decrypt (and must not stand in for sa-disk).
const std::string kEncryptOnly = R"(
[keys."hsm:disk-key-01"]
folder = "prod"

[[bindings]]
subject = "userAccount:alice"
role = "iam.serviceAccounts.user"
resource = "serviceAccount:sa-disk"

[[bindings]]
subject = "userAccount:alice"
role = "kms.viewer"
resource = "folder:prod"

[[bindings]]
subject = "serviceAccount:sa-disk"
role = "kms.keys.encrypter"
resource = "key:hsm:disk-key-01"

[[bindings]]
subject = "serviceAccount:sa-vm"
role = "kms.keys.encrypterDecrypter"
resource = "folder:prod"
)";

// The same, and sa-disk may decrypt both keys.
const std::string kDecryptToo = kEncryptOnly + R"(
[[bindings]]
subject = "serviceAccount:sa-disk"
role = "kms.keys.decrypter"
resource = "key:hsm:disk-key-01"

[[bindings]]
subject = "serviceAccount:sa-disk"
role = "kms.keys.decrypter"
resource = "key:hsm:disk-key-02"
)";

struct Host {
    explicit Host(const std::string& policy_text = kEncryptOnly)
    {
        hsm.create_key({.id = "disk-key-01", .label = "disk key 1"});
        hsm.create_key({.id = "disk-key-02", .label = "disk key 2"});
        set_policy(policy_text);
        diskcrypt::test::write_file(config, "[agent]\nsocket = \"" + socket + "\"\nlock_dir = \"" + (dir / "lock") +
                                                "\"\ndefault_key = \"hsm:disk-key-01\"\npolicy = \"" + policy +
                                                "\"\n[audit]\nfile = \"" + audit + "\"\njournal = \"never\"\n" +
                                                hsm.provider_toml());
        diskcrypt::test::write_file(image, "");
        std::filesystem::resize_file(image, 8ULL << 20U);
    }

    void start() { agent = diskcrypt::test::start_agent({"--config", config}, socket, log); }

    // Replaces the policy file as an operator's tooling would: a new file
    // renamed over the old one.
    void set_policy(const std::string& text) const
    {
        const std::string next = dir / "policy.toml.new";
        diskcrypt::test::write_file(next, text, 0644);
        std::filesystem::rename(next, policy);
    }

    [[nodiscard]] Result cli(std::vector<std::string> args) const
    {
        return diskcrypt::test::run_cli(socket, std::move(args));
    }

    [[nodiscard]] Result format(const std::string& user) const
    {
        return cli({"--json", "format", image, "--disk-id", "disk-1", "--type", "network-ssd", "--service-account",
                    "sa-disk", "--user", user, "--force"});
    }

    [[nodiscard]] Result verify(const std::string& sa, const std::string& key = "hsm:disk-key-01",
                                const std::string& type = "network-ssd") const
    {
        return cli(
            {"--json", "verify", image, "--disk-id", "disk-1", "--type", type, "--key", key, "--service-account", sa});
    }

    [[nodiscard]] std::vector<json> events() const { return diskcrypt::test::audit_events(audit); }

    [[nodiscard]] std::string revision() const
    {
        return diskcrypt::policy::content_revision(diskcrypt::test::read_file(policy));
    }

    diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm{dir};
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string policy = dir / "policy.toml";
    std::string audit = dir / "audit.jsonl";
    std::string log = dir / "agent.log";
    std::string image = dir / "disk.img";
    std::unique_ptr<diskcrypt::test::Background> agent;
};

std::string error_message(const Result& r) { return json::parse(r.out).at("error").at("message").get<std::string>(); }

bool luks_header_on(const std::string& image)
{
    return diskcrypt::test::run({"cryptsetup", "isLuks", image}).status == 0;
}

}  // namespace access_e2e

using access_e2e::error_message;
using access_e2e::Host;
using diskcrypt::test::count_events;

TEST_CASE("e2e access: format and verify as the policy grants, its changes count without a restart", "[e2e][access]")
{
    Host h;
    h.start();
    const std::string r0 = h.revision();

    // bob has no role on sa-disk: refused, the device untouched, no KMS call.
    Result r = h.format("bob");
    INFO(r.out << r.err);
    CHECK(r.status == 18);
    CHECK(error_message(r) ==
          "access denied: userAccount:bob lacks iam.serviceAccounts.use on serviceAccount:sa-disk; "
          "userAccount:bob lacks kms.keys.get on key:hsm:disk-key-01 (access policy revision " +
              r0 + ")");
    CHECK_THAT(r.out, Contains("bind one of the roles iam.serviceAccounts.user"));
    CHECK_FALSE(access_e2e::luks_header_on(h.image));
    auto ev = h.events();
    CHECK(count_events(ev, {{"event", "wrap"}}) == 0);
    CHECK(count_events(ev, {{"event", "access"},
                            {"result", "refused"},
                            {"reason", "access-denied"},
                            {"user", "bob"},
                            {"policy_revision", r0}}) == 2);
    CHECK(count_events(ev, {{"event", "access"}, {"result", "ok"}, {"user", "bob"}}) == 1);  // sa-disk may encrypt
    CHECK(count_events(ev, {{"event", "format"}, {"result", "refused"}, {"reason", "access-denied"}}) == 1);

    // alice may: three decisions allowed, all under r0, then the wrap.
    r = h.format("alice");
    REQUIRE(r.status == 0);
    CHECK(json::parse(r.out).at("policy_revision") == r0);
    CHECK(json::parse(r.out).at("user") == "alice");
    ev = h.events();
    CHECK(count_events(ev, {{"event", "access"}, {"result", "ok"}, {"user", "alice"}, {"policy_revision", r0}}) == 3);
    CHECK(count_events(ev, {{"event", "format"}, {"result", "ok"}, {"user", "alice"}, {"policy_revision", r0}}) == 1);

    // sa-disk may not decrypt yet; sa-vm could, but it is not the disk's.
    std::size_t mark = h.events().size();
    r = h.verify("sa-disk");
    CHECK(r.status == 18);
    CHECK_THAT(error_message(r), Contains("serviceAccount:sa-disk lacks kms.keys.decrypt on key:hsm:disk-key-01"));
    CHECK_THAT(r.out, Contains("kms.keys.decrypter, kms.keys.encrypterDecrypter"));
    ev = h.events();
    CHECK(count_events(ev, {{"event", "unwrap"}}, mark) == 0);
    CHECK(count_events(ev, {{"event", "verify"}, {"result", "refused"}, {"service_account", "sa-disk"}}, mark) == 1);

    // The grant: a new file, picked up by the next request.
    h.set_policy(access_e2e::kDecryptToo);
    const std::string r1 = h.revision();
    REQUIRE(r1 != r0);
    r = h.verify("sa-disk");
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    CHECK(json::parse(r.out).at("policy_revision") == r1);
    CHECK(json::parse(r.out).at("service_account") == "sa-disk");
    ev = h.events();
    CHECK(count_events(ev, {{"event", "policy"}, {"result", "ok"}, {"policy_revision", r1}}, mark) == 1);
    CHECK(count_events(ev, {{"event", "unwrap"}, {"result", "ok"}, {"service_account", "sa-disk"}}, mark) == 1);

    // A broken file is refused, with its line; the last good policy stays.
    mark = ev.size();
    h.set_policy(access_e2e::kDecryptToo +
                 "\n[[bindings]]\nsubject = \"serviceAccount:sa-disk\"\nrole = "
                 "\"kms.keys.superuser\"\nresource = \"key:hsm:disk-key-01\"\n");
    r = h.verify("sa-disk");
    CHECK(r.status == 0);
    CHECK(json::parse(r.out).at("policy_revision") == r1);
    ev = h.events();
    REQUIRE(count_events(ev, {{"event", "policy"}, {"result", "refused"}, {"policy_revision", r1}}, mark) == 1);
    for (std::size_t i = mark; i < ev.size(); ++i) {
        if (ev[i].at("event") == "policy") {
            CHECK_THAT(ev[i].at("message").get<std::string>(), Contains(h.policy + ":") &&
                                                                   Contains("unknown role 'kms.keys.superuser'") &&
                                                                   Contains("the policy in force stays"));
        }
    }
    // Refused once, not at every request.
    r = h.verify("sa-disk");
    CHECK(r.status == 0);
    CHECK(count_events(h.events(), {{"event", "policy"}}, mark) == 1);

    // The revocation, picked up on SIGHUP before any request.
    mark = h.events().size();
    h.set_policy(access_e2e::kEncryptOnly);
    REQUIRE(kill(h.agent->pid(), SIGHUP) == 0);
    bool seen = false;
    for (int i = 0; i < 100 && !seen; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        seen = count_events(h.events(), {{"event", "policy"}, {"result", "ok"}, {"policy_revision", r0}}, mark) == 1;
    }
    CHECK(seen);
    CHECK_THAT(diskcrypt::test::read_file(h.log), Contains("SIGHUP: reloading the access policy"));
    r = h.verify("sa-disk");
    CHECK(r.status == 18);
    CHECK_THAT(error_message(r), Contains("(access policy revision " + r0 + ")"));

    // status names the policy in force.
    r = h.cli({"--json", "status"});
    REQUIRE(r.status == 0);
    const json p = json::parse(r.out).at("policy");
    CHECK(p.at("source") == "file " + h.policy);
    CHECK(p.at("revision") == r0);
    CHECK(p.at("bindings") == 4);
    CHECK(h.agent->stop() == 0);
}

TEST_CASE("e2e access: the caller's key and disk type must be the header's, checked before the KMS", "[e2e][access]")
{
    Host h(access_e2e::kDecryptToo);
    h.start();
    REQUIRE(h.format("alice").status == 0);
    const std::size_t mark = h.events().size();

    Result r = h.verify("sa-disk", "hsm:disk-key-02");
    CHECK(r.status == 11);
    CHECK_THAT(error_message(r), Contains("the header of disk disk-1 is wrapped under key hsm:disk-key-01, not under "
                                          "the disk's key hsm:disk-key-02; the KMS was not asked"));
    r = h.verify("sa-disk", "hsm:disk-key-01", "network-ssd-io-m3");
    CHECK(r.status == 11);
    CHECK_THAT(error_message(r), Contains("binds disk type network-ssd, not network-ssd-io-m3; the KMS was not asked"));
    CHECK(count_events(h.events(), {{"event", "unwrap"}}, mark) == 0);

    r = h.verify("sa-disk", "hsm:disk-key-01", "local-ssd");
    CHECK(r.status == 2);
    CHECK_THAT(error_message(r), Contains("local disks cannot be encrypted"));
    r = h.verify("sa-disk", "other:disk-key-01");
    CHECK(r.status == 2);
    CHECK_THAT(error_message(r), Contains("names provider 'other', which this agent does not configure"));
    // Without --type verify checks the key and the disk id only.
    r = h.cli({"verify", h.image, "--disk-id", "disk-1", "--key", "hsm:disk-key-01", "--service-account", "sa-disk"});
    CHECK(r.status == 0);
}

TEST_CASE("e2e access: a policy that cannot be used stops the agent at start, --check-config reads it", "[e2e][access]")
{
    Host h;
    Result r = diskcrypt::test::run({DISKCRYPT_AGENT_BIN, "--config", h.config, "--check-config"});
    CHECK(r.status == 0);
    CHECK_THAT(r.out, Contains("access policy " + h.policy + " valid"));

    h.set_policy("[[bindings]]\nsubject = \"serviceAccount:x\"\nrole = \"kms.keys.decrypter\"\nresource = \"key:k\"\n");
    r = diskcrypt::test::run({DISKCRYPT_AGENT_BIN, "--config", h.config, "--check-config"});
    CHECK(r.status == 12);
    CHECK_THAT(r.err, Contains(h.policy + ":4:"));

    h.set_policy(access_e2e::kEncryptOnly);
    REQUIRE(chmod(h.policy.c_str(), 0664) == 0);
    r = diskcrypt::test::run({DISKCRYPT_AGENT_BIN, "--config", h.config, "--socket", h.socket});
    CHECK(r.status == 12);
    CHECK_THAT(r.err, Contains("is writable by group or others; whoever can write it decides who gets keys"));

    REQUIRE(unlink(h.policy.c_str()) == 0);
    r = diskcrypt::test::run({DISKCRYPT_AGENT_BIN, "--config", h.config, "--socket", h.socket});
    CHECK(r.status == 12);
    CHECK_THAT(r.err, Contains("cannot read access policy " + h.policy));
}
