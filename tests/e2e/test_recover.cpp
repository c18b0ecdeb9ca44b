// The cryptsetup token plugin (libcryptsetup-token-diskcrypt-kms.so) on the
// host, loaded as libcryptsetup loads an external token (dlvsym of the
// CRYPTSETUP_TOKEN_1.0 symbols) and registered in this process, against a
// real agent, SoftHSM2 and LUKS2 image files: libcryptsetup checks the
// secret the plugin returns against the keyslot (activation without a name:
// no device-mapper needed). The guest suite (tests/attach/recovery.sh) opens
// a disk with stock `cryptsetup open --token-only` and dm-crypt.
#include <dlfcn.h>
#include <libcryptsetup.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "agent/config.hpp"
#include "agent/disk/header.hpp"
#include "agent/ops/verify.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::test::Result;
using nlohmann::json;

namespace recover_e2e {

const std::string kKey = "hsm:disk-key-01";

// The plugin's entry points, as libcryptsetup finds them.
struct Plugin {
    void* handle = nullptr;
    crypt_token_handler handler{};
    crypt_token_open_func open = nullptr;
    crypt_token_buffer_free_func buffer_free = nullptr;
    crypt_token_version_func version = nullptr;
};

template <typename F>
F symbol(void* handle, const char* name)
{
    void* p = dlvsym(handle, name, CRYPT_TOKEN_ABI_VERSION1);
    INFO(name);
    REQUIRE(p != nullptr);
    return reinterpret_cast<F>(p);  // NOLINT(cppcoreguidelines-pro-type-reinterpret-cast): dlsym
}

// Loaded and registered once per process (libcryptsetup keeps the handler).
const Plugin& plugin()
{
    static const Plugin p = [] {
        Plugin q;
        q.handle = dlopen(DISKCRYPT_TOKEN_PLUGIN, RTLD_NOW | RTLD_LOCAL);
        INFO(dlerror());
        REQUIRE(q.handle != nullptr);
        q.open = symbol<crypt_token_open_func>(q.handle, CRYPT_TOKEN_ABI_OPEN);
        q.buffer_free = symbol<crypt_token_buffer_free_func>(q.handle, CRYPT_TOKEN_ABI_BUFFER_FREE);
        q.version = symbol<crypt_token_version_func>(q.handle, CRYPT_TOKEN_ABI_VERSION);
        q.handler.name = "diskcrypt-kms";
        q.handler.open = q.open;
        q.handler.buffer_free = q.buffer_free;
        q.handler.validate = symbol<crypt_token_validate_func>(q.handle, CRYPT_TOKEN_ABI_VALIDATE);
        q.handler.dump = symbol<crypt_token_dump_func>(q.handle, CRYPT_TOKEN_ABI_DUMP);
        // Only the versioned ABI is exported.
        CHECK(dlsym(q.handle, "_ZN9diskcrypt12decode_tokenESt17basic_string_viewIcSt11char_traitsIcEE") == nullptr);
        REQUIRE(crypt_token_register(&q.handler) == 0);
        return q;
    }();
    return p;
}

struct RecoverSite {
    explicit RecoverSite(bool recovery)
    {
        hsm.create_key({.id = "disk-key-01", .label = "disk key 1"});
        diskcrypt::test::write_file(config, "[agent]\nsocket = \"" + socket + "\"\nlock_dir = \"" + (dir / "lock") +
                                                "\"\ndefault_key = \"" + kKey + "\"\n" +
                                                diskcrypt::test::write_tests_policy(policy, {kKey}) +
                                                "[audit]\nfile = \"" + audit + "\"\njournal = \"never\"\n" +
                                                hsm.provider_toml() + (recovery ? "[recovery]\nenabled = true\n" : ""));
        agent = diskcrypt::test::start_agent({"--config", config}, socket, log);
        // The plugin finds the agent here (the default is /run/diskcrypt).
        REQUIRE(setenv("DISKCRYPT_SOCKET", socket.c_str(), 1) == 0);  // NOLINT(concurrency-mt-unsafe)
        image = dir / "disk.img";
        diskcrypt::test::write_file(image, "");
        std::filesystem::resize_file(image, 8ULL << 20U);
        const Result r =
            diskcrypt::test::run_cli(socket, {"--json", "format", image, "--disk-id", "disk-1", "--type", "network-ssd",
                                              "--key", kKey, "--service-account", "sa-tests", "--user", "provisioner"});
        INFO(r.out << r.err);
        REQUIRE(r.status == 0);
    }

    diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm{dir};
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string policy = dir / "policy.toml";
    std::string audit = dir / "audit.jsonl";
    std::string log = dir / "agent.log";
    std::string image;
    std::unique_ptr<diskcrypt::test::Background> agent;
};

// A LUKS2 image loaded, libcryptsetup's messages collected.
struct Loaded {
    explicit Loaded(const std::string& image)
    {
        REQUIRE(crypt_init(&cd, image.c_str()) == 0);
        crypt_set_log_callback(
            cd, [](int /*level*/, const char* msg, void* usrptr) { *static_cast<std::string*>(usrptr) += msg; },
            &messages);
        REQUIRE(crypt_load(cd, CRYPT_LUKS2, nullptr) == 0);
    }
    Loaded(const Loaded&) = delete;
    Loaded& operator=(const Loaded&) = delete;
    Loaded(Loaded&&) = delete;
    Loaded& operator=(Loaded&&) = delete;
    ~Loaded() { crypt_free(cd); }

