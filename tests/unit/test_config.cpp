// The agent's configuration: the documented example parses, and every
// invalid file is refused with its line and reason.
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "agent/config.hpp"
#include "agent/error.hpp"

using diskcrypt::AgentConfig;
using diskcrypt::Errc;
using diskcrypt::Error;
using diskcrypt::parse_config;

namespace {

const std::string kProvider =
    "[providers.hsm]\n"
    "type = \"pkcs11\"\n"
    "module = \"/usr/lib/softhsm/libsofthsm2.so\"\n"
    "token_label = \"diskcrypt\"\n"
    "pin_file = \"/etc/diskcrypt/hsm.pin\"\n";

// Parsing must fail with Error(config) whose message is exactly `message`.
void refused(const std::string& text, const std::string& message)
{
    INFO("config:\n" << text);
    try {
        (void)parse_config(text, "agent.toml");
        FAIL("accepted an invalid configuration");
    } catch (const Error& e) {
        CHECK(e.code() == Errc::config);
        CHECK(std::string(e.what()) == message);
    }
}

}  // namespace

TEST_CASE("config: the example file in agent/ is valid", "[config]")
{
    std::ifstream in(DISKCRYPT_SOURCE_DIR "/agent/agent.toml.example");
    REQUIRE(in);
    std::ostringstream s;
    s << in.rdbuf();
    std::string text = s.str();
    // The example names a "diskcrypt" group, which this test machine may lack.
    const std::string group = "status_group = \"diskcrypt\"";
    REQUIRE(text.find(group) != std::string::npos);
    text.replace(text.find(group), group.size(), "status_group = \"root\"");
    const AgentConfig cfg = parse_config(text, "agent.toml.example");
    CHECK(cfg.socket_path == "/run/diskcrypt/agent.sock");
    CHECK(cfg.status_gid == 0);
    REQUIRE(cfg.default_key.has_value());
    CHECK(cfg.default_key->spec() == "hsm:disk-default");
    REQUIRE(cfg.provider("hsm") != nullptr);
    CHECK(cfg.provider("hsm")->type() == "pkcs11");
    CHECK(cfg.provider("other") == nullptr);
    CHECK(cfg.lock_dir == "/run/diskcrypt/lock");
    CHECK(cfg.policy_path == std::optional<std::string>("/etc/diskcrypt/policy.toml"));
    CHECK(cfg.audit.file == std::optional<std::string>("/var/log/diskcrypt/audit.jsonl"));
    CHECK(cfg.audit.journal == diskcrypt::audit::Journal::automatic);
}

TEST_CASE("config: [agent] policy is an absolute path, and optional", "[config][policy]")
{
    CHECK_FALSE(parse_config(kProvider, "agent.toml").policy_path.has_value());
    CHECK(parse_config("[agent]\npolicy = \"/etc/p.toml\"\n" + kProvider, "agent.toml").policy_path ==
          std::optional<std::string>("/etc/p.toml"));
    refused("[agent]\npolicy = \"p.toml\"\n" + kProvider,
            "agent.toml:2: [agent] policy: must be an absolute path (starting with '/')");
    refused("[agent]\npolicy = true\n" + kProvider, "agent.toml:2: [agent] policy: expected a string, found a boolean");
}

