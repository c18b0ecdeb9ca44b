// The PKCS#11 provider against a real SoftHSM2, one fresh token per test on
// tmpfs. Providers are built from configuration text, as the agent does.
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <latch>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/error.hpp"
#include "agent/kms/pkcs11.hpp"
#include "agent/kms/provider.hpp"
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
    SECTION("a key version PKCS#11 does not have")
    {
        fails([&] { (void)p.unwrap("disk-key-01", "2", w, ad_for("disk-1")); }, Errc::kms_key,
              "key 'disk-key-01' has no version '2'");
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
