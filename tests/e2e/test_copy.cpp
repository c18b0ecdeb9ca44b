// copy and rewrap through the agent and the CLI on the host: image files
// (copy and rewrap touch only the header and the ciphertext, so no
// device-mapper is needed here), a real SoftHSM2 token, the tests' policy.
// The guest suite (tests/attach/copy.sh) reads the data through the kernel
// target and interrupts a copy for real.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/token.hpp"
#include "agent/ops/verify.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::test::Result;
using nlohmann::json;

namespace copy_e2e {

constexpr std::uint64_t kOneMiB = 1024ULL * 1024;
const std::string kKey1 = "hsm:disk-key-01";
const std::string kKey2 = "hsm:disk-key-02";
const std::string kKeyOther = "hsm2:disk-key-09";  // Site::add_second_provider()

struct Site {
    Site()
    {
        hsm.create_key({.id = "disk-key-01", .label = "disk key 1"});
        hsm.create_key({.id = "disk-key-02", .label = "disk key 2"});
        diskcrypt::test::write_file(
            config, "[agent]\nsocket = \"" + socket + "\"\nlock_dir = \"" + (dir / "lock") + "\"\ndefault_key = \"" +
                        kKey1 + "\"\n" + diskcrypt::test::write_tests_policy(policy, {kKey1, kKey2}) +
                        "[audit]\nfile = \"" + audit + "\"\njournal = \"never\"\n" + hsm.provider_toml());
    }

    // A second provider, "hsm2": another token in the same SoftHSM2 (its own
    // label, the same PIN) with one key, kKeyOther; the configuration and the
    // policy rewritten to name both. Before start().
    void add_second_provider() const
    {
        diskcrypt::test::run_ok({"softhsm2-util", "--init-token", "--free", "--label", "diskcrypt-b", "--so-pin",
                                 "so-" + hsm.pin(), "--pin", hsm.pin()});
        std::string hex_id;
        for (const char c : std::string("disk-key-09")) {
            constexpr std::string_view kHex = "0123456789abcdef";
            hex_id += kHex[static_cast<unsigned char>(c) >> 4U];
            hex_id += kHex[static_cast<unsigned char>(c) & 0xFU];
        }
        diskcrypt::test::run_ok({"pkcs11-tool", "--module", diskcrypt::test::kSoftHsmModule, "--token-label",
                                 "diskcrypt-b", "--login", "--pin", hsm.pin(), "--keygen", "--key-type", "AES:32",
                                 "--sensitive", "--label", "disk key 9", "--id", hex_id});
        const std::string second = "[providers.hsm2]\ntype = \"pkcs11\"\nmodule = \"" +
                                   std::string(diskcrypt::test::kSoftHsmModule) +
                                   "\"\ntoken_label = \"diskcrypt-b\"\npin_file = \"" + hsm.pin_file() + "\"\n";
        diskcrypt::test::write_file(
            config, "[agent]\nsocket = \"" + socket + "\"\nlock_dir = \"" + (dir / "lock") + "\"\ndefault_key = \"" +
                        kKey1 + "\"\n" + diskcrypt::test::write_tests_policy(policy, {kKey1, kKey2, kKeyOther}) +
                        "[audit]\nfile = \"" + audit + "\"\njournal = \"never\"\n" + hsm.provider_toml() + second);
    }

    void start(const std::vector<std::string>& prefix = {})
    {
        std::filesystem::remove(socket);  // a killed agent's, or start_agent would not wait
        agent = diskcrypt::test::start_agent({"--config", config}, socket, log, prefix);
    }

    [[nodiscard]] Result cli(std::vector<std::string> args) const
    {
        return diskcrypt::test::run_cli(socket, std::move(args));
    }

    // A file of `bytes`, all zeros.
    [[nodiscard]] std::string image(const std::string& name, std::uint64_t bytes) const
    {
        std::string path = dir / name;
        diskcrypt::test::write_file(path, "");
        std::filesystem::resize_file(path, bytes);
        return path;
    }