TEST_CASE("config: [disk_types.TYPE] overrides a type's profile, and only that", "[config][profile]")
{
    const AgentConfig d = parse_config(kProvider, "agent.toml");
    CHECK(d.disk_profiles.empty());
    CHECK(d.profile("network-ssd") == diskcrypt::encryptable_disk_type("network-ssd").profile);
    CHECK(d.profile("network-ssd-io-m3").sector_size == 4096);
    CHECK_THROWS_WITH(d.profile("local-ssd"), Catch::Matchers::Contains("local disks cannot be encrypted"));

    const AgentConfig c = parse_config(
        "[disk_types.network-ssd-io-m3]\nsector_size = 512\nzero_unwritten = false\nread_workqueue = true\n"
        "write_workqueue = true\ninline_depth = 8\n[disk_types.network-hdd]\ndiscards = true\n" +
            kProvider,
        "agent.toml");
    const diskcrypt::DiskProfile& m3 = c.profile("network-ssd-io-m3");
    CHECK(m3.sector_size == 512);
    CHECK_FALSE(m3.zero_unwritten);
    CHECK(m3.read_workqueue);
    CHECK(m3.write_workqueue);
    CHECK(m3.inline_depth == std::optional<unsigned>(8));
    CHECK(m3.discards);  // not overridden: the built-in one
    CHECK(c.profile("network-hdd").discards);
    CHECK(c.profile("network-hdd").sector_size == 512);
    CHECK(c.profile("network-ssd") == diskcrypt::encryptable_disk_type("network-ssd").profile);

    refused("[disk_types.local-ssd]\nzero_unwritten = false\n" + kProvider,
            "agent.toml:1: [disk_types.local-ssd]: disk type 'local-ssd' is a local disk, and local disks cannot be "
            "encrypted (only network-hdd, network-ssd, network-ssd-nonreplicated and network-ssd-io-m3 disks can be "
            "encrypted)");
    refused("[disk_types.network-nvme]\n" + kProvider,
            "agent.toml:1: [disk_types.network-nvme]: unknown disk type 'network-nvme' (use one of network-hdd, "
            "network-ssd, network-ssd-nonreplicated, network-ssd-io-m3)");
    refused("[disk_types.network-ssd]\nsector_size = 1000\n" + kProvider,
            "agent.toml:2: [disk_types.network-ssd] sector_size: invalid sector size 1000: use 512, 1024, 2048 or "
            "4096");
    refused("[disk_types.network-ssd]\ninline_depth = 70000\n" + kProvider,
            "agent.toml:2: [disk_types.network-ssd] inline_depth: must be from 0 to 65536 (not 70000)");
    refused("[disk_types.network-ssd]\ninline_depth = -1\n" + kProvider,
            "agent.toml:2: [disk_types.network-ssd] inline_depth: must be from 0 to 65536 (not -1)");
    refused("[disk_types.network-ssd]\nqueue = \"fast\"\n" + kProvider,
            "agent.toml:2: [disk_types.network-ssd]: unknown key 'queue'");
    refused(
        "[disk_types.network-ssd]\nzero_unwritten = \"yes\"\n" + kProvider,
        "agent.toml:2: [disk_types.network-ssd] zero_unwritten: expected a boolean (true or false), found a string");
    refused("[disk_types]\nnetwork-ssd = 1\n" + kProvider,
            "agent.toml:2: 'disk_types.network-ssd' must be a table ([disk_types.network-ssd])");
}

TEST_CASE("config: [audit] and lock_dir", "[config][audit]")
{
    const AgentConfig d = parse_config(kProvider, "agent.toml");
    CHECK(d.lock_dir == "/run/diskcrypt/lock");
    CHECK_FALSE(d.audit.file.has_value());
    CHECK(d.audit.journal == diskcrypt::audit::Journal::automatic);
    const AgentConfig c = parse_config(
        "[agent]\nlock_dir = \"/run/x\"\n[audit]\nfile = \"/var/log/a.jsonl\"\njournal = \"never\"\n" + kProvider,
        "agent.toml");
    CHECK(c.lock_dir == "/run/x");
    CHECK(c.audit.file == std::optional<std::string>("/var/log/a.jsonl"));
    CHECK(c.audit.journal == diskcrypt::audit::Journal::never);
    CHECK(parse_config("[audit]\njournal = \"always\"\n" + kProvider, "agent.toml").audit.journal ==
          diskcrypt::audit::Journal::always);
    refused("[audit]\njournal = \"yes\"\n" + kProvider,
            "agent.toml:2: [audit] journal: journal must be one of auto, always, never (not 'yes')");
    refused("[audit]\nfile = \"audit.jsonl\"\n" + kProvider,
            "agent.toml:2: [audit] file: must be an absolute path (starting with '/')");
    refused("[audit]\nsyslog = true\n" + kProvider, "agent.toml:2: [audit]: unknown key 'syslog'");
    refused("[agent]\nlock_dir = \"lock\"\n" + kProvider,
            "agent.toml:2: [agent] lock_dir: must be an absolute path (starting with '/')");
}

