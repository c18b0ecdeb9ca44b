// `diskcrypt format` end to end: the agent and the CLI run as processes,
// the HSM is a real SoftHSM2 token on tmpfs, the disk is real LUKS2 (checked
// with the stock cryptsetup tool and libcryptsetup). No device-mapper needed.
#include <libcryptsetup.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/token.hpp"
#include "agent/disk_lock.hpp"
#include "agent/encoding.hpp"
#include "agent/error.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ops/verify.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::SecureBuffer;
using diskcrypt::test::Result;
using diskcrypt::test::run;
using diskcrypt::test::run_ok;
using nlohmann::json;

namespace {

constexpr std::uint64_t kMiB = 1024ULL * 1024;
const std::string kKeyId = "disk-key-01";

void make_image(const std::string& path, std::uint64_t size)
{
    diskcrypt::test::write_file(path, "", 0600);
    std::filesystem::resize_file(path, size);
}

// A test's world: a tmpfs folder, a SoftHSM2 token with one AES-256 key made
// by pkcs11-tool (as an operator would), a configuration, and the agent.
class World {
public:
    explicit World(const std::string& agent_extra = "", const std::string& provider_extra = "",
                   const std::string& provider_override = "")
    {
        // Let unprivileged test callers reach the socket and the CLI copy.
        REQUIRE(chmod(dir.path().c_str(), 0711) == 0);
        hsm.create_key({.id = kKeyId, .label = "disk key"});
        write_config(agent_extra,
                     provider_override.empty() ? hsm.provider_toml("hsm", provider_extra) : provider_override);
    }
    World(const World&) = delete;
    World& operator=(const World&) = delete;
    World(World&&) = delete;
    World& operator=(World&&) = delete;
    ~World() = default;

    void write_config(const std::string& agent_extra, const std::string& providers) const
    {
        const std::string policy =
            diskcrypt::test::write_tests_policy(dir / "policy.toml", {"hsm:" + kKeyId, "hsm:no-such-key", "hsm:nope"});
        diskcrypt::test::write_file(config,
                                    "[agent]\nsocket = \"" + socket + "\"\ndefault_key = \"hsm:" + kKeyId +
                                        "\"\nlock_dir = \"" + (dir / "lock") + "\"\n" + policy + agent_extra + "\n" +
                                        providers,
                                    0600);
    }

    void start() { agent = diskcrypt::test::start_agent({"--config", config, "--log-level", "debug"}, socket, log); }

    // Runs the CLI with --socket and the identity options a test leaves out
    // (diskcrypt::test::with_identity); records its output for the secret scan.
    Result cli(std::vector<std::string> args)
    {
        Result r = diskcrypt::test::run_cli(socket, diskcrypt::test::with_identity(std::move(args), "hsm:" + kKeyId));
        outputs.push_back(r.out);
        outputs.push_back(r.err);
        return r;
    }

    Result cli_ok(const std::vector<std::string>& args)
    {
        Result r = cli(args);
        INFO("stdout: " << r.out << "\nstderr: " << r.err << "\nagent log:\n" << diskcrypt::test::read_file(log));
        REQUIRE(r.status == 0);
        return r;
    }

    // The CLI, run as another user (a copy of the binary inside the 0711 folder).
    Result cli_as(const std::string& uid, const std::string& gid, std::vector<std::string> args)
    {
        const std::string copy = dir / "diskcrypt";
        if (access(copy.c_str(), X_OK) != 0) {
            std::filesystem::copy_file(DISKCRYPT_CLI_BIN, copy);
            REQUIRE(chmod(copy.c_str(), 0755) == 0);
        }
        args = diskcrypt::test::with_identity(std::move(args), "hsm:" + kKeyId);
        args.insert(args.begin(),
                    {"setpriv", "--reuid=" + uid, "--regid=" + gid, "--clear-groups", copy, "--socket", socket});
        return run(args);
    }

    diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm{dir};
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string log = dir / "agent.log";
    std::unique_ptr<diskcrypt::test::Background> agent;
    std::vector<std::string> outputs;
};

// Unwraps the disk's secret through the test's own view of the HSM (the
// agent's configuration, loaded in this process) and returns it.
SecureBuffer unwrap_here(const World& w, const std::string& image, const std::string& disk_id)
{
    const diskcrypt::AgentConfig cfg = diskcrypt::load_config(w.config);
    const diskcrypt::CryptDevice cd = diskcrypt::open_luks2(image);
    const diskcrypt::DiskHeader h = diskcrypt::read_header(cd.get(), image);
    return diskcrypt::unwrap_secret(cfg, h, disk_id);
}

std::string as_string(const SecureBuffer& b) { return {b.chars(), b.size()}; }

std::string upper(std::string s)
{
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    return s;
}

// The text forms a leaked key would take.
std::vector<std::string> text_forms(const SecureBuffer& b)
{
    const std::string hex = diskcrypt::hex_encode(b.span());
    return {hex, upper(hex), diskcrypt::base64_encode(b.span())};
}

}  // namespace