    [[nodiscard]] std::string disk(const std::string& name, const std::string& id, std::uint64_t bytes,
                                   const std::string& key = kKey1) const
    {
        std::string path = image(name, bytes);
        const Result r = cli({"--json", "format", path, "--disk-id", id, "--type", "network-ssd", "--key", key,
                              "--service-account", "sa-tests", "--user", "provisioner"});
        INFO(r.out << r.err);
        REQUIRE(r.status == 0);
        return path;
    }

    [[nodiscard]] Result copy(const std::string& src, const std::string& id, const std::string& dst,
                              const std::string& to_id, const std::string& kind,
                              const std::vector<std::string>& extra = {}, const std::string& key = kKey1) const
    {
        std::vector<std::string> args{
            "--json",   "copy",   src,          "--disk-id", id,          "--key", key,
            "--to",     dst,      "--to-id",    to_id,       "--to-kind", kind,    "--service-account",
            "sa-tests", "--user", "provisioner"};
        args.insert(args.end(), extra.begin(), extra.end());
        return cli(args);
    }

    [[nodiscard]] Result verify(const std::string& img, const std::string& id, const std::string& key = kKey1) const
    {
        return cli({"--json", "verify", img, "--disk-id", id, "--key", key, "--service-account", "sa-tests"});
    }

    diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm{dir};
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string policy = dir / "policy.toml";
    std::string audit = dir / "audit.jsonl";
    std::string log = dir / "agent.log";
    std::unique_ptr<diskcrypt::test::Background> agent;
};

void fill_random(const std::string& path, std::uint64_t from, std::uint64_t to, unsigned seed)
{
    std::mt19937 gen(seed);
    std::vector<char> buf(to - from);
    for (auto& c : buf) {
        c = static_cast<char>(gen() & 0xFFU);
    }
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(from));
    f.write(buf.data(), static_cast<std::streamsize>(buf.size()));
}

std::vector<std::uint8_t> bytes(const std::string& path, std::uint64_t from, std::uint64_t to)
{
    const auto all = diskcrypt::test::read_bytes(path);
    REQUIRE(all.size() >= to);
    return {all.begin() + static_cast<std::ptrdiff_t>(from), all.begin() + static_cast<std::ptrdiff_t>(to)};
}

json token_of(const std::string& img)
{
    return json::parse(diskcrypt::test::run_ok({"cryptsetup", "token", "export", "--token-id", "0", img}).out);
}

void set_token(const std::string& img, const json& token)
{
    diskcrypt::test::run_ok(
        {"cryptsetup", "token", "import", "--token-id", "0", "--token-replace", "--json-file", "-", img}, {},
        token.dump());
}

// The result (or the error) after the progress lines of --json.
json out_json(const Result& r)
{
    INFO(r.out << r.err);
    std::string rest;
    std::istringstream in(r.out);
    for (std::string line; std::getline(in, line);) {
        if (!line.starts_with("{\"progress\"")) {
            rest += line + "\n";
        }
    }
    return json::parse(rest);
}

std::string message(const Result& r) { return out_json(r).at("error").at("message").get<std::string>(); }

