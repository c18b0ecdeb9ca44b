// `diskcrypt key ...` end to end with a PKCS#11 provider (SoftHSM2): the agent
// and the CLI as processes, real LUKS2 in files. The access policy is the
// host tests' (userAccount:kUser is `editor` in folder "tests") plus
// userAccount:key-admin as `kms.admin` there. Revocation of attached disks
// needs device-mapper and runs in the guest (tests/attach/revocation.sh).
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::test::Result;
using nlohmann::json;

namespace {

const std::string kDefaultKey = "hsm:disk-key-01";
const std::string kAdmin = "key-admin";
const std::string kEditor = std::string(diskcrypt::test::kUser);

class KeyWorld {
public:
    KeyWorld()
    {
        hsm.create_key({.id = "disk-key-01", .label = "disk key"});
        std::string policy = diskcrypt::test::write_tests_policy(
            dir / "policy.toml", {kDefaultKey, "hsm:k-new", "hsm:k-other", "hsm:k-destroy"});
        diskcrypt::test::write_file(dir / "policy.toml",
                                    diskcrypt::test::read_file(dir / "policy.toml") +
                                        "[[bindings]]\nsubject = \"userAccount:" + kAdmin +
                                        "\"\nrole = \"kms.admin\"\nresource = \"folder:tests\"\n",
                                    0644);
        diskcrypt::test::write_file(config,
                                    "[agent]\nsocket = \"" + socket + "\"\ndefault_key = \"" + kDefaultKey +
                                        "\"\nlock_dir = \"" + (dir / "lock") + "\"\n" + policy +
                                        "\n[audit]\nfile = \"" + audit + "\"\njournal = \"never\"\n\n" +
                                        hsm.provider_toml("hsm"),
                                    0600);
        agent = diskcrypt::test::start_agent({"--config", config, "--log-level", "debug"}, socket, log);
    }

    [[nodiscard]] Result cli(std::vector<std::string> args) const
    {
        return diskcrypt::test::run_cli(socket, diskcrypt::test::with_identity(std::move(args), kDefaultKey));
    }
    // Called for its REQUIRE as often as for its output.
    // NOLINTNEXTLINE(modernize-use-nodiscard)
    Result cli_ok(const std::vector<std::string>& args) const
    {
        Result r = cli(args);
        INFO("args: " << args.front() << "\nstdout: " << r.out << "\nstderr: " << r.err << "\nagent log:\n"
                      << diskcrypt::test::read_file(log));
        REQUIRE(r.status == 0);
        return r;
    }
    [[nodiscard]] std::string image(const std::string& name) const
    {
        std::string path = dir / name;
        diskcrypt::test::write_file(path, "", 0600);
        std::filesystem::resize_file(path, std::uint64_t{16} << 20U);
        return path;
    }

    diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm{dir};
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string log = dir / "agent.log";
    std::string audit = dir / "audit.jsonl";
    std::unique_ptr<diskcrypt::test::Background> agent;
};

json key_of(const Result& r)
{
    const json j = json::parse(r.out);
    REQUIRE(j.contains("key"));
    return j.at("key");
}

}  // namespace