TEST_CASE("e2e: format a file through agent and CLI, the keyslot opens with the unwrapped secret", "[e2e]")
{
    World w;
    w.start();
    const std::string img = w.dir / "disk-1.img";
    make_image(img, 64 * kMiB);

    const auto t0 = std::chrono::steady_clock::now();
    const Result f = w.cli_ok({"format", img, "--disk-id", "disk-1", "--type", "network-ssd", "--key", "hsm:" + kKeyId,
                               "--service-account", "sa-tests"});
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    WARN("format of a 64 MiB file through agent and CLI took " << ms << " ms");
    CHECK(ms < 3000);
    CHECK_THAT(f.out, Contains("Formatted " + img + " as diskcrypt disk disk-1 (network-ssd)"));
    CHECK_THAT(f.out, Contains("overhead        1048576 bytes (1.0 MiB)"));
    CHECK_THAT(f.out, Contains("usable size     66060288 bytes (63.0 MiB)"));
    CHECK_THAT(f.out, Contains("key             hsm:disk-key-01 version 1 (pkcs11)"));

    // The stock tool sees LUKS2, the subsystem, the geometry and our token.
    const Result dump = run_ok({"cryptsetup", "luksDump", img});
    w.outputs.push_back(dump.out);
    CHECK_THAT(dump.out, Contains("Version:       \t2"));
    CHECK_THAT(dump.out, Contains("Subsystem:     \tdiskcrypt"));
    CHECK_THAT(dump.out, Contains("Metadata area: \t16384 [bytes]"));
    CHECK_THAT(dump.out, Contains("Keyslots area: \t1015808 [bytes]"));
    CHECK_THAT(dump.out, Contains("offset: 1048576 [bytes]"));
    CHECK_THAT(dump.out, Contains("cipher: aes-xts-plain64"));
    CHECK_THAT(dump.out, Contains("sector: 512 [bytes]"));
    CHECK_THAT(dump.out, Contains("Key:        512 bits"));
    CHECK_THAT(dump.out, Contains("PBKDF:      pbkdf2"));
    CHECK_THAT(dump.out, Contains("Iterations: 1000"));
    CHECK_THAT(dump.out, Contains("0: diskcrypt-kms\n\tKeyslot:    0"));

    // The token, exported by the stock tool, passes the strict decoder.
    const Result exported = run_ok({"cryptsetup", "token", "export", "--token-id", "0", img});
    const diskcrypt::Token t = diskcrypt::decode_token(exported.out);
    CHECK(t.disk_id == "disk-1");
    CHECK(t.lineage_id == "disk-1");
    CHECK(t.disk_type == "network-ssd");
    CHECK(t.service_account == std::optional<std::string>("sa-tests"));
    CHECK(t.key.spec() == "hsm:disk-key-01");
    CHECK(t.key.version == "1");
    CHECK(t.provider_type == "pkcs11");

    // The test unwraps through the HSM itself; the keyslot yields a 64-byte volume key.
    const SecureBuffer secret = unwrap_here(w, img, "disk-1");
    REQUIRE(secret.size() == 32);
    SecureBuffer vk(64);
    {
        const diskcrypt::CryptDevice cd = diskcrypt::open_luks2(img);
        std::size_t vk_size = vk.size();
        REQUIRE(crypt_volume_key_get(cd.get(), 0, vk.chars(), &vk_size, secret.chars(), secret.size()) == 0);
        CHECK(vk_size == 64);
        CHECK(crypt_get_volume_key_size(cd.get()) == 64);
    }
    // And stock cryptsetup opens the keyslot with it (check only; stdin, no file).
    run_ok({"cryptsetup", "open", "--test-passphrase", "--key-file", "-", img}, {}, as_string(secret));

    // verify through agent and CLI, in both output forms.
    const Result v = w.cli_ok({"verify", img, "--disk-id", "disk-1"});
    CHECK_THAT(v.out, Contains("Disk disk-1 on " + img + " opens on this host"));
    const Result vj = w.cli_ok({"--json", "verify", img, "--disk-id", "disk-1"});
    CHECK(json::parse(vj.out).at("volume_key_bits") == 512);

    // The key bytes (hex, HEX, base64) appear in no log and no output, and
    // their raw bytes in no file but the HSM's token store.
    REQUIRE(w.agent->stop() == 0);
    std::vector<std::string> needles = text_forms(secret);
    for (const auto& n : text_forms(vk)) {
        needles.push_back(n);
    }
    std::vector<std::string> texts = w.outputs;
    texts.push_back(diskcrypt::test::read_file(w.log));
    CHECK_THAT(texts.back(), Contains("format done: disk=disk-1"));
    for (const auto& text : texts) {
        for (const auto& n : needles) {
            CHECK_FALSE(diskcrypt::test::contains(text, n));
        }
        CHECK_FALSE(diskcrypt::test::contains(text, w.hsm.pin()));
        CHECK_FALSE(diskcrypt::test::contains(text, diskcrypt::base64_encode(t.wrapped.ciphertext)));
    }
    std::vector<std::string> raw = needles;
    raw.push_back(as_string(secret));
    raw.push_back(as_string(vk));
    std::size_t scanned = 0;
    for (const auto& file : diskcrypt::test::list_files(w.dir.path())) {
        if (file.rfind(w.hsm.token_dir(), 0) == 0) {
            continue;
        }
        const std::string data = diskcrypt::test::read_file(file);
        for (const auto& n : raw) {
            INFO(file);
            CHECK_FALSE(diskcrypt::test::contains(data, n));
        }
        ++scanned;
    }
    CHECK(scanned >= 5);  // the image, config, PIN, log, SoftHSM config at least
}