// Whether a tracer is attached to `pid`, waiting up to 10 s.
bool wait_traced(pid_t pid)
{
    for (int i = 0; i < 1000; ++i) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/status");
        for (std::string line; std::getline(in, line);) {
            if (line.starts_with("TracerPid:") && line.find_first_of("123456789") != std::string::npos) {
                return true;
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

}  // namespace copy_e2e

using copy_e2e::kKey1;
using copy_e2e::kKey2;
using copy_e2e::kKeyOther;
using copy_e2e::kOneMiB;
using copy_e2e::out_json;
using copy_e2e::Site;

TEST_CASE(
    "e2e copy: a snapshot of a disk and a disk of the snapshot keep the ciphertext and key, each bound to its "
    "own id",
    "[e2e][copy]")
{
    Site s;
    s.start();
    const std::string disk = s.disk("disk.img", "disk-1", 8 * kOneMiB);
    copy_e2e::fill_random(disk, kOneMiB, 8 * kOneMiB, 1);

    // The snapshot.
    const std::string snap = s.image("snap.img", 8 * kOneMiB);
    Result r = s.copy(disk, "disk-1", snap, "snap-1", "snapshot");
    json j = out_json(r);
    REQUIRE(r.status == 0);
    CHECK(j.at("source").at("kind") == "disk");
    CHECK(j.at("target").at("kind") == "snapshot");
    CHECK(j.at("target").at("type") == "network-ssd");
    CHECK(j.at("key").at("id") == "disk-key-01");
    CHECK(j.at("copied_bytes") == 7 * kOneMiB);
    CHECK(j.at("resumed_from") == 0);
    CHECK(j.at("target").at("luks_uuid") != j.at("source").at("luks_uuid"));
    CHECK(copy_e2e::bytes(snap, kOneMiB, 8 * kOneMiB) == copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB));
    json t = copy_e2e::token_of(snap);
    CHECK(t.at("disk").at("id") == "snap-1");
    CHECK(t.at("disk").at("kind") == "snapshot");
    CHECK(t.at("disk").at("lineage") == "disk-1");
    CHECK(t.at("disk").at("origin") ==
          json{{"kind", "disk"}, {"id", "disk-1"}, {"luks_uuid", j.at("source").at("luks_uuid")}});
    CHECK_FALSE(t.contains("incomplete"));
    CHECK(t.at("key").at("id") == "disk-key-01");
    // Bound to its own id: it opens as snap-1 ...
    CHECK(s.verify(snap, "snap-1").status == 0);
    // ... and not as the disk, even with the token's id edited to the disk's:
    // the KMS refuses the tag.
    r = s.verify(snap, "disk-1");
    CHECK(r.status == 11);
    CHECK_THAT(copy_e2e::message(r), Contains("belongs to disk snap-1, not disk-1"));
    json forged = t;
    forged["disk"]["id"] = "disk-1";
    const std::string forged_img = s.dir / "forged.img";
    std::filesystem::copy_file(snap, forged_img);
    copy_e2e::set_token(forged_img, forged);
    r = s.verify(forged_img, "disk-1");
    CHECK(r.status == 11);
    CHECK_THAT(copy_e2e::message(r), Contains("either the disk id is wrong"));
    // The source is untouched and still opens.
    CHECK(s.verify(disk, "disk-1").status == 0);

    // A disk from the snapshot, on a larger target whose tail held old data.
    const std::string disk2 = s.image("disk2.img", 12 * kOneMiB);
    copy_e2e::fill_random(disk2, 0, 12 * kOneMiB, 2);
    r = s.copy(snap, "snap-1", disk2, "disk-2", "disk", {"--type", "network-hdd"});
    j = out_json(r);
    REQUIRE(r.status == 0);
    CHECK(j.at("source").at("kind") == "snapshot");
    CHECK(j.at("target").at("type") == "network-hdd");
    CHECK(j.at("zeroed_bytes") == 4 * kOneMiB);
    CHECK(copy_e2e::bytes(disk2, kOneMiB, 8 * kOneMiB) == copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB));
    CHECK(copy_e2e::bytes(disk2, 8 * kOneMiB, 12 * kOneMiB) == std::vector<std::uint8_t>(4 * kOneMiB, 0));
    t = copy_e2e::token_of(disk2);
    CHECK_FALSE(t.at("disk").contains("kind"));
    CHECK(t.at("disk").at("type") == "network-hdd");
    CHECK(t.at("disk").at("lineage") == "disk-1");
    CHECK(t.at("disk").at("origin").at("id") == "snap-1");
    r = s.cli({"--json", "verify", disk2, "--disk-id", "disk-2", "--type", "network-hdd", "--key", kKey1,
               "--service-account", "sa-tests"});
    CHECK(r.status == 0);
    CHECK(s.verify(disk2, "snap-1").status == 11);

    // An image of the disk, and a disk from the image.
    const std::string image = s.image("image.img", 12 * kOneMiB);
    REQUIRE(s.copy(disk2, "disk-2", image, "image-1", "image").status == 0);
    const std::string disk3 = s.image("disk3.img", 12 * kOneMiB);
    REQUIRE(s.copy(image, "image-1", disk3, "disk-3", "disk", {"--type", "network-ssd"}).status == 0);
    CHECK(copy_e2e::bytes(disk3, kOneMiB, 8 * kOneMiB) == copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB));
    CHECK(s.verify(disk3, "disk-3").status == 0);

    const auto ev = diskcrypt::test::audit_events(s.audit);
    CHECK(diskcrypt::test::count_events(ev, {{"event", "copy"}, {"result", "ok"}}) == 4);
    CHECK(diskcrypt::test::count_events(ev, {{"event", "unwrap"}, {"result", "ok"}, {"disk_id", "disk-1"}}) >= 1);
}