    crypt_device* cd = nullptr;
    std::string messages;
};

}  // namespace recover_e2e

using recover_e2e::Loaded;
using recover_e2e::plugin;
using recover_e2e::RecoverSite;

TEST_CASE("e2e recover: the token plugin opens a disk through the agent where the host enables recovery",
          "[e2e][recover]")
{
    const auto& p = plugin();
    CHECK(std::string(p.version()) == "diskcrypt-kms token 1");
    RecoverSite s(true);
    Loaded l(s.image);
    // libcryptsetup asks the plugin and checks the secret against the keyslot.
    CHECK(crypt_activate_by_token(l.cd, nullptr, CRYPT_ANY_TOKEN, nullptr, 0) == 0);

    // The bytes themselves: the keyslot secret the disk's token wraps.
    char* buffer = nullptr;
    std::size_t length = 0;
    REQUIRE(p.open(l.cd, 0, &buffer, &length, nullptr) == 0);
    {
        const diskcrypt::AgentConfig cfg = diskcrypt::load_config(s.config);
        const diskcrypt::CryptDevice cd = diskcrypt::open_luks2(s.image);
        const diskcrypt::DiskHeader h = diskcrypt::read_header(cd.get(), s.image);
        const diskcrypt::SecureBuffer secret = diskcrypt::unwrap_secret(cfg, h, "disk-1");
        CHECK(secret.equals({reinterpret_cast<const std::uint8_t*>(buffer), length}));  // NOLINT
    }
    p.buffer_free(buffer, length);

    const auto ev = diskcrypt::test::audit_events(s.audit);
    CHECK(diskcrypt::test::count_events(ev, {{"event", "recover"}, {"result", "ok"}, {"disk_id", "disk-1"}}) == 2);
    const std::string log = diskcrypt::test::read_file(s.log);
    CHECK_THAT(log, Contains("warning: recover done: break-glass recovery: the keyslot secret of disk disk-1"));

    // luksDump: the plugin's rows, without the wrapped secret.
    l.messages.clear();
    REQUIRE(crypt_dump(l.cd) == 0);
    CHECK_THAT(l.messages, Contains("\tdisk id:        disk-1\n"));
    CHECK_THAT(l.messages, Contains("\tKMS key:        hsm:disk-key-01 version "));
    CHECK_THAT(l.messages, Contains("\twrapped:        32-byte secret, AES-GCM, associated data v2\n"));
    const json token =
        json::parse(diskcrypt::test::run_ok({"cryptsetup", "token", "export", "--token-id", "0", s.image}).out);
    CHECK(l.messages.find(token.at("wrap").at("ciphertext").get<std::string>()) == std::string::npos);

    // validate: libcryptsetup refuses a token of ours that does not parse.
    CHECK(crypt_token_json_set(l.cd, CRYPT_ANY_TOKEN, R"({"type":"diskcrypt-kms","keyslots":["0"]})") < 0);
}

TEST_CASE("e2e recover: refused where the host does not enable it, without a role, without an agent", "[e2e][recover]")
{
    (void)plugin();
    RecoverSite s(false);
    {
        Loaded l(s.image);
        CHECK(crypt_activate_by_token(l.cd, nullptr, CRYPT_ANY_TOKEN, nullptr, 0) < 0);
        CHECK_THAT(l.messages, Contains("diskcrypt: token 0 of " + s.image + ": break-glass recovery of " + s.image +
                                        " is disabled on this host (not-supported); an operator who needs"));
        const auto ev = diskcrypt::test::audit_events(s.audit);
        CHECK(diskcrypt::test::count_events(
                  ev, {{"event", "recover"}, {"result", "refused"}, {"reason", "not-supported"}}) >= 1);
    }
    // Enabled, but the disk's service account without kms.keys.decrypt.
    s.agent.reset();
    diskcrypt::test::write_file(s.policy, "# no bindings\n");
    diskcrypt::test::write_file(s.config, diskcrypt::test::read_file(s.config) + "[recovery]\nenabled = true\n");
    std::filesystem::remove(s.socket);
    s.agent = diskcrypt::test::start_agent({"--config", s.config}, s.socket, s.log);
    {
        Loaded l(s.image);
        CHECK(crypt_activate_by_token(l.cd, nullptr, CRYPT_ANY_TOKEN, nullptr, 0) < 0);
        CHECK_THAT(l.messages, Contains("serviceAccount:sa-tests lacks kms.keys.decrypt on key:hsm:disk-key-01"));
        CHECK_THAT(l.messages, Contains("(access-denied)"));
    }
    // No agent: a clear message, and libcryptsetup told that a resource is
    // missing.
    s.agent.reset();
    {
        Loaded l(s.image);
        char* buffer = nullptr;
        std::size_t length = 0;
        CHECK(plugin().open(l.cd, 0, &buffer, &length, nullptr) == -EAGAIN);
        CHECK(buffer == nullptr);
        CHECK_THAT(l.messages, Contains("cannot reach diskcrypt-agent at " + s.socket));
        CHECK_THAT(l.messages, Contains("systemctl start diskcrypt-agent.socket"));
    }
}