TEST_CASE("e2e: --json output, sector sizes by type and override", "[e2e]")
{
    World w;
    w.start();
    struct Case {
        std::string type;
        std::vector<std::string> extra;
        unsigned sector;
    };
    const std::vector<Case> cases = {
        {"network-hdd", {}, 512},
        {"network-ssd-nonreplicated", {}, 4096},
        {"network-ssd-io-m3", {}, 4096},
        {"network-ssd-io-m3", {"--sector-size", "512"}, 512},
    };
    int i = 0;
    for (const auto& c : cases) {
        const std::string img = w.dir / ("disk-" + std::to_string(i) + ".img");
        make_image(img, 32 * kMiB);
        std::vector<std::string> args = {"--json", "format", img,         "--disk-id", "disk-" + std::to_string(i),
                                         "--type", c.type,   "--lineage", "snap-7"};
        args.insert(args.end(), c.extra.begin(), c.extra.end());
        const json r = json::parse(w.cli_ok(args).out);
        INFO(r.dump());
        CHECK(r.at("type") == c.type);
        CHECK(r.at("sector_size") == c.sector);
        CHECK(r.at("device_size") == 32 * kMiB);
        CHECK(r.at("data_offset") == kMiB);
        CHECK(r.at("overhead") == kMiB);
        CHECK(r.at("usable_size") == 31 * kMiB);
        CHECK(r.at("keyslot") == 0);
        CHECK(r.at("lineage") == "snap-7");
        CHECK(r.at("key").at("id") == kKeyId);  // the configured default key
        CHECK(r.at("service_account") == "sa-tests");
        CHECK(r.at("user") == "provisioner");
        CHECK(r.at("policy_revision").get<std::string>().starts_with("sha256:"));
        CHECK(r.at("destroyed") == json::array());
        const Result uuid = run_ok({"cryptsetup", "luksUUID", img});
        CHECK(uuid.out == r.at("luks_uuid").get<std::string>() + "\n");
        CHECK_THAT(run_ok({"cryptsetup", "luksDump", img}).out,
                   Contains("sector: " + std::to_string(c.sector) + " [bytes]"));
        ++i;
    }
}

TEST_CASE("e2e: a token copied into another disk's header does not unwrap for that disk", "[e2e]")
{
    World w;
    w.start();
    const std::string a = w.dir / "a.img";
    const std::string b = w.dir / "b.img";
    make_image(a, 16 * kMiB);
    make_image(b, 16 * kMiB);
    w.cli_ok({"format", a, "--disk-id", "disk-a", "--type", "network-ssd"});
    w.cli_ok({"format", b, "--disk-id", "disk-b", "--type", "network-ssd"});
    const std::string token_a = run_ok({"cryptsetup", "token", "export", "--token-id", "0", a}).out;

    // A whole header on the wrong device: refused by name, before the KMS.
    Result r = w.cli({"verify", a, "--disk-id", "disk-b"});
    CHECK(r.status == 11);
    CHECK_THAT(r.err, Contains("this header belongs to disk disk-a, not disk-b"));

    // A's token copied into B's header as it is.
    run_ok({"cryptsetup", "token", "remove", "--token-id", "0", b});
    run_ok({"cryptsetup", "token", "import", "--json-file", "-", b}, {}, token_a);
    r = w.cli({"verify", b, "--disk-id", "disk-b"});
    CHECK(r.status == 11);
    CHECK_THAT(r.err, Contains("this header belongs to disk disk-a, not disk-b"));

    // The same token with its disk id edited to B: the KMS refuses the tag.
    json forged = json::parse(token_a);
    forged["disk"]["id"] = "disk-b";
    run_ok({"cryptsetup", "token", "remove", "--token-id", "0", b});
    run_ok({"cryptsetup", "token", "import", "--json-file", "-", b}, {}, forged.dump());
    r = w.cli({"--json", "verify", b, "--disk-id", "disk-b"});
    CHECK(r.status == 11);
    CHECK_THAT(r.err, Contains("refused to unwrap the secret (CKR_GENERAL_ERROR)"));
    CHECK(json::parse(r.out).at("error").at("code") == "binding");
    try {
        (void)unwrap_here(w, b, "disk-b");
        FAIL("unwrapped a forged token");
    } catch (const diskcrypt::Error& e) {
        CHECK(e.code() == diskcrypt::Errc::binding);
    }

    // Even A's genuine secret does not open B's keyslot.
    const SecureBuffer secret_a = unwrap_here(w, a, "disk-a");
    const diskcrypt::CryptDevice cd = diskcrypt::open_luks2(b);
    CHECK(crypt_activate_by_passphrase(cd.get(), nullptr, 0, secret_a.chars(), secret_a.size(), 0) == -EPERM);
}

TEST_CASE("e2e: a device holding a filesystem or a LUKS header is refused unless --force", "[e2e]")
{
    World w;
    w.start();
    const std::string img = w.dir / "used.img";
    make_image(img, 16 * kMiB);
    run_ok({"mkfs.ext4", "-q", "-F", "-L", "guestdata", img});

    Result r = w.cli({"format", img, "--disk-id", "d1", "--type", "network-ssd"});
    CHECK(r.status == 6);
    CHECK_THAT(r.err, Contains("device " + img +
                               " is not empty: it holds ext4 filesystem at offset 1080 (LABEL "
                               "guestdata, UUID "));
    CHECK_THAT(r.err, Contains("re-run with --force if that is intended"));
    CHECK_THAT(run_ok({"blkid", "-p", img}).out, Contains("TYPE=\"ext4\""));

    // A failure after the probe (here: no such key) leaves the device untouched, even with --force.
    r = w.cli({"format", img, "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:no-such-key", "--force"});
    CHECK(r.status == 10);
    CHECK_THAT(run_ok({"blkid", "-p", img}).out, Contains("TYPE=\"ext4\""));

    r = w.cli_ok({"format", img, "--disk-id", "d1", "--type", "network-ssd", "--force"});
    CHECK_THAT(r.out, Contains("destroyed       ext4 filesystem at offset 1080 (LABEL guestdata, UUID "));
    const std::string probe = run_ok({"blkid", "-p", img}).out;
    CHECK_THAT(probe, Contains("TYPE=\"crypto_LUKS\""));
    CHECK_FALSE(diskcrypt::test::contains(probe, "ext4"));
    CHECK_THAT(diskcrypt::test::read_file(w.log), Contains("--force destroys ext4 filesystem"));

    // Our own header is refused too, and so is another LUKS2 volume.
    r = w.cli({"format", img, "--disk-id", "d2", "--type", "network-ssd"});
    CHECK(r.status == 6);
    CHECK_THAT(r.err, Contains("crypto_LUKS encrypted volume at offset 0 (SUBSYSTEM diskcrypt"));
    const std::string luks = w.dir / "luks.img";
    make_image(luks, 16 * kMiB);
    run_ok({"cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
            "--pbkdf-force-iterations", "1000", "--key-file", "-", luks},
           {}, "not-a-real-passphrase");
    r = w.cli({"format", luks, "--disk-id", "d3", "--type", "network-ssd"});
    CHECK(r.status == 6);
    CHECK_THAT(r.err, Contains("crypto_LUKS encrypted volume at offset 0"));
    r = w.cli({"verify", luks, "--disk-id", "d3"});
    CHECK(r.status == 7);
    CHECK_THAT(r.err, Contains("that is not a diskcrypt disk (subsystem '')"));
}