TEST_CASE("e2e copy: refusals, each with its exit status and nothing written", "[e2e][copy]")
{
    Site s;
    s.start();
    const std::string disk = s.disk("disk.img", "disk-1", 8 * kOneMiB);
    const std::string snap = s.image("snap.img", 8 * kOneMiB);
    REQUIRE(s.copy(disk, "disk-1", snap, "snap-1", "snapshot").status == 0);
    const std::string target = s.image("target.img", 8 * kOneMiB);

    SECTION("a disk from a disk, a snapshot from a snapshot: not rows of the seeds' table")
    {
        Result r = s.copy(disk, "disk-1", target, "disk-9", "disk", {"--type", "network-ssd"});
        CHECK(r.status == 2);
        CHECK_THAT(copy_e2e::message(r), Contains("holds an encrypted disk; an encrypted disk is not made from it"));
        r = s.copy(snap, "snap-1", target, "snap-9", "snapshot");
        CHECK(r.status == 2);
        CHECK_THAT(copy_e2e::message(r), Contains("holds an encrypted snapshot; an encrypted snapshot"));
    }
    SECTION("a disk without its type, a snapshot with one")
    {
        CHECK(s.copy(snap, "snap-1", target, "disk-9", "disk").status == 2);
        const Result r = s.copy(disk, "disk-1", target, "snap-9", "snapshot", {"--type", "network-hdd"});
        CHECK(r.status == 2);
        CHECK_THAT(copy_e2e::message(r), Contains("keeps its source's disk type"));
    }
    SECTION("the copy under the source's id")
    {
        const Result r = s.copy(disk, "disk-1", target, "disk-1", "snapshot");
        CHECK(r.status == 2);
        CHECK_THAT(copy_e2e::message(r), Contains("is the source's id"));
    }
    SECTION("a target smaller than the source")
    {
        const std::string small = s.image("small.img", 4 * kOneMiB);
        const Result r = s.copy(disk, "disk-1", small, "snap-9", "snapshot");
        CHECK(r.status == 5);
        CHECK_THAT(copy_e2e::message(r), Contains("is 4194304 bytes; the copy needs at least 8388608"));
    }
    SECTION("a target that holds a LUKS header: refused, then overwritten with --force")
    {
        const std::string other = s.disk("other.img", "other-1", 8 * kOneMiB);
        Result r = s.copy(disk, "disk-1", other, "snap-9", "snapshot");
        CHECK(r.status == 6);
        CHECK_THAT(copy_e2e::message(r), Contains("is not empty"));
        CHECK(s.verify(other, "other-1").status == 0);
        r = s.copy(disk, "disk-1", other, "snap-9", "snapshot", {"--force"});
        CHECK(r.status == 0);
        CHECK(s.verify(other, "snap-9").status == 0);
    }
    SECTION("the source under another key than the control plane's record")
    {
        const Result r = s.copy(disk, "disk-1", target, "snap-9", "snapshot", {}, kKey2);
        CHECK(r.status == 11);
        CHECK_THAT(copy_e2e::message(r), Contains("not under the disk's key hsm:disk-key-02; the KMS was not asked"));
    }
    SECTION("a user the policy does not know")
    {
        const Result r =
            s.cli({"--json", "copy", disk, "--disk-id", "disk-1", "--key", kKey1, "--to", target, "--to-id", "snap-9",
                   "--to-kind", "snapshot", "--service-account", "sa-tests", "--user", "mallory"});
        CHECK(r.status == 18);
        CHECK_THAT(copy_e2e::message(r), Contains("userAccount:mallory lacks iam.serviceAccounts.use"));
    }
    SECTION("decrypting in place")
    {
        const Result r = s.cli({"--json", "decrypt", "disk-1", "--device", disk});
        CHECK(r.status == 21);
        CHECK_THAT(copy_e2e::message(r), Contains("encryption cannot be disabled on a disk once it is enabled"));
        const auto ev = diskcrypt::test::audit_events(s.audit);
        CHECK(diskcrypt::test::count_events(
                  ev, {{"event", "decrypt"}, {"result", "refused"}, {"reason", "not-supported"}}) == 1);
        CHECK(s.verify(disk, "disk-1").status == 0);
    }
    // Nothing was written to the target by a refusal.
    if (diskcrypt::test::run({"cryptsetup", "isLuks", target}).status == 0) {
        FAIL("a refused copy wrote a header to " << target);
    }
}