TEST_CASE("e2e keys: create, list, rotate, rewrap, disable, enable, destroy with PKCS#11", "[e2e][keys]")
{
    KeyWorld w;

    // create: version 1, active; the audit names the user and the key.
    const Result c = w.cli_ok({"key", "create", "hsm:k-new", "--user", kEditor});
    CHECK_THAT(c.out, Contains("Created key hsm:k-new (pkcs11)"));
    CHECK_THAT(c.out, Contains("1 active (primary)"));
    const json k1 = key_of(w.cli_ok({"--json", "key", "create", "hsm:k-other", "--user", kEditor}));
    CHECK(k1.at("primary") == "1");
    CHECK(k1.at("provider_type") == "pkcs11");
    CHECK(k1.at("versions").size() == 1);
    CHECK(k1.at("versions").at(0).at("state") == "active");
    CHECK_THAT(diskcrypt::test::read_file(w.audit), Contains("\"event\":\"key-create\",\"result\":\"ok\""));
    CHECK_THAT(diskcrypt::test::read_file(w.audit), Contains("\"user\":\"" + kEditor + "\""));

    SECTION("refusals: an existing key, no role, bad arguments, the default key")
    {
        const Result again = w.cli({"key", "create", "hsm:k-new", "--user", kEditor});
        CHECK(again.status == 16);
        CHECK_THAT(again.err, Contains("k-new' exists"));
        const Result stranger = w.cli({"key", "create", "hsm:k-destroy", "--user", "stranger"});
        CHECK(stranger.status == 18);
        CHECK_THAT(stranger.err, Contains("userAccount:stranger lacks kms.keys.create on key:hsm:k-destroy"));
        const Result editor_destroy = w.cli({"key", "destroy", "hsm:k-new", "--user", kEditor});
        CHECK(editor_destroy.status == 18);
        CHECK_THAT(editor_destroy.err, Contains("lacks kms.keys.destroy on key:hsm:k-new"));
        CHECK_THAT(editor_destroy.err, Contains("kms.admin"));
        for (const char* action : {"disable", "destroy"}) {
            const Result d = w.cli({"key", action, kDefaultKey, "--user", kAdmin});
            CHECK(d.status == 21);
            CHECK_THAT(d.err, Contains("is this host's default key"));
        }
        CHECK(w.cli({"key", "create", "--user", kEditor}).status == 2);
        CHECK(w.cli({"key", "frobnicate", "hsm:k-new", "--user", kEditor}).status == 2);
        CHECK(w.cli({"key", "create", "no-provider-key", "--user", kEditor}).status == 2);
        CHECK(w.cli({"key", "create", "hsm:k-new"}).status == 2);  // --user is required
        const Result unknown = w.cli({"key", "create", "nohsm:k", "--user", kEditor});
        CHECK(unknown.status == 2);
        CHECK_THAT(unknown.err, Contains("nohsm"));
        const Result missing = w.cli({"key", "rotate", "hsm:k-destroy", "--user", kEditor});
        CHECK(missing.status == 10);
    }

    SECTION("list shows what the user may see")
    {
        const json all = json::parse(w.cli_ok({"--json", "key", "list", "--user", kEditor}).out);
        std::vector<std::string> ids;
        for (const json& k : all.at("keys")) {
            ids.push_back(k.at("id").get<std::string>());
        }
        CHECK(ids == std::vector<std::string>{"disk-key-01", "k-new", "k-other"});
        CHECK(all.at("hidden") == 0);
        const Result text = w.cli_ok({"key", "list", "hsm", "--user", kEditor});
        CHECK_THAT(text.out, Contains("KEY"));
        CHECK_THAT(text.out, Contains("hsm:k-new"));
        const json none = json::parse(w.cli_ok({"--json", "key", "list", "--user", "stranger"}).out);
        CHECK(none.at("keys").empty());
        CHECK(none.at("hidden") == 3);
        CHECK(w.cli({"key", "list", "nohsm", "--user", kEditor}).status == 2);
    }

    SECTION("rotate: new wraps use the new version, old disks still open, rewrap moves them")
    {
        const std::string d1 = w.image("d1.img");
        w.cli_ok({"format", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        const json r = key_of(w.cli_ok({"--json", "key", "rotate", "hsm:k-new", "--user", kEditor}));
        CHECK(r.at("primary") == "2");
        CHECK(r.at("versions").size() == 2);
        const std::string d2 = w.image("d2.img");
        const json f2 = json::parse(
            w.cli_ok({"--json", "format", d2, "--disk-id", "d2", "--type", "network-ssd", "--key", "hsm:k-new"}).out);
        CHECK(f2.at("key").at("version") == "2");
        w.cli_ok({"verify", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        w.cli_ok({"verify", d2, "--disk-id", "d2", "--type", "network-ssd", "--key", "hsm:k-new"});
        const json rw =
            json::parse(w.cli_ok({"--json", "rewrap", d1, "--disk-id", "d1", "--key", "hsm:k-new", "--service-account",
                                  std::string(diskcrypt::test::kServiceAccount), "--user", kEditor})
                            .out);
        CHECK(rw.at("from").at("version") == "1");
        CHECK(rw.at("to").at("version") == "2");
        w.cli_ok({"verify", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        CHECK_THAT(diskcrypt::test::read_file(w.audit), Contains("\"event\":\"key-rotate\",\"result\":\"ok\""));
    }

    SECTION("disable refuses wraps and unwraps with the reason; enable restores them")
    {
        const std::string d1 = w.image("d1.img");
        w.cli_ok({"format", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        const json dis = key_of(w.cli_ok({"--json", "key", "disable", "hsm:k-new", "--user", kEditor}));
        CHECK(dis.at("versions").at(0).at("state") == "disabled");
        const Result v = w.cli({"verify", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        CHECK(v.status == 10);
        CHECK_THAT(v.err, Contains("disabled"));
        const Result f =
            w.cli({"format", w.image("d3.img"), "--disk-id", "d3", "--type", "network-ssd", "--key", "hsm:k-new"});
        CHECK(f.status == 10);
        CHECK_THAT(f.err, Contains("disabled"));
        w.cli_ok({"key", "enable", "hsm:k-new", "--user", kEditor});
        w.cli_ok({"verify", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        const std::string a = diskcrypt::test::read_file(w.audit);
        CHECK_THAT(a, Contains("\"event\":\"key-disable\",\"result\":\"ok\""));
        CHECK_THAT(a, Contains("\"event\":\"key-enable\",\"result\":\"ok\""));
    }

    SECTION("destroy: every version, by a kms.admin; the disks under it no longer open")
    {
        const std::string d1 = w.image("d1.img");
        w.cli_ok({"format", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        w.cli_ok({"key", "rotate", "hsm:k-new", "--user", kEditor});
        const Result d = w.cli_ok({"key", "destroy", "hsm:k-new", "--user", kAdmin});
        CHECK_THAT(d.out, Contains("Destroyed key hsm:k-new (pkcs11): every version"));
        const Result v = w.cli({"verify", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        CHECK(v.status == 10);
        const json list = json::parse(w.cli_ok({"--json", "key", "list", "--user", kEditor}).out);
        for (const json& k : list.at("keys")) {
            CHECK(k.at("id") != "k-new");
        }
        CHECK_THAT(diskcrypt::test::read_file(w.audit), Contains("\"event\":\"key-destroy\",\"result\":\"ok\""));
    }

    SECTION("audit: the trail of the key's use, filtered, from the audit file")
    {
        const std::string d1 = w.image("d1.img");
        w.cli_ok({"format", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        w.cli_ok({"verify", d1, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k-new"});
        const json all = json::parse(w.cli_ok({"--json", "audit", "--key", "hsm:k-new"}).out);
        CHECK_THAT(all.at("source").get<std::string>(), Contains(w.audit));
        std::vector<std::string> events;
        for (const json& e : all.at("events")) {
            CHECK(e.at("key").at("id") == "k-new");
            events.push_back(e.at("event").get<std::string>());
        }
        for (const char* e : {"key-create", "wrap", "unwrap", "format", "verify"}) {
            CHECK(std::find(events.begin(), events.end(), e) != events.end());
        }
        const json disk = json::parse(w.cli_ok({"--json", "audit", "--disk", "d1"}).out);
        CHECK_FALSE(disk.at("events").empty());
        for (const json& e : disk.at("events")) {
            CHECK(e.at("disk_id") == "d1");
        }
        const Result text = w.cli_ok({"audit", "--disk", "d1", "--since", "-1h"});
        CHECK_THAT(text.out, Contains("  unwrap  ok  disk=d1"));
        CHECK_THAT(text.out, Contains("key=hsm:k-new version=1"));
        CHECK_THAT(w.cli_ok({"audit", "--disk", "d1", "--since", "2099-01-01"}).out, Contains("No events"));
        const Result bad = w.cli({"audit", "--since", "yesterday"});
        CHECK(bad.status == 2);
        CHECK_THAT(bad.err, Contains("yesterday"));
    }

    SECTION("check-keys answers on a host without device-mapper: nothing to check")
    {
        const json r = json::parse(w.cli_ok({"--json", "check-keys"}).out);
        CHECK(r.at("keys").empty());
        CHECK(r.at("revoked").empty());
        const json st = json::parse(w.cli_ok({"--json", "status"}).out);
        CHECK(st.at("revocation").at("mode") == "keep");
        CHECK(st.at("revocation").at("interval_s") == 60);
    }
}