TEST_CASE("config: [revocation] mode, interval and the keys of each mode", "[config][revocation]")
{
    using diskcrypt::RevocationMode;
    const AgentConfig d = parse_config(kProvider, "agent.toml");
    CHECK(d.revocation.mode == RevocationMode::keep);
    CHECK(d.revocation.interval == std::chrono::seconds(60));
    CHECK(d.revocation.keys.empty());
    const AgentConfig c = parse_config(kProvider +
                                           "[revocation]\nmode = \"revoke\"\ninterval = 5\nkeep = [\"hsm:shared\"]\n"
                                           "revoke = [\"hsm:disk-key\"]\n",
                                       "agent.toml");
    CHECK(c.revocation.mode == RevocationMode::revoke);
    CHECK(c.revocation.interval == std::chrono::seconds(5));
    CHECK(c.revocation.mode_for({"hsm", "shared", ""}) == RevocationMode::keep);
    CHECK(c.revocation.mode_for({"hsm", "disk-key", "1"}) == RevocationMode::revoke);
    CHECK(c.revocation.mode_for({"hsm", "other", ""}) == RevocationMode::revoke);
    const AgentConfig k = parse_config(kProvider + "[revocation]\nrevoke = [\"hsm:disk-key\"]\n", "agent.toml");
    CHECK(k.revocation.mode_for({"hsm", "disk-key", ""}) == RevocationMode::revoke);
    CHECK(k.revocation.mode_for({"hsm", "other", ""}) == RevocationMode::keep);
    refused(kProvider + "[revocation]\nmode = \"wipe\"\n",
            R"(agent.toml:7: [revocation] mode: must be "keep" or "revoke", not "wipe")");
    refused(kProvider + "[revocation]\ninterval = 0\n",
            "agent.toml:7: [revocation] interval: must be at least 1 (seconds between key-state checks)");
    refused(kProvider + "[revocation]\nrevoke = [\"kms:disk-key\"]\n",
            "agent.toml:7: [revocation] revoke: key kms:disk-key names provider 'kms', which is not configured");
    refused(kProvider + "[revocation]\nrevoke = [\"hsm:a\"]\nkeep = [\"hsm:a\"]\n",
            "agent.toml:8: [revocation] keep: key hsm:a is listed twice (under revoke and keep, or twice in one)");
    refused(kProvider + "[revocation]\nrevoke = [\"no-colon\"]\n",
            "agent.toml:7: [revocation] revoke: invalid key 'no-colon': write it as PROVIDER:KEY_ID (for example "
            "hsm:disk-key-01)");
    refused(kProvider + "[revocation]\nperiod = 3\n", "agent.toml:7: [revocation]: unknown key 'period'");
}

TEST_CASE("config: defaults", "[config]")
{
    const AgentConfig cfg = parse_config(kProvider, "agent.toml");
    CHECK(cfg.socket_path == "/run/diskcrypt/agent.sock");
    CHECK_FALSE(cfg.status_group.has_value());
    CHECK_FALSE(cfg.default_key.has_value());
    CHECK(cfg.log_level == diskcrypt::LogLevel::info);
}

TEST_CASE("config: pin_credential instead of pin_file", "[config]")
{
    const AgentConfig cfg = parse_config(
        "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_credential = \"hsm-pin\"\n",
        "agent.toml");
    CHECK(cfg.provider("hsm") != nullptr);
}