TEST_CASE("e2e copy: an interrupted copy is refused until it is run again, which resumes from a snapshot",
          "[e2e][copy]")
{
    Site s;
    s.start();
    const std::string disk = s.disk("disk.img", "disk-1", 16 * kOneMiB);
    copy_e2e::fill_random(disk, kOneMiB, 16 * kOneMiB, 3);
    const std::string snap = s.image("snap.img", 16 * kOneMiB);
    REQUIRE(s.copy(disk, "disk-1", snap, "snap-1", "snapshot").status == 0);
    const std::string target = s.image("target.img", 16 * kOneMiB);
    REQUIRE(s.copy(snap, "snap-1", target, "disk-2", "disk", {"--type", "network-ssd"}).status == 0);

    // As an interruption after the first 8 MiB leaves it: the mark, and the
    // rest of the data area not yet written.
    json t = copy_e2e::token_of(target);
    t["incomplete"] = {{"operation", "copy"}, {"done", 8 * kOneMiB}, {"total", 15 * kOneMiB}};
    copy_e2e::set_token(target, t);
    copy_e2e::fill_random(target, 9 * kOneMiB, 16 * kOneMiB, 4);

    Result r = s.verify(target, "disk-2");
    CHECK(r.status == 19);
    CHECK_THAT(copy_e2e::message(r), Contains("disk disk-2 is an interrupted copy (8388608 of 15728640 bytes"));
    CHECK_THAT(out_json(r).at("error").at("hint").get<std::string>(), Contains("run the copy that makes it again"));

    r = s.copy(snap, "snap-1", target, "disk-2", "disk", {"--type", "network-ssd"});
    REQUIRE(r.status == 0);
    json j = out_json(r);
    CHECK(j.at("resumed_from") == 8 * kOneMiB);
    CHECK(j.at("copied_bytes") == 7 * kOneMiB);
    CHECK(copy_e2e::bytes(target, kOneMiB, 16 * kOneMiB) == copy_e2e::bytes(disk, kOneMiB, 16 * kOneMiB));
    CHECK(s.verify(target, "disk-2").status == 0);
    CHECK_FALSE(copy_e2e::token_of(target).contains("incomplete"));

    // From a disk (which may have changed since), the copy starts again.
    t = copy_e2e::token_of(snap);
    t["incomplete"] = {{"operation", "copy"}, {"done", 8 * kOneMiB}, {"total", 15 * kOneMiB}};
    copy_e2e::set_token(snap, t);
    r = s.copy(disk, "disk-1", snap, "snap-1", "snapshot");
    REQUIRE(r.status == 0);
    j = out_json(r);
    CHECK(j.at("resumed_from") == 0);
    CHECK(j.at("copied_bytes") == 15 * kOneMiB);
    CHECK(s.verify(snap, "snap-1").status == 0);
}

