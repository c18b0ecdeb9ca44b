// The PKCS#11 provider against a real SoftHSM2, one fresh token per test on
// tmpfs. Providers are built from configuration text, as the agent does.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <latch>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/error.hpp"
#include "agent/kms/pkcs11.hpp"
#include "agent/kms/provider.hpp"
#include "agent/raii.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::Errc;
using diskcrypt::Error;
using diskcrypt::KeyRef;
using diskcrypt::SecureBuffer;
using diskcrypt::test::SoftHsm;
using diskcrypt::test::TempDir;

namespace {

const KeyRef kKey{"hsm", "disk-key-01", "1"};

struct Setup {
    TempDir dir;
    SoftHsm hsm{dir};
    diskcrypt::AgentConfig cfg;

    explicit Setup(const std::string& extra = "")
        : cfg(diskcrypt::parse_config(hsm.provider_toml("hsm", extra), "agent.toml"))
    {
    }
    [[nodiscard]] diskcrypt::kms::Provider& provider() const { return *cfg.provider("hsm"); }
};

std::vector<std::uint8_t> ad_for(const std::string& disk) { return diskcrypt::associated_data(disk, kKey); }

// The slot of the test's token.
CK_SLOT_ID slot_of(SoftHsm& hsm)
{
    const auto session = hsm.session();
    CK_SESSION_INFO info{};
    REQUIRE(hsm.functions()->C_GetSessionInfo(session.get(), &info) == CKR_OK);
    return info.slotID;
}

struct Blob {
    SecureBuffer secret = SecureBuffer::random(32);
    std::vector<std::uint8_t> ad;
    diskcrypt::kms::WrappedSecret wrapped;
};

// `n` secrets wrapped for disks "disk-0".. under disk-key-01.
std::vector<Blob> wrap_many(diskcrypt::kms::Provider& p, std::size_t n)
{
    std::vector<Blob> blobs(n);
    for (std::size_t i = 0; i < n; ++i) {
        blobs[i].ad = ad_for("disk-" + std::to_string(i));
        blobs[i].wrapped = p.wrap("disk-key-01", "1", blobs[i].secret.span(), blobs[i].ad);
    }
    return blobs;
}

// Unwraps every blob, one thread each, all released at once; returns how
// many came back right (the errors are logged: Catch2 is not thread-safe).
std::size_t unwrap_concurrently(diskcrypt::kms::Provider& p, const std::vector<Blob>& blobs)
{
    std::latch start(static_cast<std::ptrdiff_t>(blobs.size()));
    std::atomic<std::size_t> right{0};
    std::mutex mutex;
    std::vector<std::string> errors;
    std::vector<std::thread> threads;
    threads.reserve(blobs.size());
    for (const Blob& b : blobs) {
        threads.emplace_back([&] {
            start.arrive_and_wait();
            try {
                if (p.unwrap("disk-key-01", "1", b.wrapped, b.ad).equals(b.secret.span())) {
                    ++right;
                }
            } catch (const Error& e) {
                const std::lock_guard lock(mutex);
                errors.emplace_back(e.what());
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    for (const auto& e : errors) {
        UNSCOPED_INFO(e);
    }
    return right.load();
}

// `f` must throw Error(code) whose message contains `text`.
template <typename F>
void fails(F&& f, Errc code, const std::string& text)
{
    try {
        f();
        FAIL("no error");
    } catch (const Error& e) {
        INFO(e.what());
        CHECK(e.code() == code);
        CHECK_THAT(e.what(), Contains(text));
    }
}

}  // namespace

TEST_CASE("pkcs11: round trip, fresh IV each time", "[pkcs11]")
{
    Setup s;
    s.hsm.create_key({.id = "disk-key-01"});
    auto& p = s.provider();
    CHECK(p.type() == "pkcs11");
    const auto d = p.describe("disk-key-01");
    CHECK(d.provider_type == "pkcs11");
    CHECK(d.version == "1");
    CHECK(d.algorithm == "AES-256");
    CHECK(d.can_encrypt);
    CHECK(d.can_decrypt);
    CHECK_FALSE(d.extractable);
    CHECK(d.label == "diskcrypt-test-key");

    const SecureBuffer secret = SecureBuffer::random(32);
    const auto ad = ad_for("disk-1");
    const auto w1 = p.wrap("disk-key-01", "1", secret.span(), ad);
    const auto w2 = p.wrap("disk-key-01", "1", secret.span(), ad);
    CHECK(w1.algorithm == "AES-256-GCM");
    CHECK(w1.iv.size() == 12);
    CHECK(w1.ciphertext.size() == 32);
    CHECK(w1.tag.size() == 16);
    CHECK(w1.iv != w2.iv);
    CHECK(w1.ciphertext != w2.ciphertext);
    CHECK_FALSE(secret.equals(w1.ciphertext));
    const SecureBuffer back = p.unwrap("disk-key-01", "1", w1, ad);
    CHECK(back.equals(secret.span()));
    CHECK(p.unwrap("disk-key-01", "1", w2, ad).equals(secret.span()));
}

TEST_CASE("pkcs11: wrong associated data is refused", "[pkcs11]")
{
    Setup s;
    s.hsm.create_key({.id = "disk-key-01"});
    auto& p = s.provider();
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto w = p.wrap("disk-key-01", "1", secret.span(), ad_for("disk-1"));

    SECTION("another disk's id: the blob of disk-1 does not unwrap for disk-2")
    {
        fails([&] { (void)p.unwrap("disk-key-01", "1", w, ad_for("disk-2")); }, Errc::binding,
              "refused to unwrap the secret");
    }
    SECTION("another key reference in the AD")
    {
        const auto other = diskcrypt::associated_data("disk-1", KeyRef{"hsm2", "disk-key-01", "1"});
        fails([&] { (void)p.unwrap("disk-key-01", "1", w, other); }, Errc::binding,
              "the authentication tag does not match");
    }
    SECTION("empty AD")
    {
        fails([&] { (void)p.unwrap("disk-key-01", "1", w, {}); }, Errc::binding, "refused to unwrap");
    }
    SECTION("tampered ciphertext, tag or IV")
    {
        auto t = w;
        t.ciphertext[0] ^= 1U;
        fails([&] { (void)p.unwrap("disk-key-01", "1", t, ad_for("disk-1")); }, Errc::binding, "refused to unwrap");
        t = w;
        t.tag[15] ^= 0x80U;
        fails([&] { (void)p.unwrap("disk-key-01", "1", t, ad_for("disk-1")); }, Errc::binding, "refused to unwrap");
        t = w;
        t.iv[0] ^= 1U;
        fails([&] { (void)p.unwrap("disk-key-01", "1", t, ad_for("disk-1")); }, Errc::binding, "refused to unwrap");
    }
    SECTION("another key with the same AD")
    {
        s.hsm.create_key({.id = "disk-key-02"});
        fails([&] { (void)p.unwrap("disk-key-02", "1", w, ad_for("disk-1")); }, Errc::binding, "refused to unwrap");
    }
    SECTION("a key version the token does not have")
    {
        fails([&] { (void)p.unwrap("disk-key-01", "2", w, ad_for("disk-1")); }, Errc::kms_key,
              "key 'disk-key-01' has no version 2 on token 'diskcrypt' (no secret key with CKA_ID 'disk-key-01#2'");
    }
}

TEST_CASE("pkcs11: missing and ambiguous keys", "[pkcs11]")
{
    Setup s;
    s.hsm.create_key({.id = "other"});
    auto& p = s.provider();
    const SecureBuffer secret = SecureBuffer::random(32);
    fails([&] { (void)p.describe("disk-key-01"); }, Errc::kms_key,
          "no secret key with CKA_ID 'disk-key-01' (hex 6469736b2d6b65792d3031) on token 'diskcrypt'");
    fails([&] { (void)p.wrap("disk-key-01", "1", secret.span(), ad_for("d")); }, Errc::kms_key, "no secret key");

    s.hsm.create_key({.id = "twin", .label = "first"});
    s.hsm.create_key({.id = "twin", .label = "second"});
    fails(
        [&] { (void)p.describe("twin"); }, Errc::kms_key,
        "more than one secret key with CKA_ID 'twin' (hex 7477696e) on token 'diskcrypt'; diskcrypt needs exactly one");
    fails([&] { (void)p.wrap("twin", "1", secret.span(), ad_for("d")); }, Errc::kms_key, "more than one");
}

TEST_CASE("pkcs11: keys that may not be used", "[pkcs11]")
{
    Setup s;
    auto& p = s.provider();
    const SecureBuffer secret = SecureBuffer::random(32);
    SECTION("not allowed to encrypt")
    {
        s.hsm.create_key({.id = "k", .encrypt = false});
        CHECK_FALSE(p.describe("k").can_encrypt);
        fails([&] { (void)p.wrap("k", "1", secret.span(), ad_for("d")); }, Errc::kms_key,
              "key 'k' on token 'diskcrypt' is not allowed to encrypt (CKA_ENCRYPT is false)");
    }
    SECTION("not allowed to decrypt")
    {
        s.hsm.create_key({.id = "k", .decrypt = false});
        fails([&] { (void)p.wrap("k", "1", secret.span(), ad_for("d")); }, Errc::kms_key,
              "is not allowed to decrypt (CKA_DECRYPT is false)");
    }
    SECTION("AES-128")
    {
        s.hsm.create_key({.id = "k", .bytes = 16});
        CHECK(p.describe("k").algorithm == "AES-128");
        fails([&] { (void)p.wrap("k", "1", secret.span(), ad_for("d")); }, Errc::kms_key, "is not an AES-256 key");
    }
    SECTION("not an AES key")
    {
        s.hsm.create_key({.id = "k", .type = CKK_GENERIC_SECRET});
        fails([&] { (void)p.wrap("k", "1", secret.span(), ad_for("d")); }, Errc::kms_key, "is not an AES-256 key");
    }
    SECTION("extractable keys are refused for new wraps")
    {
        s.hsm.create_key({.id = "k", .sensitive = false, .extractable = true});
        CHECK(p.describe("k").extractable);
        fails([&] { (void)p.wrap("k", "1", secret.span(), ad_for("d")); }, Errc::kms_key,
              "can leave the HSM (CKA_EXTRACTABLE true or CKA_SENSITIVE false)");
    }
}

TEST_CASE("pkcs11: extractable keys only with allow_extractable_keys", "[pkcs11]")
{
    Setup s("allow_extractable_keys = true\n");
    s.hsm.create_key({.id = "k", .sensitive = false, .extractable = true});
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto w = s.provider().wrap("k", "1", secret.span(), ad_for("d"));
    CHECK(s.provider().unwrap("k", "1", w, ad_for("d")).equals(secret.span()));
}

TEST_CASE("pkcs11: a non-extractable key really is unreadable", "[pkcs11]")
{
    Setup s;
    s.hsm.create_key({.id = "disk-key-01"});
    s.hsm.create_key({.id = "wrapper", .label = "wrapping key"});
    const auto session = s.hsm.session();
    CK_FUNCTION_LIST* f = s.hsm.functions();
    auto find = [&](const std::string& id) {
        std::string idb = id;
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        std::array<CK_ATTRIBUTE, 2> t{{{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, idb.data(), idb.size()}}};
        CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
        CK_ULONG n = 0;
        REQUIRE(f->C_FindObjectsInit(session.get(), t.data(), 2) == CKR_OK);
        REQUIRE(f->C_FindObjects(session.get(), &h, 1, &n) == CKR_OK);
        REQUIRE(f->C_FindObjectsFinal(session.get()) == CKR_OK);
        REQUIRE(n == 1);
        return h;
    };
    const CK_OBJECT_HANDLE key = find("disk-key-01");
    const CK_OBJECT_HANDLE wrapper = find("wrapper");

    std::array<std::uint8_t, 64> value{};
    CK_ATTRIBUTE attr{CKA_VALUE, value.data(), value.size()};
    CHECK(f->C_GetAttributeValue(session.get(), key, &attr, 1) == CKR_ATTRIBUTE_SENSITIVE);
    CHECK(attr.ulValueLen == CK_UNAVAILABLE_INFORMATION);

    CK_MECHANISM wrap{CKM_AES_KEY_WRAP, nullptr, 0};
    std::array<std::uint8_t, 128> out{};
    CK_ULONG out_len = out.size();
    CHECK(f->C_WrapKey(session.get(), &wrap, wrapper, key, out.data(), &out_len) == CKR_KEY_UNEXTRACTABLE);

    // And the stock tool cannot read it either.
    const auto r = diskcrypt::test::run({"pkcs11-tool", "--module", diskcrypt::test::kSoftHsmModule, "--token-label",
                                         "diskcrypt", "--login", "--pin", s.hsm.pin(), "--read-object", "--type",
                                         "secrkey", "--id", "6469736b2d6b65792d3031"});
    CHECK(r.status != 0);
}

TEST_CASE("pkcs11: wrong PIN, insecure or missing PIN file, PIN credential", "[pkcs11]")
{
    Setup s;
    s.hsm.create_key({.id = "disk-key-01"});
    auto& p = s.provider();
    SECTION("wrong PIN")
    {
        diskcrypt::test::write_file(s.hsm.pin_file(), "0000\n", 0600);
        fails([&] { (void)p.describe("disk-key-01"); }, Errc::kms_auth,
              "provider 'hsm': token 'diskcrypt' rejected the PIN (CKR_PIN_INCORRECT)");
    }
    SECTION("PIN file readable by others")
    {
        REQUIRE(chmod(s.hsm.pin_file().c_str(), 0644) == 0);
        fails([&] { (void)p.describe("disk-key-01"); }, Errc::kms_auth,
              "PIN file " + s.hsm.pin_file() + " is accessible by group or others (mode 0644); refusing to use it");
    }
    SECTION("PIN file owned by another user")
    {
        REQUIRE(chown(s.hsm.pin_file().c_str(), 65534, 65534) == 0);
        fails([&] { (void)p.describe("disk-key-01"); }, Errc::kms_auth,
              "is owned by uid 65534, not by the agent's uid 0");
    }
    SECTION("PIN file missing")
    {
        REQUIRE(unlink(s.hsm.pin_file().c_str()) == 0);
        fails([&] { (void)p.describe("disk-key-01"); }, Errc::kms_auth,
              "cannot read PIN file " + s.hsm.pin_file() + ": No such file or directory");
    }
    SECTION("PIN file is a symlink")
    {
        const std::string link = s.dir / "pin-link";
        REQUIRE(symlink(s.hsm.pin_file().c_str(), link.c_str()) == 0);
        diskcrypt::AgentConfig cfg = diskcrypt::parse_config(
            "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"" + std::string(diskcrypt::test::kSoftHsmModule) +
                "\"\ntoken_label = \"diskcrypt\"\npin_file = \"" + link + "\"\n",
            "agent.toml");
        fails([&] { (void)cfg.provider("hsm")->describe("disk-key-01"); }, Errc::kms_auth, "is a symbolic link");
    }
}

TEST_CASE("pkcs11: PIN from a systemd credential", "[pkcs11]")
{
    TempDir dir;
    SoftHsm hsm(dir);
    hsm.create_key({.id = "disk-key-01"});
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(
        "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"" + std::string(diskcrypt::test::kSoftHsmModule) +
            "\"\ntoken_label = \"diskcrypt\"\npin_credential = \"hsm-pin\"\n",
        "agent.toml");
    auto* p = cfg.provider("hsm");
    unsetenv("CREDENTIALS_DIRECTORY");  // NOLINT(concurrency-mt-unsafe)
    fails([&] { (void)p->describe("disk-key-01"); }, Errc::kms_auth,
          "credential 'hsm-pin' is configured but $CREDENTIALS_DIRECTORY is not set");
    const std::string creds = dir / "credentials";
    REQUIRE(mkdir(creds.c_str(), 0700) == 0);
    diskcrypt::test::write_file(creds + "/hsm-pin", hsm.pin(), 0400);
    setenv("CREDENTIALS_DIRECTORY", creds.c_str(), 1);  // NOLINT(concurrency-mt-unsafe)
    CHECK(p->describe("disk-key-01").can_encrypt);
    unsetenv("CREDENTIALS_DIRECTORY");  // NOLINT(concurrency-mt-unsafe)
}

TEST_CASE("pkcs11: token or module missing", "[pkcs11]")
{
    TempDir dir;
    SoftHsm hsm(dir);
    hsm.create_key({.id = "disk-key-01"});
    auto provider_with = [&](const std::string& module, const std::string& label) {
        return diskcrypt::parse_config("[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"" + module +
                                           "\"\ntoken_label = \"" + label + "\"\npin_file = \"" + hsm.pin_file() +
                                           "\"\n",
                                       "agent.toml");
    };
    SECTION("no token with the label")
    {
        const auto cfg = provider_with(diskcrypt::test::kSoftHsmModule, "other-token");
        fails([&] { (void)cfg.provider("hsm")->describe("disk-key-01"); }, Errc::kms_unavailable,
              "no token labelled 'other-token' in PKCS#11 module /usr/lib/softhsm/libsofthsm2.so (tokens present: "
              "'diskcrypt')");
    }
    SECTION("module file missing")
    {
        const auto cfg = provider_with("/usr/lib/nonexistent/libhsm.so", "diskcrypt");
        fails([&] { (void)cfg.provider("hsm")->describe("disk-key-01"); }, Errc::kms_unavailable,
              "provider 'hsm': cannot load PKCS#11 module /usr/lib/nonexistent/libhsm.so");
    }
    SECTION("not a PKCS#11 module")
    {
        const auto cfg = provider_with("/usr/lib/x86_64-linux-gnu/libz.so.1", "diskcrypt");
        fails([&] { (void)cfg.provider("hsm")->describe("disk-key-01"); }, Errc::kms_unavailable,
              "is not a PKCS#11 module (no C_GetFunctionList)");
    }
}

TEST_CASE("pkcs11: iv_source = hsm is refused by an HSM that does not make IVs", "[pkcs11]")
{
    // SoftHSM2 takes the IV from the caller; an all-zero IV must never be used.
    Setup s("iv_source = \"hsm\"\n");
    s.hsm.create_key({.id = "disk-key-01"});
    const SecureBuffer secret = SecureBuffer::random(32);
    fails([&] { (void)s.provider().wrap("disk-key-01", "1", secret.span(), ad_for("d")); }, Errc::config,
          "iv_source = \"hsm\" but token 'diskcrypt' did not generate an IV");
}

TEST_CASE("pkcs11: 64 concurrent unwraps share a pool of sessions", "[pkcs11][pool]")
{
    Setup s("pool_size = 4\n");
    s.hsm.create_key({.id = "disk-key-01"});
    auto& p = s.provider();
    (void)diskcrypt::kms::pkcs11::take_session_stats();
    const auto blobs = wrap_many(p, 64);
    CHECK(unwrap_concurrently(p, blobs) == blobs.size());
    auto stats = diskcrypt::kms::pkcs11::take_session_stats();
    INFO("opened " << stats.opened << ", logins " << stats.logins << ", peak " << stats.peak_in_use);
    CHECK(stats.opened >= 1);
    CHECK(stats.opened <= 4);
    CHECK(stats.logins >= 1);
    CHECK(stats.logins <= stats.opened);
    CHECK(stats.retries == 0);
    CHECK(stats.peak_in_use <= 4);

    // Parallel, not queued behind one session: more than one session was in
    // use at some moment. 64 threads released at once nearly always show it
    // in the first round; a few more rounds make a miss vanishingly rare.
    std::uint64_t peak = stats.peak_in_use;
    std::uint64_t opened = stats.opened;
    for (int round = 0; round < 20 && peak < 2; ++round) {
        CHECK(unwrap_concurrently(p, blobs) == blobs.size());
        stats = diskcrypt::kms::pkcs11::take_session_stats();
        peak = std::max(peak, stats.peak_in_use);
        opened += stats.opened;
    }
    CHECK(peak >= 2);
    CHECK(opened <= 4);  // the sessions were kept, not reopened
}

TEST_CASE("pkcs11: sessions the HSM dropped are re-established", "[pkcs11][pool]")
{
    Setup s;
    s.hsm.create_key({.id = "disk-key-01"});
    auto& p = s.provider();
    const auto blobs = wrap_many(p, 2);
    CHECK(p.unwrap("disk-key-01", "1", blobs[0].wrapped, blobs[0].ad).equals(blobs[0].secret.span()));
    const CK_SLOT_ID slot = slot_of(s.hsm);
    (void)diskcrypt::kms::pkcs11::take_session_stats();

    SECTION("C_CloseAllSessions: unwrap, wrap and describe go on")
    {
        REQUIRE(s.hsm.functions()->C_CloseAllSessions(slot) == CKR_OK);
        CHECK(p.unwrap("disk-key-01", "1", blobs[1].wrapped, blobs[1].ad).equals(blobs[1].secret.span()));
        auto stats = diskcrypt::kms::pkcs11::take_session_stats();
        CHECK(stats.retries == 1);
        CHECK(stats.opened == 1);
        CHECK(stats.logins == 1);  // closing every session logged the token out
        CHECK(p.unwrap("disk-key-01", "1", blobs[0].wrapped, blobs[0].ad).equals(blobs[0].secret.span()));
        stats = diskcrypt::kms::pkcs11::take_session_stats();
        CHECK(stats.retries == 0);
        CHECK(stats.opened == 0);

        REQUIRE(s.hsm.functions()->C_CloseAllSessions(slot) == CKR_OK);
        CHECK(p.describe("disk-key-01").can_decrypt);
        REQUIRE(s.hsm.functions()->C_CloseAllSessions(slot) == CKR_OK);
        const auto w = p.wrap("disk-key-01", "1", blobs[0].secret.span(), blobs[0].ad);
        CHECK(p.unwrap("disk-key-01", "1", w, blobs[0].ad).equals(blobs[0].secret.span()));
        CHECK(diskcrypt::kms::pkcs11::take_session_stats().retries == 2);
    }
    SECTION("C_Logout: the sessions stay but lose their login")
    {
        const auto session = s.hsm.session();
        REQUIRE(s.hsm.functions()->C_Logout(session.get()) == CKR_OK);
        CHECK(p.unwrap("disk-key-01", "1", blobs[1].wrapped, blobs[1].ad).equals(blobs[1].secret.span()));
        const auto stats = diskcrypt::kms::pkcs11::take_session_stats();
        CHECK(stats.retries == 1);
        CHECK(stats.logins == 1);
    }
    SECTION("a dropped session is retried once only: a wrong PIN is then reported")
    {
        diskcrypt::test::write_file(s.hsm.pin_file(), "0000\n", 0600);
        REQUIRE(s.hsm.functions()->C_CloseAllSessions(slot) == CKR_OK);
        fails([&] { (void)p.unwrap("disk-key-01", "1", blobs[1].wrapped, blobs[1].ad); }, Errc::kms_auth,
              "provider 'hsm': token 'diskcrypt' rejected the PIN (CKR_PIN_INCORRECT)");
        fails([&] { (void)p.unwrap("disk-key-01", "1", blobs[1].wrapped, blobs[1].ad); }, Errc::kms_auth,
              "rejected the PIN");
        const auto stats = diskcrypt::kms::pkcs11::take_session_stats();
        CHECK(stats.retries == 1);  // the wrong PIN itself is never retried
        CHECK(stats.logins == 2);
    }
}

TEST_CASE("pkcs11: several dropped sessions of a pool, after concurrent use", "[pkcs11][pool]")
{
    Setup s("pool_size = 4\n");
    s.hsm.create_key({.id = "disk-key-01"});
    auto& p = s.provider();
    const auto blobs = wrap_many(p, 16);
    CHECK(unwrap_concurrently(p, blobs) == blobs.size());
    const CK_SLOT_ID slot = slot_of(s.hsm);
    (void)diskcrypt::kms::pkcs11::take_session_stats();
    REQUIRE(s.hsm.functions()->C_CloseAllSessions(slot) == CKR_OK);
    // The first request finds its session gone and resets the pool (the other
    // idle sessions go with it); the rest run on new sessions.
    for (const Blob& b : blobs) {
        CHECK(p.unwrap("disk-key-01", "1", b.wrapped, b.ad).equals(b.secret.span()));
    }
    const auto stats = diskcrypt::kms::pkcs11::take_session_stats();
    CHECK(stats.retries == 1);
    CHECK(stats.opened == 1);
    CHECK(unwrap_concurrently(p, blobs) == blobs.size());
}

TEST_CASE("pkcs11: a failed unwrap does not spoil the pooled session", "[pkcs11][pool]")
{
    Setup s("pool_size = 1\n");
    s.hsm.create_key({.id = "disk-key-01"});
    auto& p = s.provider();
    const auto blobs = wrap_many(p, 1);
    (void)diskcrypt::kms::pkcs11::take_session_stats();
    for (int i = 0; i < 3; ++i) {
        fails([&] { (void)p.unwrap("disk-key-01", "1", blobs[0].wrapped, ad_for("other")); }, Errc::binding,
              "refused to unwrap the secret");
        fails([&] { (void)p.unwrap("missing", "1", blobs[0].wrapped, blobs[0].ad); }, Errc::kms_key,
              "no secret key with CKA_ID 'missing'");
        CHECK(p.unwrap("disk-key-01", "1", blobs[0].wrapped, blobs[0].ad).equals(blobs[0].secret.span()));
    }
    const auto stats = diskcrypt::kms::pkcs11::take_session_stats();
    CHECK(stats.retries == 0);  // a failed tag is no reason to retry
    CHECK(stats.opened == 3);   // a session whose C_Decrypt failed is replaced, a missing key keeps it
}

TEST_CASE("pkcs11: pool_size and request_timeout are checked", "[pkcs11][pool]")
{
    TempDir dir;
    SoftHsm hsm(dir);
    auto refused = [&](const std::string& extra, const std::string& text) {
        fails([&] { (void)diskcrypt::parse_config(hsm.provider_toml("hsm", extra), "agent.toml"); }, Errc::config,
              text);
    };
    refused("pool_size = 0\n", "agent.toml:6: [providers.hsm] pool_size: must be from 1 to 64 (not 0)");
    refused("pool_size = 65\n", "agent.toml:6: [providers.hsm] pool_size: must be from 0 to 64 (not 65)");
    refused("pool_size = \"x\"\n", "agent.toml:6: [providers.hsm] pool_size: expected an integer, found a string");
    refused("request_timeout = 0\n",
            "agent.toml:6: [providers.hsm] request_timeout: must be from 1 to 600 seconds (not 0)");
    refused("request_timeout = 601\n", "agent.toml:6: [providers.hsm] request_timeout: must be from 0 to 600");
    CHECK(diskcrypt::parse_config(hsm.provider_toml("hsm", "pool_size = 64\nrequest_timeout = 600\n"), "agent.toml")
              .provider("hsm") != nullptr);
}

namespace {

namespace p11 = diskcrypt::kms::pkcs11;
using diskcrypt::kms::KeyInfo;
using diskcrypt::kms::VersionStates;

// The secret keys with this CKA_ID, found through the test's own session.
std::vector<CK_OBJECT_HANDLE> objects_with_id(SoftHsm& hsm, const diskcrypt::Pkcs11Session& session,
                                              const std::string& id)
{
    CK_FUNCTION_LIST* f = hsm.functions();
    std::string idb = id;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    std::array<CK_ATTRIBUTE, 2> t{{{CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, idb.data(), idb.size()}}};
    std::array<CK_OBJECT_HANDLE, 8> found{};
    CK_ULONG n = 0;
    REQUIRE(f->C_FindObjectsInit(session.get(), t.data(), 2) == CKR_OK);
    REQUIRE(f->C_FindObjects(session.get(), found.data(), found.size(), &n) == CKR_OK);
    REQUIRE(f->C_FindObjectsFinal(session.get()) == CKR_OK);
    return {found.begin(), found.begin() + static_cast<std::ptrdiff_t>(n)};
}

bool bool_attribute(SoftHsm& hsm, const diskcrypt::Pkcs11Session& session, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL value = CK_FALSE;
    CK_ATTRIBUTE attr{type, &value, sizeof(value)};
    REQUIRE(hsm.functions()->C_GetAttributeValue(session.get(), h, &attr, 1) == CKR_OK);
    return value == CK_TRUE;
}

std::string label_of(SoftHsm& hsm, const diskcrypt::Pkcs11Session& session, CK_OBJECT_HANDLE h)
{
    std::array<char, 256> buf{};
    CK_ATTRIBUTE attr{CKA_LABEL, buf.data(), buf.size()};
    REQUIRE(hsm.functions()->C_GetAttributeValue(session.get(), h, &attr, 1) == CKR_OK);
    return {buf.data(), attr.ulValueLen};
}

// A key's versions as "1 active, 2 disabled primary".
std::string versions_text(const KeyInfo& info)
{
    std::string out;
    for (const auto& v : info.versions) {
        CHECK(v.created == 0);  // PKCS#11 does not say
        out += (out.empty() ? "" : ", ") + v.version + " " + v.state + (v.primary ? " primary" : "");
    }
    return out;
}

// `f` must throw Error(code) whose message contains `text` and whose hint
// contains `hint`.
template <typename F>
void fails_with_hint(F&& f, Errc code, const std::string& text, const std::string& hint)
{
    try {
        f();
        FAIL("no error");
    } catch (const Error& e) {
        INFO(e.what() << " | hint: " << e.hint());
        CHECK(e.code() == code);
        CHECK_THAT(e.what(), Contains(text));
        CHECK_THAT(e.hint(), Contains(hint));
    }
}

}  // namespace

TEST_CASE("pkcs11: CKA_ID <-> key id and version", "[pkcs11][versions]")
{
    CHECK(p11::object_id("disk-key-01", 1) == "disk-key-01");
    CHECK(p11::object_id("disk-key-01", 2) == "disk-key-01#2");
    CHECK(p11::object_id("a.b_c:d/e-f", 999999) == "a.b_c:d/e-f#999999");

    CHECK(p11::parse_key_version("1") == 1U);
    CHECK(p11::parse_key_version("2") == 2U);
    CHECK(p11::parse_key_version("10") == 10U);
    CHECK(p11::parse_key_version("999999") == 999999U);
    const std::vector<std::string> bad_versions{"",    "0",   "00",      "01",      "007",      "abc",
                                                "1#2", "+1",  "-1",      " 1",      "1 ",       "1.0",
                                                "0x1", "1e3", "1000000", "9999999", "\xd9\xa1", std::string("1\0", 2)};
    for (const std::string& bad : bad_versions) {
        INFO("version '" << bad << "'");
        CHECK_FALSE(p11::parse_key_version(bad).has_value());
    }

    using Id = p11::KeyObjectId;
    CHECK(p11::parse_object_id("disk-key-01") == Id{"disk-key-01", 1});
    CHECK(p11::parse_object_id("disk-key-01#2") == Id{"disk-key-01", 2});
    CHECK(p11::parse_object_id("a.b_c:d/e-f#999999") == Id{"a.b_c:d/e-f", 999999});
    CHECK(p11::parse_object_id(std::string(128, 'k') + "#17") == Id{std::string(128, 'k'), 17});
    for (const std::string& id : {std::string("k"), std::string("disk-key-01"), std::string(128, 'x')}) {
        for (const std::uint32_t v : {1U, 2U, 9U, 10U, 4711U, p11::kMaxKeyVersion}) {
            CHECK(p11::parse_object_id(p11::object_id(id, v)) == Id{id, v});
        }
    }
    // Outside the scheme: skipped by list_keys, never a version of any key.
    const std::vector<std::string> bad_ids{"",
                                           "#2",
                                           "k#",
                                           "k#1",
                                           "k#0",
                                           "k#01",
                                           "k#2#3",
                                           "k##2",
                                           "k#1000000",
                                           "k#-2",
                                           "k#2 ",
                                           "k#x",
                                           "disk key",
                                           "k\x01",
                                           "\xff\xfe",
                                           std::string("k\0", 2),
                                           std::string(129, 'k'),
                                           std::string(129, 'k') + "#2",
                                           "k#2\n"};
    for (const std::string& bad : bad_ids) {
        INFO("CKA_ID '" << bad << "'");
        CHECK_FALSE(p11::parse_object_id(bad).has_value());
    }
}

TEST_CASE("pkcs11: create a key, and again", "[pkcs11][lifecycle]")
{
    Setup s;
    auto& p = s.provider();
    const KeyInfo info = p.create_key("disk-key-01");
    CHECK(info.key_id == "disk-key-01");
    CHECK(info.algorithm == "AES-256");
    CHECK(versions_text(info) == "1 active primary");
    CHECK(versions_text(p.key_info("disk-key-01")) == "1 active primary");
    const auto d = p.describe("disk-key-01");
    CHECK(d.version == "1");
    CHECK(d.algorithm == "AES-256");
    CHECK(d.enabled);
    CHECK(d.state == "active");
    CHECK(d.can_encrypt);
    CHECK(d.can_decrypt);
    CHECK_FALSE(d.extractable);
    CHECK(d.label == "diskcrypt disk-key-01 v1");

    {
        // Version 1 is the object with CKA_ID = the key id, made as documented.
        const auto session = s.hsm.session();
        const auto handles = objects_with_id(s.hsm, session, "disk-key-01");
        REQUIRE(handles.size() == 1);
        const CK_OBJECT_HANDLE h = handles[0];
        CHECK(bool_attribute(s.hsm, session, h, CKA_TOKEN));
        CHECK(bool_attribute(s.hsm, session, h, CKA_PRIVATE));
        CHECK(bool_attribute(s.hsm, session, h, CKA_SENSITIVE));
        CHECK_FALSE(bool_attribute(s.hsm, session, h, CKA_EXTRACTABLE));
        CHECK(bool_attribute(s.hsm, session, h, CKA_ENCRYPT));
        CHECK(bool_attribute(s.hsm, session, h, CKA_DECRYPT));
        CHECK_FALSE(bool_attribute(s.hsm, session, h, CKA_WRAP));
        CHECK_FALSE(bool_attribute(s.hsm, session, h, CKA_UNWRAP));
        CHECK(bool_attribute(s.hsm, session, h, CKA_MODIFIABLE));
        CHECK(label_of(s.hsm, session, h) == "diskcrypt disk-key-01 v1");
    }

    const SecureBuffer secret = SecureBuffer::random(32);
    const auto w = p.wrap("disk-key-01", d.version, secret.span(), ad_for("disk-1"));
    CHECK(p.unwrap("disk-key-01", "1", w, ad_for("disk-1")).equals(secret.span()));

    fails([&] { (void)p.create_key("disk-key-01"); }, Errc::conflict,
          "provider 'hsm': key 'disk-key-01' exists on token 'diskcrypt' (version 1)");
    CHECK(diskcrypt::exit_status(Errc::conflict) == 16);
    // A key made by other tools the old way, or only a later version of one.
    s.hsm.create_key({.id = "legacy"});
    fails([&] { (void)p.create_key("legacy"); }, Errc::conflict, "key 'legacy' exists");
    s.hsm.create_key({.id = "orphan#3"});
    fails([&] { (void)p.create_key("orphan"); }, Errc::conflict,
          "key 'orphan' exists on token 'diskcrypt' (version 3)");
    // Objects outside the scheme do not count.
    s.hsm.create_key({.id = "fresh#1"});
    s.hsm.create_key({.id = "fresh#01"});
    CHECK(versions_text(p.create_key("fresh")) == "1 active primary");
    // A key id with '#' would name another key's version.
    fails([&] { (void)p.create_key("fresh#2"); }, Errc::usage, "invalid key id");
    {
        const auto session = s.hsm.session();
        CHECK(objects_with_id(s.hsm, session, "disk-key-01").size() == 1);
        CHECK(objects_with_id(s.hsm, session, "fresh#2").empty());
    }
}

TEST_CASE("pkcs11: rotate: new wraps use version 2, every version keeps unwrapping", "[pkcs11][lifecycle]")
{
    Setup s;
    auto& p = s.provider();
    SECTION("a key the agent created") { (void)p.create_key("k"); }
    SECTION("a key made the old way, with CKA_ID = the key id") { s.hsm.create_key({.id = "k"}); }

    REQUIRE(p.describe("k").version == "1");
    const SecureBuffer secret1 = SecureBuffer::random(32);
    const auto ad1 = ad_for("disk-1");
    const auto w1 = p.wrap("k", "1", secret1.span(), ad1);

    const KeyInfo rotated = p.rotate_key("k");
    CHECK(rotated.key_id == "k");
    CHECK(rotated.algorithm == "AES-256");
    CHECK(versions_text(rotated) == "1 active, 2 active primary");
    const auto d = p.describe("k");
    CHECK(d.version == "2");
    CHECK(d.label == "diskcrypt k v2");
    CHECK_FALSE(d.extractable);

    const SecureBuffer secret2 = SecureBuffer::random(32);
    const auto ad2 = ad_for("disk-2");
    const auto w2 = p.wrap("k", d.version, secret2.span(), ad2);
    CHECK(p.unwrap("k", "1", w1, ad1).equals(secret1.span()));
    CHECK(p.unwrap("k", "2", w2, ad2).equals(secret2.span()));
    // Each version is a key of its own.
    fails([&] { (void)p.unwrap("k", "2", w1, ad1); }, Errc::binding, "refused to unwrap");
    fails([&] { (void)p.unwrap("k", "1", w2, ad2); }, Errc::binding, "refused to unwrap");
    {
        const auto session = s.hsm.session();
        const auto v2 = objects_with_id(s.hsm, session, "k#2");
        REQUIRE(v2.size() == 1);
        CHECK(label_of(s.hsm, session, v2[0]) == "diskcrypt k v2");
        CHECK(bool_attribute(s.hsm, session, v2[0], CKA_SENSITIVE));
        CHECK_FALSE(bool_attribute(s.hsm, session, v2[0], CKA_EXTRACTABLE));
        CHECK(objects_with_id(s.hsm, session, "k").size() == 1);
    }

    CHECK(versions_text(p.rotate_key("k")) == "1 active, 2 active, 3 active primary");
    CHECK(versions_text(p.key_info("k")) == "1 active, 2 active, 3 active primary");
    CHECK(p.describe("k").version == "3");
    CHECK(p.unwrap("k", "1", w1, ad1).equals(secret1.span()));
    CHECK(p.version_states("k", {"1", "2", "3", "4"}) ==
          VersionStates{{"1", "active"}, {"2", "active"}, {"3", "active"}, {"4", "destroyed"}});

    fails([&] { (void)p.rotate_key("missing"); }, Errc::kms_key,
          "no secret key with CKA_ID 'missing' (hex 6d697373696e67) on token 'diskcrypt', nor any later version");
}

TEST_CASE("pkcs11: disable and enable every version", "[pkcs11][lifecycle]")
{
    Setup s;
    auto& p = s.provider();
    (void)p.create_key("k");
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto w1 = p.wrap("k", "1", secret.span(), ad_for("d1"));
    (void)p.rotate_key("k");
    const auto w2 = p.wrap("k", "2", secret.span(), ad_for("d2"));

    CHECK(versions_text(p.disable_key("k")) == "1 disabled, 2 disabled primary");
    CHECK(versions_text(p.key_info("k")) == "1 disabled, 2 disabled primary");
    const std::string hint = "enable it (diskcrypt key enable hsm:k) or use another key";
    fails_with_hint([&] { (void)p.wrap("k", "2", secret.span(), ad_for("d3")); }, Errc::kms_key,
                    "provider 'hsm': key 'k' (version 2) on token 'diskcrypt' is disabled", hint);
    fails_with_hint([&] { (void)p.wrap("k", "1", secret.span(), ad_for("d3")); }, Errc::kms_key,
                    "key 'k' (version 1) on token 'diskcrypt' is disabled", hint);
    fails_with_hint([&] { (void)p.unwrap("k", "1", w1, ad_for("d1")); }, Errc::kms_key,
                    "key 'k' (version 1) on token 'diskcrypt' is disabled", hint);
    fails_with_hint([&] { (void)p.unwrap("k", "2", w2, ad_for("d2")); }, Errc::kms_key,
                    "key 'k' (version 2) on token 'diskcrypt' is disabled", hint);
    fails_with_hint([&] { (void)p.describe("k"); }, Errc::kms_key,
                    "key 'k' (version 2) on token 'diskcrypt' is disabled", hint);
    CHECK(p.version_states("k", {"1", "2"}) == VersionStates{{"1", "disabled"}, {"2", "disabled"}});
    fails([&] { (void)p.rotate_key("k"); }, Errc::kms_key, "key 'k' on token 'diskcrypt' is disabled; enable it first");
    {
        // The HSM itself refuses the key now, whoever asks.
        const auto session = s.hsm.session();
        const auto v1 = objects_with_id(s.hsm, session, "k");
        REQUIRE(v1.size() == 1);
        CHECK_FALSE(bool_attribute(s.hsm, session, v1[0], CKA_ENCRYPT));
        CHECK_FALSE(bool_attribute(s.hsm, session, v1[0], CKA_DECRYPT));
        std::array<std::uint8_t, 12> iv{};
        CK_GCM_PARAMS params{};
        params.pIv = iv.data();
        params.ulIvLen = iv.size();
        params.ulIvBits = iv.size() * 8;
        params.ulTagBits = 128;
        CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
        CHECK(s.hsm.functions()->C_EncryptInit(session.get(), &mech, v1[0]) == CKR_KEY_FUNCTION_NOT_PERMITTED);
        CHECK(s.hsm.functions()->C_DecryptInit(session.get(), &mech, v1[0]) == CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    // Disabling a disabled key changes nothing.
    CHECK(versions_text(p.disable_key("k")) == "1 disabled, 2 disabled primary");

    CHECK(versions_text(p.enable_key("k")) == "1 active, 2 active primary");
    CHECK(p.version_states("k", {"1", "2"}) == VersionStates{{"1", "active"}, {"2", "active"}});
    CHECK(p.unwrap("k", "1", w1, ad_for("d1")).equals(secret.span()));
    CHECK(p.unwrap("k", "2", w2, ad_for("d2")).equals(secret.span()));
    CHECK(p.describe("k").version == "2");
    const auto w3 = p.wrap("k", "2", secret.span(), ad_for("d3"));
    CHECK(p.unwrap("k", "2", w3, ad_for("d3")).equals(secret.span()));
    CHECK(versions_text(p.rotate_key("k")) == "1 active, 2 active, 3 active primary");

    fails([&] { (void)p.disable_key("missing"); }, Errc::kms_key, "no secret key with CKA_ID 'missing'");
    fails([&] { (void)p.enable_key("missing"); }, Errc::kms_key, "no secret key with CKA_ID 'missing'");
}

TEST_CASE("pkcs11: keys with only one of CKA_ENCRYPT and CKA_DECRYPT keep their messages", "[pkcs11][lifecycle]")
{
    Setup s;
    auto& p = s.provider();
    s.hsm.create_key({.id = "k", .decrypt = false});
    s.hsm.create_key({.id = "k#2", .encrypt = false});
    CHECK(versions_text(p.key_info("k")) == "1 encrypt-only, 2 decrypt-only primary");
    CHECK(p.version_states("k", {"1", "2"}) == VersionStates{{"1", "encrypt-only"}, {"2", "decrypt-only"}});
    const auto d = p.describe("k");
    CHECK(d.version == "2");
    CHECK(d.state == "decrypt-only");
    CHECK_FALSE(d.can_encrypt);
    const SecureBuffer secret = SecureBuffer::random(32);
    fails([&] { (void)p.wrap("k", "1", secret.span(), ad_for("d")); }, Errc::kms_key,
          "key 'k' on token 'diskcrypt' is not allowed to decrypt (CKA_DECRYPT is false)");
    fails([&] { (void)p.wrap("k", "2", secret.span(), ad_for("d")); }, Errc::kms_key,
          "key 'k' (version 2) on token 'diskcrypt' is not allowed to encrypt (CKA_ENCRYPT is false)");
    // Enabling gives both flags; disabling takes both.
    CHECK(versions_text(p.enable_key("k")) == "1 active, 2 active primary");
    CHECK(versions_text(p.disable_key("k")) == "1 disabled, 2 disabled primary");
}

TEST_CASE("pkcs11: disable and enable are all or nothing", "[pkcs11][lifecycle]")
{
    Setup s;
    auto& p = s.provider();
    SECTION("a later version refuses: the versions already changed are set back")
    {
        s.hsm.create_key({.id = "k"});
        s.hsm.create_key({.id = "k#2"});
        s.hsm.create_key({.id = "k#3", .modifiable = false});
        fails([&] { (void)p.disable_key("k"); }, Errc::kms_key,
              "provider 'hsm': token 'diskcrypt' refuses to change CKA_ENCRYPT and CKA_DECRYPT of key 'k' (CKR_");
        fails([&] { (void)p.disable_key("k"); }, Errc::kms_key,
              "; disabling key 'k' stopped at version 3: versions 1 and 2 had been disabled and were set back, so "
              "no version changed");
        CHECK(versions_text(p.key_info("k")) == "1 active, 2 active, 3 active primary");
        CHECK(p.version_states("k", {"1", "2", "3"}) ==
              VersionStates{{"1", "active"}, {"2", "active"}, {"3", "active"}});
    }
    SECTION("the first version refuses: nothing changed")
    {
        s.hsm.create_key({.id = "k", .modifiable = false});
        s.hsm.create_key({.id = "k#2"});
        fails([&] { (void)p.disable_key("k"); }, Errc::kms_key,
              "refuses to change CKA_ENCRYPT and CKA_DECRYPT of key 'k'");
        fails([&] { (void)p.disable_key("k"); }, Errc::kms_key,
              "disabling key 'k' stopped at version 1: no version changed");
        CHECK(versions_text(p.key_info("k")) == "1 active, 2 active primary");
    }
    SECTION("enable: the same")
    {
        s.hsm.create_key({.id = "k", .encrypt = false, .decrypt = false});
        s.hsm.create_key({.id = "k#2", .encrypt = false, .decrypt = false, .modifiable = false});
        fails([&] { (void)p.enable_key("k"); }, Errc::kms_key,
              "enabling key 'k' stopped at version 2: version 1 had been enabled and was set back, so no version "
              "changed");
        CHECK(versions_text(p.key_info("k")) == "1 disabled, 2 disabled primary");
    }
}

TEST_CASE("pkcs11: destroy every version", "[pkcs11][lifecycle]")
{
    Setup s;
    auto& p = s.provider();
    s.hsm.create_key({.id = "k"});  // version 1 the old way
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto w1 = p.wrap("k", "1", secret.span(), ad_for("d1"));
    (void)p.rotate_key("k");
    (void)p.create_key("other");

    p.destroy_key("k");
    const std::string gone = "no secret key with CKA_ID 'k' (hex 6b) on token 'diskcrypt', nor any later version";
    fails([&] { (void)p.key_info("k"); }, Errc::kms_key, gone);
    fails([&] { (void)p.describe("k"); }, Errc::kms_key, gone);
    fails([&] { (void)p.unwrap("k", "1", w1, ad_for("d1")); }, Errc::kms_key,
          "no secret key with CKA_ID 'k' (hex 6b) on token 'diskcrypt'");
    fails([&] { (void)p.wrap("k", "2", secret.span(), ad_for("d1")); }, Errc::kms_key,
          "key 'k' has no version 2 on token 'diskcrypt'");
    CHECK(p.version_states("k", {"1", "2"}) == VersionStates{{"1", "destroyed"}, {"2", "destroyed"}});
    fails([&] { (void)p.destroy_key("k"); }, Errc::kms_key, gone);
    {
        const auto session = s.hsm.session();
        CHECK(objects_with_id(s.hsm, session, "k").empty());
        CHECK(objects_with_id(s.hsm, session, "k#2").empty());
        CHECK(objects_with_id(s.hsm, session, "other").size() == 1);
    }
    CHECK(versions_text(p.key_info("other")) == "1 active primary");
    // The id is free again, for a new key: the old blob does not unwrap.
    CHECK(versions_text(p.create_key("k")) == "1 active primary");
    fails([&] { (void)p.unwrap("k", "1", w1, ad_for("d1")); }, Errc::binding, "refused to unwrap");
}

TEST_CASE("pkcs11: version_states throws when the KMS cannot say", "[pkcs11][lifecycle]")
{
    TempDir dir;
    SoftHsm hsm(dir);
    hsm.create_key({.id = "k"});
    auto config_with = [&](const std::string& module, const std::string& label) {
        return diskcrypt::parse_config("[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"" + module +
                                           "\"\ntoken_label = \"" + label + "\"\npin_file = \"" + hsm.pin_file() +
                                           "\"\n",
                                       "agent.toml");
    };
    SECTION("it answers")
    {
        const auto cfg = config_with(diskcrypt::test::kSoftHsmModule, "diskcrypt");
        CHECK(cfg.provider("hsm")->version_states("k", {"1", "2"}) ==
              VersionStates{{"1", "active"}, {"2", "destroyed"}});
        CHECK(cfg.provider("hsm")->version_states("k", {}).empty());
    }
    SECTION("module file missing")
    {
        const auto cfg = config_with("/usr/lib/nonexistent/libhsm.so", "diskcrypt");
        fails([&] { (void)cfg.provider("hsm")->version_states("k", {"1"}); }, Errc::kms_unavailable,
              "provider 'hsm': cannot load PKCS#11 module /usr/lib/nonexistent/libhsm.so");
    }
    SECTION("no token with the label")
    {
        const auto cfg = config_with(diskcrypt::test::kSoftHsmModule, "other-token");
        fails([&] { (void)cfg.provider("hsm")->version_states("k", {"1"}); }, Errc::kms_unavailable,
              "no token labelled 'other-token'");
    }
    SECTION("wrong PIN")
    {
        diskcrypt::test::write_file(hsm.pin_file(), "0000\n", 0600);
        const auto cfg = config_with(diskcrypt::test::kSoftHsmModule, "diskcrypt");
        fails([&] { (void)cfg.provider("hsm")->version_states("k", {"1"}); }, Errc::kms_auth,
              "provider 'hsm': token 'diskcrypt' rejected the PIN (CKR_PIN_INCORRECT)");
    }
    SECTION("logged out, then a wrong PIN: an error, not \"destroyed\"")
    {
        const auto cfg = config_with(diskcrypt::test::kSoftHsmModule, "diskcrypt");
        auto* p = cfg.provider("hsm");
        CHECK(p->version_states("k", {"1"}) == VersionStates{{"1", "active"}});
        diskcrypt::test::write_file(hsm.pin_file(), "0000\n", 0600);
        {
            const auto session = hsm.session();
            REQUIRE(hsm.functions()->C_Logout(session.get()) == CKR_OK);
        }
        fails([&] { (void)p->version_states("k", {"1"}); }, Errc::kms_auth, "rejected the PIN");
    }
    SECTION("the token dropped the sessions: retried once, then the answer")
    {
        const auto cfg = config_with(diskcrypt::test::kSoftHsmModule, "diskcrypt");
        auto* p = cfg.provider("hsm");
        CHECK(p->version_states("k", {"1"}) == VersionStates{{"1", "active"}});
        (void)p11::take_session_stats();
        REQUIRE(hsm.functions()->C_CloseAllSessions(slot_of(hsm)) == CKR_OK);
        CHECK(p->version_states("k", {"1"}) == VersionStates{{"1", "active"}});
        CHECK(p11::take_session_stats().retries == 1);
    }
    SECTION("a version string that is no version")
    {
        const auto cfg = config_with(diskcrypt::test::kSoftHsmModule, "diskcrypt");
        fails(
            [&] {
                (void)cfg.provider("hsm")->version_states("k", {"1", "01"});
            },
            Errc::kms_key, "key 'k' has no version '01' (unknown key version");
    }
    SECTION("two objects with the version's CKA_ID")
    {
        hsm.create_key({.id = "k"});
        const auto cfg = config_with(diskcrypt::test::kSoftHsmModule, "diskcrypt");
        fails([&] { (void)cfg.provider("hsm")->version_states("k", {"1"}); }, Errc::kms_key,
              "more than one secret key with CKA_ID 'k'");
    }
}

TEST_CASE("pkcs11: list_keys groups the versions and skips other objects", "[pkcs11][lifecycle]")
{
    Setup s;
    auto& p = s.provider();
    CHECK(p.list_keys().empty());
    (void)p.create_key("alpha");
    (void)p.create_key("beta");
    (void)p.rotate_key("beta");
    (void)p.disable_key("alpha");
    s.hsm.create_key({.id = "legacy"});   // made the old way
    s.hsm.create_key({.id = "gamma#2"});  // only a later version
    s.hsm.create_key({.id = "dup"});      // two objects with one CKA_ID
    s.hsm.create_key({.id = "dup"});
    s.hsm.create_key({.id = "small", .bytes = 16});
    // Outside the scheme.
    const std::vector<std::string> outside{
        "legacy#1", "legacy#01",           "legacy#0",           "legacy#1000000", "x#2#3", "#2", "bad id", "\x01\xfe",
        "k#2\n",    std::string(129, 'a'), std::string(200, 'b')};  // longer than any CKA_ID of the scheme
    for (const std::string& id : outside) {
        s.hsm.create_key({.id = id});
    }
    const std::vector<KeyInfo> keys = p.list_keys();
    std::map<std::string, std::string> by_id;
    for (const KeyInfo& k : keys) {
        by_id[k.key_id] = k.algorithm + ": " + versions_text(k);
    }
    CHECK(by_id == std::map<std::string, std::string>{
                       {"alpha", "AES-256: 1 disabled primary"},
                       {"beta", "AES-256: 1 active, 2 active primary"},
                       {"dup", "AES-256: 1 ambiguous primary"},
                       {"gamma", "AES-256: 2 active primary"},
                       {"legacy", "AES-256: 1 active primary"},
                       {"small", "AES-128: 1 active primary"},
                   });
    CHECK(keys.size() == by_id.size());
    // Everything else refuses the duplicate.
    fails([&] { (void)p.key_info("dup"); }, Errc::kms_key, "more than one secret key with CKA_ID 'dup'");
}

TEST_CASE("pkcs11: version strings that are no version are refused", "[pkcs11][versions]")
{
    Setup s;
    s.hsm.create_key({.id = "disk-key-01"});
    s.hsm.create_key({.id = "disk-key-01#01"});  // not version 1, nor any
    auto& p = s.provider();
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto w = p.wrap("disk-key-01", "1", secret.span(), ad_for("d"));
    const std::vector<std::string> bad_versions{"01", "0", "abc", "1#2", "", "1000000", "+1", " 1", "1 "};
    for (const std::string& bad : bad_versions) {
        INFO("version '" << bad << "'");
        fails([&] { (void)p.wrap("disk-key-01", bad, secret.span(), ad_for("d")); }, Errc::kms_key,
              "unknown key version");
        fails([&] { (void)p.unwrap("disk-key-01", bad, w, ad_for("d")); }, Errc::kms_key,
              "key 'disk-key-01' has no version '" + bad + "' (unknown key version");
        fails([&] { (void)p.version_states("disk-key-01", {bad}); }, Errc::kms_key, "unknown key version");
    }
    CHECK(p.unwrap("disk-key-01", "1", w, ad_for("d")).equals(secret.span()));
}

// Not run by default: `kms-tests "[.pool-timing]" -s` prints how long 64
// concurrent unwraps take with pool sizes 1, 4 and 16.
TEST_CASE("pkcs11: timing of 64 concurrent unwraps by pool_size", "[.pool-timing]")
{
    for (const unsigned size : {1U, 4U, 16U}) {
        Setup s("pool_size = " + std::to_string(size) + "\n");
        s.hsm.create_key({.id = "disk-key-01"});
        auto& p = s.provider();
        const auto blobs = wrap_many(p, 64);
        (void)diskcrypt::kms::pkcs11::take_session_stats();
        const auto begin = std::chrono::steady_clock::now();
        CHECK(unwrap_concurrently(p, blobs) == blobs.size());
        const auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count();
        const auto stats = diskcrypt::kms::pkcs11::take_session_stats();
        WARN("pool_size " << size << ": " << ms << " ms, sessions opened " << stats.opened << " (+1 for the wraps)"
                          << ", logins " << stats.logins << ", peak in use " << stats.peak_in_use);
    }
}