TEST_CASE("e2e: format and verify a block device (loop)", "[e2e]")
{
    World w;
    w.start();
    const std::string img = w.dir / "loop.img";
    make_image(img, 32 * kMiB);
    const Result l = run({"losetup", "--find", "--show", img});
    if (l.status != 0) {
        // The host tests run as root on a machine with loop devices: no silent skip.
        FAIL("losetup failed (" << l.err << "); this test needs root and a loop device");
    }
    const std::string dev = l.out.substr(0, l.out.find('\n'));
    struct Detach {
        std::string dev;
        Detach(const Detach&) = delete;
        Detach& operator=(const Detach&) = delete;
        Detach(Detach&&) = delete;
        Detach& operator=(Detach&&) = delete;
        explicit Detach(std::string d) : dev(std::move(d)) {}
        ~Detach() { (void)run({"losetup", "--detach", dev}); }
    } detach(dev);
    const json r = json::parse(
        w.cli_ok({"--json", "format", dev, "--disk-id", "disk-blk", "--type", "network-ssd-nonreplicated"}).out);
    CHECK(r.at("device") == dev);
    CHECK(r.at("device_size") == 32 * kMiB);
    CHECK(r.at("usable_size") == 31 * kMiB);
    CHECK(r.at("sector_size") == 4096);
    CHECK_THAT(run_ok({"cryptsetup", "luksDump", dev}).out, Contains("Subsystem:     \tdiskcrypt"));
    w.cli_ok({"verify", dev, "--disk-id", "disk-blk"});
    const SecureBuffer secret = unwrap_here(w, dev, "disk-blk");
    run_ok({"cryptsetup", "open", "--test-passphrase", "--key-file", "-", dev}, {}, as_string(secret));
}

TEST_CASE("e2e: errors a user can hit, each with its exit code and message", "[e2e]")
{
    World w;
    w.start();
    const std::string img = w.dir / "d.img";
    make_image(img, 16 * kMiB);
    struct Case {
        std::string name;
        std::vector<std::string> args;
        int status;
        std::string text;
    };
    const std::string small = w.dir / "small.img";
    make_image(small, kMiB);
    const std::string odd = w.dir / "odd.img";
    make_image(odd, 16 * kMiB + 512);
    const std::string zero = w.dir / "zero.img";
    make_image(zero, 16 * kMiB);
    const std::vector<Case> cases = {
        {"missing device",
         {"format", w.dir / "nope.img", "--disk-id", "d", "--type", "network-ssd"},
         5,
         "cannot open device " + (w.dir / "nope.img") + ": No such file or directory"},
        {"too small",
         {"format", small, "--disk-id", "d", "--type", "network-ssd"},
         5,
         "is 1048576 bytes; format needs at least 2097152"},
        {"not a multiple of the sector size",
         {"format", odd, "--disk-id", "d", "--type", "network-ssd-io-m3"},
         5,
         "is not a multiple of the 4096-byte sector size"},
        {"a directory",
         {"format", w.dir.path(), "--disk-id", "d", "--type", "network-ssd"},
         5,
         "is neither a block device nor a regular file"},
        {"key missing on the HSM",
         {"format", img, "--disk-id", "d", "--type", "network-ssd", "--key", "hsm:nope"},
         10,
         "no secret key with CKA_ID 'nope' (hex 6e6f7065) on token 'diskcrypt'"},
        {"unconfigured provider",
         {"format", img, "--disk-id", "d", "--type", "network-ssd", "--key", "kms:k1"},
         2,
         "key kms:k1 names provider 'kms', which this agent does not configure (configured: hsm)"},
        {"local disk type",
         {"format", img, "--disk-id", "d", "--type", "local-ssd"},
         2,
         "local disks cannot be encrypted"},
        {"bad disk id", {"format", img, "--disk-id", "a/b", "--type", "network-ssd"}, 2, "invalid disk id 'a/b'"},
        {"verify: no LUKS header", {"verify", zero, "--disk-id", "d"}, 7, "holds no valid LUKS2 header"},
        {"verify: missing device", {"verify", w.dir / "nope.img", "--disk-id", "d"}, 5, "cannot open device"},
    };
    for (const auto& c : cases) {
        SECTION(c.name)
        {
            const Result r = w.cli(c.args);
            INFO("stderr: " << r.err);
            CHECK(r.status == c.status);
            CHECK_THAT(r.err, Contains("diskcrypt: error: ") && Contains(c.text));
        }
    }
    SECTION("the agent is not running")
    {
        const Result r = run({DISKCRYPT_CLI_BIN, "--socket", w.dir / "none.sock", "status"});
        CHECK(r.status == 3);
        CHECK_THAT(r.err, Contains("cannot reach diskcrypt-agent at " + (w.dir / "none.sock")));
    }
    SECTION("a caller that is not root cannot even connect to a root-only socket")
    {
        const Result r = w.cli_as("65534", "65534", {"format", img, "--disk-id", "d", "--type", "network-ssd"});
        CHECK(r.status == 4);
        CHECK_THAT(r.err, Contains("cannot connect to the agent at " + w.socket + ": Permission denied"));
    }
    SECTION("corrupt and missing tokens")
    {
        w.cli_ok({"format", img, "--disk-id", "d", "--type", "network-ssd"});
        json t = json::parse(run_ok({"cryptsetup", "token", "export", "--token-id", "0", img}).out);
        t["wrap"]["iv"] = "not base64!";
        run_ok({"cryptsetup", "token", "remove", "--token-id", "0", img});
        Result r = w.cli({"verify", img, "--disk-id", "d"});
        CHECK(r.status == 7);
        CHECK_THAT(r.err, Contains("has no diskcrypt-kms token: its format did not complete or the token was removed"));
        run_ok({"cryptsetup", "token", "import", "--json-file", "-", img}, {}, t.dump());
        r = w.cli({"verify", img, "--disk-id", "d"});
        CHECK(r.status == 7);
        CHECK_THAT(r.err, Contains("token 0: diskcrypt-kms token: field 'wrap.iv' is not canonical base64"));
    }
}