TEST_CASE("e2e rewrap: to another key, to the key's current version, from associated data version 1", "[e2e][rewrap]")
{
    Site s;
    s.start();
    const std::string disk = s.disk("disk.img", "disk-1", 8 * kOneMiB);
    copy_e2e::fill_random(disk, kOneMiB, 8 * kOneMiB, 5);
    const auto data = copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB);
    const json before = copy_e2e::token_of(disk);

    // The same key: a fresh wrap (another IV), the data untouched.
    Result r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key", kKey1, "--service-account", "sa-tests",
                      "--user", "provisioner"});
    REQUIRE(r.status == 0);
    json t = copy_e2e::token_of(disk);
    CHECK(t.at("wrap").at("iv") != before.at("wrap").at("iv"));
    CHECK(s.verify(disk, "disk-1").status == 0);

    // Another key.
    r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key", kKey1, "--service-account", "sa-tests",
               "--user", "provisioner", "--to-key", kKey2});
    REQUIRE(r.status == 0);
    json j = out_json(r);
    CHECK(j.at("from").at("id") == "disk-key-01");
    CHECK(j.at("to").at("id") == "disk-key-02");
    CHECK(j.at("to").at("ad_version") == 2);
    CHECK(s.verify(disk, "disk-1", kKey2).status == 0);
    r = s.verify(disk, "disk-1", kKey1);
    CHECK(r.status == 11);
    CHECK(copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB) == data);

    // Associated data version 1 (as format wrote it before issue 9) to 2.
    // (Another provider: the next test case.)
    {
        const diskcrypt::AgentConfig cfg = diskcrypt::load_config(s.config);
        const diskcrypt::CryptDevice cd = diskcrypt::open_luks2(disk);
        const diskcrypt::DiskHeader h = diskcrypt::read_header(cd.get(), disk);
        const diskcrypt::SecureBuffer secret = diskcrypt::unwrap_secret(cfg, h, "disk-1");
        diskcrypt::Token token = h.token;
        token.ad_version = 1;
        token.wrapped = cfg.provider("hsm")->wrap(token.key.key_id, token.key.version, secret.span(),
                                                  diskcrypt::associated_data("disk-1", token.key));
        copy_e2e::set_token(disk, json::parse(diskcrypt::encode_token(token)));
    }
    CHECK(s.verify(disk, "disk-1", kKey2).status == 0);
    r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key", kKey2, "--service-account", "sa-tests",
               "--user", "provisioner"});
    REQUIRE(r.status == 0);
    j = out_json(r);
    CHECK(j.at("from").at("ad_version") == 1);
    CHECK(j.at("to").at("ad_version") == 2);
    CHECK(copy_e2e::token_of(disk).at("wrap").at("ad_version") == 2);
    CHECK(s.verify(disk, "disk-1", kKey2).status == 0);

    // Refusals: the wrong current key, a user without a role.
    r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key", kKey1, "--service-account", "sa-tests",
               "--user", "provisioner"});
    CHECK(r.status == 11);
    r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key", kKey2, "--service-account", "sa-tests",
               "--user", "mallory", "--to-key", kKey1});
    CHECK(r.status == 18);
    CHECK(s.verify(disk, "disk-1", kKey2).status == 0);
    const auto ev = diskcrypt::test::audit_events(s.audit);
    CHECK(diskcrypt::test::count_events(ev, {{"event", "rewrap"}, {"result", "ok"}}) == 3);
}

TEST_CASE("e2e rewrap: to a key of another provider, and back", "[e2e][rewrap]")
{
    Site s;
    s.add_second_provider();
    s.start();
    const std::string disk = s.disk("disk.img", "disk-1", 8 * kOneMiB);
    copy_e2e::fill_random(disk, kOneMiB, 8 * kOneMiB, 6);
    const auto data = copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB);

    Result r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key", kKey1, "--service-account", "sa-tests",
                      "--user", "provisioner", "--to-key", kKeyOther});
    REQUIRE(r.status == 0);
    json j = out_json(r);
    CHECK(j.at("from").at("provider") == "hsm");
    CHECK(j.at("to").at("provider") == "hsm2");
    CHECK(j.at("to").at("id") == "disk-key-09");
    CHECK(copy_e2e::token_of(disk).at("key").at("provider") == "hsm2");
    CHECK(s.verify(disk, "disk-1", kKeyOther).status == 0);
    CHECK(s.verify(disk, "disk-1", kKey1).status == 11);
    CHECK(copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB) == data);

    r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key", kKeyOther, "--service-account", "sa-tests",
               "--user", "provisioner", "--to-key", kKey2});
    REQUIRE(r.status == 0);
    CHECK(out_json(r).at("from").at("provider") == "hsm2");
    CHECK(s.verify(disk, "disk-1", kKey2).status == 0);
    CHECK(copy_e2e::bytes(disk, kOneMiB, 8 * kOneMiB) == data);
}