TEST_CASE("config: each error names its line and reason", "[config]")
{
    SECTION("TOML syntax")
    {
        refused("[agent]\nsocket = \"/run/x.sock\"\nlog_level = info\n" + kProvider,
                "agent.toml:3: Error while parsing floating-point: expected value-terminator, saw 'o'");
    }
    SECTION("unknown section")
    {
        refused(kProvider + "[server]\nport = 1\n",
                "agent.toml:6: unknown section 'server' (known: [agent], [audit], [auto_attach], [disk_types.TYPE], "
                "[providers.NAME], "
                "[recovery], [revocation])");
    }
    SECTION("unknown key in [agent]")
    {
        refused("[agent]\nsocket = \"/run/x.sock\"\nsokcet = \"/run/y.sock\"\n" + kProvider,
                "agent.toml:3: [agent]: unknown key 'sokcet'");
    }
    SECTION("unknown key in a provider")
    {
        refused(kProvider + "slot = 3\n", "agent.toml:6: [providers.hsm]: unknown key 'slot'");
    }
    SECTION("wrong type")
    {
        refused("[agent]\nsocket = 5\n" + kProvider,
                "agent.toml:2: [agent] socket: expected a string, found an integer");
    }
    SECTION("relative socket path")
    {
        refused("[agent]\nsocket = \"agent.sock\"\n" + kProvider,
                "agent.toml:2: [agent] socket: must be an absolute path (starting with '/')");
    }
    SECTION("socket path too long")
    {
        refused("[agent]\nsocket = \"/" + std::string(120, 's') + "\"\n" + kProvider,
                "agent.toml:2: [agent] socket: socket path is longer than 103 bytes (a Unix socket address holds "
                "107, and the agent binds PATH.new first)");
    }
    SECTION("unknown status group")
    {
        refused("[agent]\nstatus_group = \"no-such-group-xyz\"\n" + kProvider,
                "agent.toml:2: [agent] status_group: group 'no-such-group-xyz' does not exist");
    }
    SECTION("bad log level")
    {
        refused("[agent]\nlog_level = \"verbose\"\n" + kProvider,
                "agent.toml:2: [agent] log_level: log_level must be one of error, warning, info, debug (not "
                "'verbose')");
    }
    SECTION("malformed default key")
    {
        refused("[agent]\ndefault_key = \"disk-key\"\n" + kProvider,
                "agent.toml:2: [agent] default_key: invalid key 'disk-key': write it as PROVIDER:KEY_ID (for "
                "example hsm:disk-key-01)");
    }
    SECTION("default key on an unconfigured provider")
    {
        refused("[agent]\ndefault_key = \"kms:k1\"\n" + kProvider,
                "agent.toml:2: [agent] default_key: names provider 'kms', which is not configured (add "
                "[providers.kms])");
    }
    SECTION("no provider")
    {
        refused("[agent]\nlog_level = \"info\"\n",
                "agent.toml:1: no KMS provider is configured: add a [providers.NAME] section");
    }
    SECTION("provider without type")
    {
        refused("[providers.hsm]\nmodule = \"/m.so\"\n", "agent.toml:1: [providers.hsm]: missing required key 'type'");
    }
    SECTION("unknown provider type")
    {
        refused("[providers.hsm]\ntype = \"vault\"\n",
                "agent.toml:2: [providers.hsm] type: unknown provider type 'vault' (known: kmip, pkcs11)");
    }
    SECTION("invalid provider name")
    {
        refused("[providers.HSM]\ntype = \"pkcs11\"\n",
                "agent.toml:1: [providers.HSM]: invalid provider name 'HSM': it must be 1-32 characters from a-z 0-9 "
                "_ -, starting with a letter or digit");
    }
    SECTION("provider is not a table")
    {
        refused("providers = 3\n", "agent.toml:1: 'providers' must be a table ([providers])");
    }
    SECTION("pkcs11: missing module")
    {
        refused("[providers.hsm]\ntype = \"pkcs11\"\ntoken_label = \"t\"\npin_file = \"/p\"\n",
                "agent.toml:1: [providers.hsm]: missing required key 'module'");
    }
    SECTION("pkcs11: relative module path")
    {
        refused("[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"libsofthsm2.so\"\n",
                "agent.toml:3: [providers.hsm] module: must be an absolute path (starting with '/')");
    }
    SECTION("pkcs11: token label too long")
    {
        refused(
            "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"" + std::string(33, 't') + "\"\n",
            "agent.toml:4: [providers.hsm] token_label: a PKCS#11 token label has at most 32 bytes");
    }
    SECTION("pkcs11: no PIN source")
    {
        refused("[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\n",
                "agent.toml:1: [providers.hsm]: missing PIN source: set pin_file (a root-only file) or "
                "pin_credential (a systemd credential name)");
    }
    SECTION("pkcs11: both PIN sources")
    {
        refused(kProvider + "pin_credential = \"hsm-pin\"\n",
                "agent.toml:6: [providers.hsm] pin_credential: set either pin_file or pin_credential, not both");
    }
    SECTION("pkcs11: bad credential name")
    {
        refused(
            "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_credential = "
            "\"../pin\"\n",
            "agent.toml:5: [providers.hsm] pin_credential: a credential name has 1-64 characters from A-Z a-z "
            "0-9 . _ -");
    }
    SECTION("pkcs11: bad iv_source")
    {
        refused(kProvider + "iv_source = \"random\"\n",
                R"(agent.toml:6: [providers.hsm] iv_source: must be "host" or "hsm" (not "random"))");
    }
    SECTION("pkcs11: allow_extractable_keys not a boolean")
    {
        refused(kProvider + "allow_extractable_keys = \"yes\"\n",
                "agent.toml:6: [providers.hsm] allow_extractable_keys: expected a boolean (true or false), found a "
                "string");
    }
    SECTION("empty string")
    {
        refused("[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"\"\n",
                "agent.toml:4: [providers.hsm] token_label: must not be empty");
    }
}

TEST_CASE("config: a missing file is refused", "[config]")
{
    try {
        (void)diskcrypt::load_config("/nonexistent/agent.toml");
        FAIL("accepted");
    } catch (const Error& e) {
        CHECK(e.code() == Errc::config);
        CHECK(std::string(e.what()) == "cannot read configuration file /nonexistent/agent.toml");
    }
}