TEST_CASE("e2e: KMS failures through the agent leave the device untouched", "[e2e]")
{
    SECTION("wrong PIN")
    {
        World w;
        diskcrypt::test::write_file(w.hsm.pin_file(), "wrong-pin\n", 0600);
        w.start();
        const std::string img = w.dir / "d.img";
        make_image(img, 16 * kMiB);
        const Result r = w.cli({"--json", "format", img, "--disk-id", "d", "--type", "network-ssd"});
        CHECK(r.status == 9);
        CHECK_THAT(r.err, Contains("token 'diskcrypt' rejected the PIN (CKR_PIN_INCORRECT)"));
        CHECK(json::parse(r.out).at("error").at("code") == "kms-auth");
        CHECK(diskcrypt::test::read_file(img) == std::string(16 * kMiB, '\0'));
        CHECK_FALSE(diskcrypt::test::contains(diskcrypt::test::read_file(w.log), "wrong-pin"));
    }
    SECTION("module missing")
    {
        World w;
        w.write_config("",
                       "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/usr/lib/nonexistent/libhsm.so\"\n"
                       "token_label = \"diskcrypt\"\npin_file = \"" +
                           w.hsm.pin_file() + "\"\n");
        w.start();
        const std::string img = w.dir / "d.img";
        make_image(img, 16 * kMiB);
        const Result r = w.cli({"format", img, "--disk-id", "d", "--type", "network-ssd"});
        CHECK(r.status == 8);
        CHECK_THAT(r.err, Contains("cannot load PKCS#11 module /usr/lib/nonexistent/libhsm.so"));
        CHECK(diskcrypt::test::read_file(img) == std::string(16 * kMiB, '\0'));
    }
    SECTION("token missing")
    {
        World w("", "",
                std::string("[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"") + diskcrypt::test::kSoftHsmModule +
                    "\"\ntoken_label = \"gone\"\npin_file = \"/etc/x\"\n");
        w.start();
        const std::string img = w.dir / "d.img";
        make_image(img, 16 * kMiB);
        const Result r = w.cli({"format", img, "--disk-id", "d", "--type", "network-ssd"});
        CHECK(r.status == 8);
        CHECK_THAT(r.err, Contains("no token labelled 'gone'"));
    }
}

TEST_CASE("e2e: the agent process: status, peer credentials, config errors, one per socket, SIGTERM", "[e2e]")
{
    World w("status_group = \"nogroup\"\n");
    w.start();

    // Status: the agent reports itself non-dumpable (PR_SET_DUMPABLE 0).
    const json s = json::parse(w.cli_ok({"--json", "status"}).out);
    CHECK(s.at("dumpable") == false);
    CHECK(s.at("pid") == w.agent->pid());
    CHECK(s.at("protocol") == 1);
    CHECK(s.at("default_key") == "hsm:disk-key-01");

    // The socket is 0660 root:nogroup, and the check matches the mode.
    struct stat st {};
    REQUIRE(stat(w.socket.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777U) == 0660U);
    CHECK(st.st_gid == 65534U);
    CHECK(w.cli_as("65534", "65534", {"status"}).status == 0);
    Result r = w.cli_as("65534", "65534", {"format", w.dir / "x.img", "--disk-id", "d", "--type", "network-ssd"});
    CHECK(r.status == 4);
    CHECK_THAT(r.err, Contains("op 'format' is not allowed for uid 65534"));
    r = w.cli_as("65534", "100", {"status"});
    CHECK(r.status == 4);

    // Raw protocol over the socket: garbage and oversize requests.
    {
        const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::copy(w.socket.begin(), w.socket.end(), &addr.sun_path[0]);
        REQUIRE(connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);  // NOLINT
        std::vector<char> buf(70000);
        auto exchange = [&](const std::string& req) {
            REQUIRE(send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
            const ssize_t n = recv(fd, buf.data(), buf.size(), 0);
            REQUIRE(n > 0);
            return diskcrypt::proto::parse_response(std::string_view(buf.data(), static_cast<std::size_t>(n)));
        };
        auto resp = exchange("hello");
        CHECK_FALSE(resp.ok);
        CHECK(resp.code == diskcrypt::Errc::protocol);
        resp = exchange(std::string(70000, ' '));
        CHECK(resp.message == "request is larger than 65536 bytes");
        resp = exchange(R"({"protocol":1,"op":"status"})");  // the same connection still works
        CHECK(resp.ok);
        close(fd);
    }

    // A second agent on the same socket is refused.
    Result second = run({DISKCRYPT_AGENT_BIN, "--config", w.config});
    CHECK(second.status == 12);
    CHECK_THAT(second.err, Contains("another agent is already listening on " + w.socket));

    // SIGTERM: clean exit, socket removed.
    CHECK(w.agent->stop() == 0);
    CHECK(access(w.socket.c_str(), F_OK) != 0);
    CHECK_THAT(diskcrypt::test::read_file(w.log), Contains("stopping"));
}

TEST_CASE("e2e: an invalid configuration is refused at start with line and reason", "[e2e]")
{
    diskcrypt::test::TempDir dir;
    const std::string cfg = dir / "agent.toml";
    diskcrypt::test::write_file(cfg, "[agent]\nsocket = \"" + (dir / "a.sock") +
                                         "\"\n\n[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = "
                                         "\"t\"\npin_file = \"/p\"\npin = \"1234\"\n");
    Result r = run({DISKCRYPT_AGENT_BIN, "--config", cfg});
    CHECK(r.status == 12);
    CHECK_THAT(r.err, Contains(cfg + ":9: [providers.hsm]: unknown key 'pin'"));
    CHECK(access((dir / "a.sock").c_str(), F_OK) != 0);
    r = run({DISKCRYPT_AGENT_BIN, "--config", cfg, "--check-config"});
    CHECK(r.status == 12);
    r = run({DISKCRYPT_AGENT_BIN, "--config", dir / "missing.toml"});
    CHECK(r.status == 12);
    CHECK_THAT(r.err, Contains("cannot read configuration file"));
    r = run({DISKCRYPT_AGENT_BIN, "--bogus"});
    CHECK(r.status == 2);
}

TEST_CASE("e2e: a format that fails while writing the header leaves no header that looks valid", "[e2e]")
{
    World w;
    w.start();
    // A 512 KiB filesystem under a 16 MiB sparse image: the header write runs out of space half-way.
    const std::string mnt = w.dir / "small-fs";
    REQUIRE(mkdir(mnt.c_str(), 0700) == 0);
    const Result m = run({"mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", mnt});
    if (m.status != 0) {
        FAIL("cannot mount a small tmpfs (" << m.err << "); this test needs root");
    }
    struct Unmount {
        std::string dir;
        explicit Unmount(std::string d) : dir(std::move(d)) {}
        Unmount(const Unmount&) = delete;
        Unmount& operator=(const Unmount&) = delete;
        Unmount(Unmount&&) = delete;
        Unmount& operator=(Unmount&&) = delete;
        ~Unmount() { (void)run({"umount", dir}); }
    } unmount(mnt);
    const std::string img = mnt + "/d.img";
    make_image(img, 16 * kMiB);

    const Result r = w.cli({"format", img, "--disk-id", "d", "--type", "network-ssd"});
    INFO("stderr: " << r.err);
    CHECK(r.status == 5);
    CHECK_THAT(r.err, Contains("writing the LUKS2 header to " + img + " failed"));
    CHECK_THAT(r.err, Contains("the header area of " + img + " was zeroed: no partial header remains"));
    CHECK(run({"cryptsetup", "isLuks", img}).status != 0);
    CHECK(run({"blkid", "-p", img}).status == 2);  // no signature at all
}

// ---------------------------------------------------------------------------
// Hostile storage: headers edited as anyone who can write the volume can.

namespace {

// A World whose agent writes audit events to a file, with one formatted disk.
struct HostileWorld {
    HostileWorld()
    {
        w.write_config("[audit]\nfile = \"" + audit + "\"\njournal = \"never\"\n", w.hsm.provider_toml());
        w.start();
        make_image(img, 16 * kMiB);
        w.cli_ok({"format", img, "--disk-id", "disk-h", "--type", "network-ssd-io-m3"});
    }

    [[nodiscard]] json metadata() const { return json::parse(diskcrypt::test::read_luks2(img).json); }

    void set_metadata(const std::string& text) const
    {
        diskcrypt::test::Luks2Header h = diskcrypt::test::read_luks2(img);
        h.json = text;
        diskcrypt::test::write_luks2(img, h);
    }

    [[nodiscard]] int unwrap_events() const
    {
        int n = 0;
        std::istringstream in(diskcrypt::test::read_file(audit));
        std::string line;
        while (std::getline(in, line)) {
            n += json::parse(line).at("event") == "unwrap" ? 1 : 0;
        }
        return n;
    }

    // verify answers `status` quickly with `text` in its message, asks the KMS
    // nothing, and the agent keeps serving.
    void refused(int status, const std::string& text)
    {
        const int before = unwrap_events();
        const auto t0 = std::chrono::steady_clock::now();
        const Result r = w.cli({"verify", img, "--disk-id", "disk-h"});
        const auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
        INFO("stderr: " << r.err << "\nagent log:\n" << diskcrypt::test::read_file(w.log));
        CHECK(r.status == status);
        CHECK_THAT(r.err, Contains(text));
        CHECK(ms < 5000);
        if (status == 7) {
            CHECK(unwrap_events() == before);
        }
        CHECK(w.cli({"status"}).status == 0);
    }

    World w;
    std::string audit = w.dir / "audit.jsonl";
    std::string img = w.dir / "hostile.img";
};

}  // namespace

TEST_CASE("e2e hostile header: what format writes is what read_header accepts", "[e2e][hostile]")
{
    HostileWorld h;
    const json m = h.metadata();
    CHECK(m.at("keyslots").size() == 1);
    CHECK(m.at("keyslots").at("0").at("kdf").at("iterations") == diskcrypt::kPbkdfIterations);
    CHECK(m.at("digests").at("0").at("iterations") == diskcrypt::kDigestIterations);
    CHECK(m.at("keyslots").at("0").at("area").at("size") == std::to_string(diskcrypt::kKeyslotAreaBytes));
    CHECK(diskcrypt::check_layout(m.dump(), "img") == 0);
    const json token = json::parse(run_ok({"cryptsetup", "token", "export", "--token-id", "0", h.img}).out);
    CHECK(token.at("wrap").at("ad_version") == 2);
    h.w.cli_ok({"verify", h.img, "--disk-id", "disk-h"});
    CHECK(h.unwrap_events() >= 1);
}

TEST_CASE("e2e hostile header: the header does not set the price of opening it", "[e2e][hostile]")
{
    HostileWorld h;
    const json good = h.metadata();
    struct Case {
        std::string name;
        std::function<void(json&)> edit;
        std::string text;
    };
    const std::vector<Case> cases = {
        {"PBKDF2 at 2^31 iterations", [](json& m) { m["keyslots"]["0"]["kdf"]["iterations"] = 2147483648U; },
         "field 'keyslots.0.kdf.iterations' is 2147483648, not 1000"},
        {"argon2id with 4 GiB",
         [](json& m) {
             const json salt = m["keyslots"]["0"]["kdf"]["salt"];
             m["keyslots"]["0"]["kdf"] =
                 json{{"type", "argon2id"}, {"time", 4}, {"memory", 4194304}, {"cpus", 4}, {"salt", salt}};
         },
         "field 'keyslots.0.kdf.type' is 'argon2id', not 'pbkdf2'"},
        {"PBKDF2 with another hash", [](json& m) { m["keyslots"]["0"]["kdf"]["hash"] = "sha512"; },
         "field 'keyslots.0.kdf.hash' is 'sha512', not 'sha256'"},
        {"digest at 2^31 iterations", [](json& m) { m["digests"]["0"]["iterations"] = 2147483648U; },
         "field 'digests.0.iterations' is 2147483648, not 1000"},
        {"two keyslots",
         [](json& m) {
             json second = m["keyslots"]["0"];
             second["area"]["offset"] = std::to_string(32768 + diskcrypt::kKeyslotAreaBytes);
             m["keyslots"]["1"] = second;
             m["digests"]["0"]["keyslots"] = json::array({"0", "1"});
         },
         "field 'keyslots' holds 2 keyslots; diskcrypt writes exactly one"},
        {"other AF stripes", [](json& m) { m["keyslots"]["0"]["af"]["stripes"] = 2000; },
         "field 'keyslots.0.af.stripes' is 2000, not 4000"},
        {"another keyslot cipher", [](json& m) { m["keyslots"]["0"]["area"]["encryption"] = "aes-cbc-essiv:sha256"; },
         "field 'keyslots.0.area.encryption' is 'aes-cbc-essiv:sha256', not 'aes-xts-plain64'"},
        {"a smaller keyslot area", [](json& m) { m["keyslots"]["0"]["area"]["size"] = "131072"; },
         "field 'keyslots.0.area.size' is '131072', not '258048'"},
        {"a second segment",
         [](json& m) {
             m["segments"]["0"]["size"] = "4194304";
             json second = m["segments"]["0"];
             second["offset"] = "5242880";
             second["size"] = "dynamic";
             second["iv_tweak"] = "8192";
             m["segments"]["1"] = second;
             m["digests"]["0"]["segments"] = json::array({"0", "1"});
         },
         "field 'segments' holds 2 segments; diskcrypt writes exactly one"},
        {"data elsewhere", [](json& m) { m["segments"]["0"]["offset"] = "2097152"; },
         "field 'segments.0.offset' is '2097152', not '1048576'"},
        {"an IV tweak", [](json& m) { m["segments"]["0"]["iv_tweak"] = "8"; },
         "field 'segments.0.iv_tweak' is '8', not '0'"},
        {"a requirement (reencryption)",
         [](json& m) {
             m["config"]["requirements"] = json{{"mandatory", json::array({"online-reencrypt-v9"})}};
         },
         "requirements"},
    };
    for (const auto& c : cases) {
        SECTION(c.name)
        {
            json m = good;
            c.edit(m);
            h.set_metadata(m.dump());
            h.refused(7, c.text);
        }
    }
}

TEST_CASE("e2e hostile header: bytes that are not text are escaped, the agent keeps serving", "[e2e][hostile]")
{
    HostileWorld h;
    SECTION("the segment's cipher")
    {
        std::string text = h.metadata().dump();
        const std::string cipher = R"("encryption":"aes-xts-plain64","iv_tweak")";
        const auto at = text.find(cipher);
        REQUIRE(at != std::string::npos);
        text.replace(at, cipher.size(), "\"encryption\":\"aes-xts-plain64\xff\",\"iv_tweak\"");
        h.set_metadata(text);
        h.refused(7, "field 'segments.0.encryption' is 'aes-xts-plain64\\xff', not 'aes-xts-plain64'");
    }
    SECTION("the LUKS2 subsystem (stock cryptsetup)")
    {
        run_ok({"cryptsetup", "config", "--subsystem", "\xff\x1b[2J", h.img});
        h.refused(7, "that is not a diskcrypt disk (subsystem '\\xff\\x1b[2J')");
    }
    SECTION("the token's created field (stock cryptsetup)")
    {
        json token = json::parse(run_ok({"cryptsetup", "token", "export", "--token-id", "0", h.img}).out);
        std::string text = token.dump();
        const std::string created = R"("created":")" + token.at("created").get<std::string>() + "\"";
        text.replace(text.find(created), created.size(), "\"created\":\"\xff\"");
        run_ok({"cryptsetup", "token", "import", "--token-id", "0", "--token-replace", "--json-file", "-", h.img}, {},
               text);
        h.refused(7, "field 'created': expected a UTC time as YYYY-MM-DDTHH:MM:SSZ (the header has '\\xff')");
    }
    SECTION("the LUKS2 UUID")
    {
        diskcrypt::test::Luks2Header l = diskcrypt::test::read_luks2(h.img);
        l.uuid = "../x\xff";
        diskcrypt::test::write_luks2(h.img, l);
        h.refused(7, "the LUKS2 UUID '../x\\xff' is not in the canonical form");
    }
    SECTION("a FIFO instead of a device answers at once")
    {
        const std::string fifo = h.w.dir / "fifo";
        REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
        const Result r = run({DISKCRYPT_CLI_BIN, "--socket", h.w.socket, "verify", fifo, "--disk-id", "disk-h", "--key",
                              "hsm:" + kKeyId, "--service-account", "sa-tests"},
                             {}, {}, 15);
        CHECK(r.status == 5);
        CHECK_THAT(r.err, Contains("is neither a block device nor a regular file (it is a FIFO)"));
        CHECK(h.w.cli({"status"}).status == 0);
    }
}

TEST_CASE("e2e hostile header: the AD binds the mapping parameters (version 2)", "[e2e][hostile][ad]")
{
    HostileWorld h;
    const std::string bound = "the header's mapping parameters or disk type do not match what was wrapped";
    SECTION("another sector size")
    {
        json m = h.metadata();
        m["segments"]["0"]["sector_size"] = 512;
        h.set_metadata(m.dump());
        h.refused(11, bound);
    }
    SECTION("another disk type")
    {
        json token = json::parse(run_ok({"cryptsetup", "token", "export", "--token-id", "0", h.img}).out);
        token["disk"]["type"] = "network-ssd";
        run_ok({"cryptsetup", "token", "import", "--token-id", "0", "--token-replace", "--json-file", "-", h.img}, {},
               token.dump());
        h.refused(11, bound);
    }
}

TEST_CASE("e2e hostile header: a version 1 token still opens", "[e2e][hostile][ad]")
{
    HostileWorld h;
    const SecureBuffer secret = unwrap_here(h.w, h.img, "disk-h");
    // Rewrap the same secret with the version 1 AD, as format wrote it before.
    const diskcrypt::AgentConfig cfg = diskcrypt::load_config(h.w.config);
    diskcrypt::Token token =
        diskcrypt::decode_token(run_ok({"cryptsetup", "token", "export", "--token-id", "0", h.img}).out);
    token.ad_version = 1;
    token.wrapped = cfg.provider("hsm")->wrap(token.key.key_id, token.key.version, secret.span(),
                                              diskcrypt::associated_data("disk-h", token.key));
    run_ok({"cryptsetup", "token", "import", "--token-id", "0", "--token-replace", "--json-file", "-", h.img}, {},
           diskcrypt::encode_token(token));
    h.w.cli_ok({"verify", h.img, "--disk-id", "disk-h"});
    // Version 1 leaves the sector size unbound: documented, and still opens.
    json m = h.metadata();
    m["segments"]["0"]["sector_size"] = 512;
    h.set_metadata(m.dump());
    h.w.cli_ok({"verify", h.img, "--disk-id", "disk-h"});
}

TEST_CASE("e2e: format takes the disk lock like every other operation", "[e2e][lock]")
{
    World w;
    const std::string locks = w.dir / "lock";  // World's lock_dir
    w.start();
    const std::string img = w.dir / "locked.img";
    make_image(img, 16 * kMiB);
    auto held = std::make_unique<diskcrypt::FileLock>(diskcrypt::lock_disk(locks, "disk-l"));
    auto format = std::async(std::launch::async, [&] {
        return run({DISKCRYPT_CLI_BIN, "--socket", w.socket, "format", img, "--disk-id", "disk-l", "--type",
                    "network-ssd", "--service-account", "sa-tests", "--user", "provisioner"});
    });
    CHECK(format.wait_for(std::chrono::milliseconds(1500)) == std::future_status::timeout);
    held.reset();
    const Result r = format.get();
    INFO(r.err);
    CHECK(r.status == 0);
}

TEST_CASE("e2e hostile header: a token of another type never loads its plugin", "[e2e][hostile]")
{
    HostileWorld h;
    // A systemd-pkcs11 token, whose plugin this host has installed.
    run_ok({"cryptsetup", "token", "import", "--json-file", "-", h.img}, {},
           R"({"type":"systemd-pkcs11","keyslots":[],"pkcs11-uri":"pkcs11:token=x","pkcs11-key":"AAAA"})");
    // In this process, without crypt_token_external_disable(): read_header
    // itself must not make libcryptsetup load libcryptsetup-token-*.so.
    const diskcrypt::CryptDevice cd = diskcrypt::open_luks2(h.img);
    const diskcrypt::DiskHeader header = diskcrypt::read_header(cd.get(), h.img);
    CHECK(header.token.disk_id == "disk-h");
    CHECK_FALSE(diskcrypt::test::contains(diskcrypt::test::read_file("/proc/self/maps"), "libcryptsetup-token-"));
    h.w.cli_ok({"verify", h.img, "--disk-id", "disk-h"});
}