TEST_CASE("e2e rewrap: the agent killed at each of its writes leaves a disk that opens under the old or the new key",
          "[e2e][rewrap][crash]")
{
    Site s;
    s.start();
    const std::string disk = s.disk("disk.img", "disk-1", 8 * kOneMiB);
    int old_key = 0;
    int new_key = 0;
    bool completed = false;
    // strace, attached to the running agent, kills it when it enters its
    // N-th write(2) to the disk's file from then on (libcryptsetup writes
    // each of the header's two copies as binary header, JSON area, binary
    // header again, with write(2)), before that write happens: a crash at
    // every point of the header update. (Only the disk's writes: a kill in
    // SoftHSM2's own token-file writes corrupts its token, which is not ours
    // to test.)
    for (int n = 1; n <= 40 && !completed; ++n) {
        const std::string key_before = copy_e2e::token_of(disk).at("key").at("id");
        const pid_t pid = s.agent->pid();
        diskcrypt::test::Background tracer(
            {"strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=write", "-e",
             "inject=write:signal=KILL:when=" + std::to_string(n), "-P", disk, "-p", std::to_string(pid)},
            s.dir / "strace.log");
        REQUIRE(copy_e2e::wait_traced(pid));
        const Result r = s.cli({"--json", "rewrap", disk, "--disk-id", "disk-1", "--key",
                                key_before == "disk-key-01" ? kKey1 : kKey2, "--service-account", "sa-tests", "--user",
                                "provisioner", "--to-key", key_before == "disk-key-01" ? kKey2 : kKey1});
        completed = r.status == 0;
        (void)tracer.stop();
        s.agent.reset();
        s.start();
        const Result v1 = s.verify(disk, "disk-1", kKey1);
        const Result v2 = s.verify(disk, "disk-1", kKey2);
        const bool opens1 = v1.status == 0;
        const bool opens2 = v2.status == 0;
        INFO("killed at write " << n << ": " << r.out << r.err << "\nverify under key 1: " << v1.err
                                << "\nverify under key 2: " << v2.err);
        CHECK(opens1 != opens2);
        const std::string key_after = copy_e2e::token_of(disk).at("key").at("id");
        (key_after == key_before ? old_key : new_key) += 1;
    }
    CHECK(completed);
    INFO("runs that left the old key: " << old_key << ", the new one: " << new_key);
    // Some runs were killed before the header was written, some after.
    CHECK(old_key > 0);
    CHECK(new_key > 0);
}

TEST_CASE("e2e import: refused before anything is written where it cannot run", "[e2e][import]")
{
    Site s;
    s.start();
    const std::string image = s.image("image.raw", 2 * kOneMiB);
    copy_e2e::fill_random(image, 0, 2 * kOneMiB, 6);
    const std::string target = s.image("target.img", 8 * kOneMiB);
    auto import = [&](const std::string& src) {
        return s.cli({"--json", "import", target, "--image", src, "--disk-id", "disk-i", "--type", "network-ssd",
                      "--service-account", "sa-tests", "--user", "provisioner"});
    };
    // A source that is not whole sectors, then (this host has no
    // device-mapper) the kernel: both before format.
    const std::string odd = s.image("odd.raw", 1000);
    Result r = import(odd);
    CHECK(r.status == 5);
    CHECK_THAT(copy_e2e::message(r), Contains("not a whole number of 512-byte sectors"));
    r = import(image);
    CHECK((r.status == 17 || r.status == 5));
    CHECK(diskcrypt::test::run({"cryptsetup", "isLuks", target}).status != 0);
    r = import(s.dir / "missing.raw");
    CHECK(r.status == 5);
}
