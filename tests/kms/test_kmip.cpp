// The KMIP provider against a real PyKMIP 0.10 server on 127.0.0.1, with a
// PKI the test makes (tests/support/pykmip.hpp). Providers are built from
// configuration text, as the agent does. Also: servers that are down, that
// accept and never answer (a listening socket nobody accepts on; a TLS
// server that never speaks KMIP), failover, and concurrency.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <latch>
#include <optional>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/error.hpp"
#include "agent/kms/provider.hpp"
#include "agent/raii.hpp"
#include "agent/text.hpp"
#include "tests/support/pykmip.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::Errc;
using diskcrypt::Error;
using diskcrypt::KeyRef;
using diskcrypt::SecureBuffer;
using diskcrypt::kms::KeyInfo;
using diskcrypt::kms::VersionStates;
using diskcrypt::test::KmipIdentity;
using diskcrypt::test::PyKmipServer;
using diskcrypt::test::TempDir;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
    std::vector<std::string> endpoints;
    std::optional<KmipIdentity> identity;
    std::string extra;
    std::string server_name = "kmip.test";
};

std::string provider_toml(const diskcrypt::test::KmipPki& pki, const Options& o)
{
    std::string list;
    for (const auto& e : o.endpoints) {
        list += (list.empty() ? "\"" : ", \"") + e + "\"";
    }
    const KmipIdentity id = o.identity.value_or(pki.client());
    return "[providers.kms]\ntype = \"kmip\"\nendpoints = [" + list + "]\nserver_name = \"" + o.server_name + "\"\n" +
           "ca_file = \"" + pki.ca() + "\"\nclient_certificate = \"" + id.cert + "\"\nclient_key_file = \"" + id.key +
           "\"\n" + o.extra;
}

struct Agentish {
    diskcrypt::AgentConfig cfg;
    explicit Agentish(const std::string& toml) : cfg(diskcrypt::parse_config(toml, "agent.toml")) {}
    [[nodiscard]] diskcrypt::kms::Provider& provider() const { return *cfg.provider("kms"); }
};

// A TCP port on 127.0.0.1 that accepts connections (the kernel completes
// them) and never reads or writes: a server that hangs.
class SilentListener {
public:
    SilentListener() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0))
    {
        REQUIRE(fd_.valid());
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);  // NOLINT
        REQUIRE(::listen(fd_.get(), 64) == 0);
        socklen_t len = sizeof(a);
        REQUIRE(::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);  // NOLINT
        port_ = ntohs(a.sin_port);
    }
    [[nodiscard]] std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }
    [[nodiscard]] diskcrypt::FileDescriptor& fd() { return fd_; }

private:
    diskcrypt::FileDescriptor fd_;
    std::uint16_t port_ = 0;
};

// A port that accepts each connection and closes it at once, as a proxy or
// port forward does when the server behind it is down.
class ClosingListener {
public:
    ClosingListener()
    {
        thread_ = std::thread([this] {
            for (;;) {
                const diskcrypt::FileDescriptor c(::accept4(listener_.fd().get(), nullptr, nullptr, SOCK_CLOEXEC));
                if (!c || stop_) {
                    return;
                }
            }
        });
    }
    ClosingListener(const ClosingListener&) = delete;
    ClosingListener& operator=(const ClosingListener&) = delete;
    ClosingListener(ClosingListener&&) = delete;
    ClosingListener& operator=(ClosingListener&&) = delete;
    ~ClosingListener()
    {
        stop_ = true;
        (void)::shutdown(listener_.fd().get(), SHUT_RDWR);
        thread_.join();
    }
    [[nodiscard]] std::string endpoint() const { return listener_.endpoint(); }

private:
    SilentListener listener_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

// A port nothing listens on.
std::string closed_endpoint()
{
    const SilentListener l;
    return l.endpoint();  // closed when `l` goes
}

// Whether something accepts TCP connections at 127.0.0.1:PORT (within 10 s).
bool wait_listening(const std::string& endpoint)
{
    const auto port = static_cast<std::uint16_t>(std::stoi(endpoint.substr(endpoint.find(':') + 1)));
    for (int i = 0; i < 100; ++i) {
        const diskcrypt::FileDescriptor fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {  // NOLINT
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::size_t connections_seen(const PyKmipServer& s)
{
    const std::string log = diskcrypt::test::read_file(s.log());
    std::size_t n = 0;
    for (std::size_t at = log.find("Receiving incoming connection"); at != std::string::npos;
         at = log.find("Receiving incoming connection", at + 1)) {
        ++n;
    }
    return n;
}

template <typename F>
Error error_of(F&& f)
{
    try {
        f();
    } catch (const Error& e) {
        CHECK(diskcrypt::is_printable(e.what()));
        return e;
    }
    FAIL("no error");
    return {Errc::internal, ""};
}

const KeyRef kKeyRef{"kms", "disk-key", ""};

}  // namespace

TEST_CASE("kmip: describe, wrap and unwrap through PyKMIP", "[kmip][pykmip]")
{
    const TempDir dir;
    const PyKmipServer server(dir);
    const std::string uid = server.create_key("disk-key");
    const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, {}, ""}));
    auto& p = a.provider();

    const auto d = p.describe("disk-key");
    CHECK(d.provider_type == "kmip");
    CHECK(d.version == uid);
    CHECK(d.state == "active");
    CHECK(d.enabled);
    CHECK(d.algorithm == "AES-256");
    CHECK(d.can_encrypt);
    CHECK(d.can_decrypt);

    KeyRef key = kKeyRef;
    key.version = d.version;
    const auto ad = diskcrypt::associated_data("disk-1", key);
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto wrapped = p.wrap("disk-key", d.version, secret.span(), ad);
    CHECK(wrapped.iv.size() == 12);
    CHECK(wrapped.tag.size() == 16);
    CHECK(wrapped.ciphertext.size() == 32);
    CHECK(p.unwrap("disk-key", d.version, wrapped, ad).equals(secret.span()));

    SECTION("another disk's associated data does not unwrap")
    {
        const auto other = diskcrypt::associated_data("disk-2", key);
        const Error e = error_of([&] { (void)p.unwrap("disk-key", d.version, wrapped, other); });
        CHECK(e.code() == Errc::binding);
        CHECK_THAT(e.what(), Contains("authentication tag does not match"));
    }
    SECTION("a tampered tag does not unwrap")
    {
        auto bad = wrapped;
        bad.tag[0] ^= 1U;
        CHECK(error_of([&] { (void)p.unwrap("disk-key", d.version, bad, ad); }).code() == Errc::binding);
    }
    SECTION("a key name nobody has, and one that two objects carry: the newer is the primary")
    {
        const Error none = error_of([&] { (void)p.describe("no-such-key"); });
        CHECK(none.code() == Errc::kms_key);
        CHECK_THAT(none.what(), Contains("no KMIP object named 'no-such-key'") && Contains("diskcrypt-agent"));
        (void)server.create_key("twice");
        const std::string second = server.create_key("twice");
        const auto two = p.describe("twice");
        CHECK(two.version == second);
        CHECK(two.enabled);
    }
    SECTION("one connection serves many requests")
    {
        const std::size_t before = connections_seen(server);
        for (int i = 0; i < 20; ++i) {
            CHECK(p.unwrap("disk-key", d.version, wrapped, ad).equals(secret.span()));
        }
        CHECK(connections_seen(server) == before);
    }
}

TEST_CASE("kmip: keys that are not active are refused with their state", "[kmip][pykmip]")
{
    const TempDir dir;
    const PyKmipServer server(dir);
    const std::string uid = server.create_key("disk-key");
    const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, {}, ""}));
    auto& p = a.provider();
    KeyRef key = kKeyRef;
    key.version = uid;
    const auto ad = diskcrypt::associated_data("disk-1", key);
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto wrapped = p.wrap("disk-key", uid, secret.span(), ad);

    SECTION("revoked as compromised")
    {
        server.revoke(uid, true);
        const Error e = error_of([&] { (void)p.unwrap("disk-key", uid, wrapped, ad); });
        CHECK(e.code() == Errc::kms_key);
        CHECK_THAT(e.what(), Contains("is compromised, not active") && Contains("KMIP object " + uid));
        const auto d = p.describe("disk-key");
        CHECK_FALSE(d.enabled);
        CHECK(d.state == "compromised");
    }
    SECTION("revoked as no longer in use")
    {
        server.revoke(uid, false);
        const Error e = error_of([&] { (void)p.unwrap("disk-key", uid, wrapped, ad); });
        CHECK(e.code() == Errc::kms_key);
        CHECK_THAT(e.what(), Contains("is deactivated, not active"));
        const Error w = error_of([&] { (void)p.wrap("disk-key", uid, secret.span(), ad); });
        CHECK_THAT(w.what(), Contains("is deactivated"));
    }
    SECTION("destroyed")
    {
        server.revoke(uid, false);
        server.destroy(uid);
        const Error e = error_of([&] { (void)p.unwrap("disk-key", uid, wrapped, ad); });
        CHECK(e.code() == Errc::kms_key);
        CHECK_THAT(e.what(), Contains("was not found"));
        CHECK(error_of([&] { (void)p.describe("disk-key"); }).code() == Errc::kms_key);
    }
    SECTION("not yet activated")
    {
        const std::string pre = server.create_key("new-key", false);
        const auto d = p.describe("new-key");
        CHECK_FALSE(d.enabled);
        CHECK(d.state == "pre-active");
        const Error e = error_of([&] { (void)p.wrap("new-key", pre, secret.span(), ad); });
        CHECK(e.code() == Errc::kms_key);
        CHECK_THAT(e.what(), Contains("is pre-active"));
        CHECK_THAT(e.hint(), Contains("activate"));
    }
}

TEST_CASE("kmip: identities the server refuses", "[kmip][pykmip]")
{
    const TempDir dir;
    const PyKmipServer server(dir);
    const std::string uid = server.create_key("disk-key");

    SECTION("another tenant's key is invisible and unusable")
    {
        const std::string theirs = server.create_key("their-key", true, server.pki().client2());
        const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, {}, ""}));
        CHECK(error_of([&] { (void)a.provider().describe("their-key"); }).code() == Errc::kms_key);
        KeyRef key = kKeyRef;
        key.version = theirs;
        const SecureBuffer secret = SecureBuffer::random(32);
        const Error e = error_of(
            [&] { (void)a.provider().wrap("their-key", theirs, secret.span(), diskcrypt::associated_data("d", key)); });
        CHECK((e.code() == Errc::kms_auth || e.code() == Errc::kms_key));
    }
    SECTION("a client certificate from another CA fails the handshake at once")
    {
        const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, server.pki().rogue(), ""}));
        const auto t0 = Clock::now();
        const Error e = error_of([&] { (void)a.provider().describe("disk-key"); });
        CHECK(seconds_since(t0) < 3.0);  // not retried until the deadline
        CHECK(e.code() == Errc::kms_auth);
        CHECK_THAT(e.what(), Contains("TLS handshake failed") && Contains(server.endpoint()));
        CHECK_THAT(e.hint(), Contains("clientAuth"));
    }
    SECTION("a server certificate for another name is refused")
    {
        const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, {}, "", "other.test"}));
        const Error e = error_of([&] { (void)a.provider().describe("disk-key"); });
        CHECK(e.code() == Errc::kms_auth);
        CHECK_THAT(e.what(), Contains("certificate was refused for 'other.test'") && Contains("hostname mismatch"));
    }
    SECTION("a client certificate without clientAuth is refused by the server")
    {
        const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, server.pki().noauth(), ""}));
        const Error e = error_of([&] { (void)a.provider().describe("disk-key"); });
        CHECK(e.code() == Errc::kms_auth);
    }
}

TEST_CASE("kmip: servers down, silent or failing over, within the deadline", "[kmip][pykmip]")
{
    const TempDir dir;
    // The PKI alone where no real server is needed; a server where it is.
    const auto pki = diskcrypt::test::KmipPki::make(dir / "pki");
    const auto start_server = [&] {
        return std::make_unique<PyKmipServer>(dir, diskcrypt::test::PyKmipOptions{pki, false});
    };
    const std::string fast = "request_timeout = 3\nconnect_timeout = 1\nread_timeout = 1\n";

    SECTION("no server listening: unreachable, every endpoint named, within the deadline")
    {
        const std::string a1 = closed_endpoint();
        const std::string a2 = closed_endpoint();
        const Agentish a(provider_toml(pki, {{a1, a2}, {}, fast}));
        const auto t0 = Clock::now();
        const Error e = error_of([&] { (void)a.provider().describe("disk-key"); });
        const double took = seconds_since(t0);
        CHECK(took < 3.5);
        CHECK(e.code() == Errc::kms_unavailable);
        CHECK_THAT(e.what(), Contains(a1 + ": connect: Connection refused") && Contains(a2) && Contains("attempts") &&
                                 Contains("within 3 s"));
    }
    SECTION("a server that accepts and never answers: a timeout, not a hang")
    {
        const SilentListener silent;
        const Agentish a(provider_toml(pki, {{silent.endpoint()}, {}, fast}));
        const auto t0 = Clock::now();
        const Error e = error_of([&] { (void)a.provider().describe("disk-key"); });
        const double took = seconds_since(t0);
        CHECK(took >= 2.9);
        CHECK(took < 3.5);
        CHECK(e.code() == Errc::kms_unavailable);
        CHECK_THAT(e.what(), Contains("TLS handshake timed out"));
    }
    SECTION("a TLS server that never speaks KMIP: the read times out")
    {
        const std::string ep = closed_endpoint();
        // openssl s_server completes the handshake (client certificate
        // required) and then only prints what it receives; its input is a
        // FIFO it holds open itself, so it neither sends nor sees an EOF.
        const std::string fifo = dir / "s_server.in";
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        const diskcrypt::test::Background tls_only(
            {"sh", "-c",
             R"(exec openssl s_server -accept "$1" -cert "$2" -key "$3" -CAfile "$4" -Verify 1 -quiet <> "$5")",
             "s_server", ep, pki.server_cert(), pki.server_key(), pki.ca(), fifo},
            dir / "s_server.log");
        REQUIRE(wait_listening(ep));
        const Agentish a(provider_toml(pki, {{ep}, {}, fast}));
        const auto t0 = Clock::now();
        const Error e = error_of([&] { (void)a.provider().describe("disk-key"); });
        const double took = seconds_since(t0);
        CHECK(took >= 0.9);
        CHECK(took < 3.5);
        CHECK(e.code() == Errc::kms_unavailable);
        CHECK_THAT(e.what(), Contains("waiting for the response timed out"));
    }
    SECTION("a forward whose server is gone (accepted, then closed): unreachable and retried, not a TLS refusal")
    {
        const ClosingListener gone;
        const Agentish a(provider_toml(pki, {{gone.endpoint()}, {}, fast}));
        const Error e = error_of([&] { (void)a.provider().describe("disk-key"); });
        CHECK(e.code() == Errc::kms_unavailable);
        CHECK_THAT(e.what(), Contains("closed the connection during the TLS handshake") && Contains("attempts"));
    }
    SECTION("the first server down: failover, and the next request goes to the good one first")
    {
        const auto server = start_server();
        const std::string uid = server->create_key("disk-key");
        const SilentListener silent;
        const Agentish a(provider_toml(pki, {{silent.endpoint(), server->endpoint()}, {}, fast}));
        auto& p = a.provider();
        const auto t0 = Clock::now();
        CHECK(p.describe("disk-key").version == uid);
        const double first = seconds_since(t0);
        CHECK(first >= 0.9);  // the silent one had its connect_timeout
        CHECK(first < 3.0);
        const auto t1 = Clock::now();
        CHECK(p.describe("disk-key").version == uid);
        CHECK(seconds_since(t1) < 0.9);  // remembered: not tried first
    }
    SECTION("the server restarts: pooled connections are replaced")
    {
        const auto server = start_server();
        const std::string uid = server->create_key("disk-key");
        const Agentish a(provider_toml(pki, {{server->endpoint()}, {}, "pool_size = 1\n" + fast}));
        auto& p = a.provider();
        CHECK(p.describe("disk-key").version == uid);
        server->restart(true);  // the pooled connection is reset, not closed cleanly
        CHECK(p.describe("disk-key").version == uid);
    }
}

TEST_CASE("kmip: concurrent unwraps share a small pool of connections", "[kmip][pykmip]")
{
    const TempDir dir;
    const PyKmipServer server(dir);
    const std::string uid = server.create_key("disk-key");
    const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, {}, "pool_size = 4\nrequest_timeout = 60\n"}));
    auto& p = a.provider();
    KeyRef key = kKeyRef;
    key.version = uid;
    constexpr int kThreads = 64;
    std::vector<SecureBuffer> secrets;
    std::vector<std::vector<std::uint8_t>> ads;
    std::vector<diskcrypt::kms::WrappedSecret> wrapped;
    for (int i = 0; i < kThreads; ++i) {
        secrets.push_back(SecureBuffer::random(32));
        ads.push_back(diskcrypt::associated_data("disk-" + std::to_string(i), key));
        wrapped.push_back(p.wrap("disk-key", uid, secrets.back().span(), ads.back()));
    }
    const std::size_t before = connections_seen(server);
    std::atomic<int> ok{0};
    std::latch start(kThreads);
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int i = 0; i < kThreads; ++i) {
        threads.emplace_back([&, i] {
            start.arrive_and_wait();
            try {
                if (p.unwrap("disk-key", uid, wrapped[static_cast<std::size_t>(i)], ads[static_cast<std::size_t>(i)])
                        .equals(secrets[static_cast<std::size_t>(i)].span())) {
                    ++ok;
                }
            } catch (const Error&) {
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(ok == kThreads);
    // The wraps above left one connection; 64 at once open at most 3 more.
    CHECK(connections_seen(server) - before <= 3);
}

// One server for the whole life of one key: each step builds on the last.
TEST_CASE("kmip: a key's lifecycle: create, rotate, disable, enable, destroy", "[kmip][pykmip]")
{
    const TempDir dir;
    const PyKmipServer server(dir);
    const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, {}, ""}));
    auto& p = a.provider();
    const SecureBuffer secret = SecureBuffer::random(32);
    const auto ad_for = [](const std::string& version) {
        return diskcrypt::associated_data("disk-" + version, KeyRef{"kms", "life", version});
    };

    // Create: one active version, the primary.
    const KeyInfo made = p.create_key("life");
    CHECK(made.key_id == "life");
    CHECK(made.algorithm == "AES-256");
    REQUIRE(made.versions.size() == 1);
    const std::string v1 = made.versions[0].version;
    CHECK(made.versions[0].state == "active");
    CHECK(made.versions[0].primary);
    CHECK(made.versions[0].created > 1700000000);
    const auto d1 = p.describe("life");
    CHECK(d1.version == v1);
    CHECK(d1.enabled);
    CHECK(d1.state == "active");
    const Error exists = error_of([&] { (void)p.create_key("life"); });
    CHECK(exists.code() == Errc::conflict);
    CHECK_THAT(exists.what(), Contains("key 'life' already exists on KMIP server " + server.endpoint()));
    const auto ad1 = ad_for(d1.version);
    const auto w1 = p.wrap("life", d1.version, secret.span(), ad1);

    // Rotate: a second version becomes the primary; both unwrap what they wrapped.
    const KeyInfo rotated = p.rotate_key("life");
    REQUIRE(rotated.versions.size() == 2);
    CHECK(rotated.versions[0].version == v1);
    CHECK_FALSE(rotated.versions[0].primary);
    const std::string v2 = rotated.versions[1].version;
    CHECK(v2 != v1);
    CHECK(rotated.versions[1].primary);
    CHECK(rotated.versions[1].state == "active");
    CHECK(rotated.versions[0].created <= rotated.versions[1].created);
    const auto d2 = p.describe("life");
    CHECK(d2.version == v2);
    const auto ad2 = ad_for(d2.version);
    const auto w2 = p.wrap("life", d2.version, secret.span(), ad2);
    CHECK(p.unwrap("life", v1, w1, ad1).equals(secret.span()));
    CHECK(p.unwrap("life", v2, w2, ad2).equals(secret.span()));
    CHECK(error_of([&] { (void)p.unwrap("life", v2, w1, ad1); }).code() == Errc::binding);
    CHECK(p.version_states("life", {v1, v2}) == VersionStates{{v1, "active"}, {v2, "active"}});

    // List: the key with both versions, oldest first.
    const std::vector<KeyInfo> keys = p.list_keys();
    const auto life = std::find_if(keys.begin(), keys.end(), [](const KeyInfo& k) { return k.key_id == "life"; });
    REQUIRE(life != keys.end());
    REQUIRE(life->versions.size() == 2);
    CHECK(life->versions[0].version == v1);
    CHECK(life->versions[1].version == v2);
    CHECK(life->versions[1].primary);
    CHECK(life->algorithm == "AES-256");

    // Disable: every version deactivated; wrap and unwrap refused with the state.
    const KeyInfo disabled = p.disable_key("life");
    REQUIRE(disabled.versions.size() == 2);
    for (const auto& v : disabled.versions) {
        CHECK(v.state == "deactivated");
    }
    CHECK(p.version_states("life", {v1, v2}) == VersionStates{{v1, "deactivated"}, {v2, "deactivated"}});
    const auto d3 = p.describe("life");
    CHECK(d3.version == v2);
    CHECK_FALSE(d3.enabled);
    CHECK(d3.state == "deactivated");
    const Error no_unwrap = error_of([&] { (void)p.unwrap("life", v1, w1, ad1); });
    CHECK(no_unwrap.code() == Errc::kms_key);
    CHECK(diskcrypt::exit_status(no_unwrap.code()) == 10);
    CHECK_THAT(no_unwrap.what(), Contains("KMIP object " + v1 + ") is deactivated, not active"));
    const Error no_wrap = error_of([&] { (void)p.wrap("life", v2, secret.span(), ad2); });
    CHECK(no_wrap.code() == Errc::kms_key);
    CHECK_THAT(no_wrap.what(), Contains("is deactivated"));
    CHECK(p.disable_key("life").versions.size() == 2);  // again: nothing left to revoke

    // Enable: a revoked KMIP object never becomes active again; nothing changes.
    const Error no_enable = error_of([&] { (void)p.enable_key("life"); });
    CHECK(no_enable.code() == Errc::not_supported);
    CHECK(diskcrypt::exit_status(no_enable.code()) == 21);
    CHECK_THAT(no_enable.what(), Contains("provider 'kms': key 'life' cannot be enabled again: KMIP version " + v1 +
                                          " is deactivated, and a revoked KMIP object never becomes active again"));
    CHECK_THAT(no_enable.hint(), Contains("rotate the key to make a new active version, then rewrap its disks"));
    CHECK(p.version_states("life", {v1, v2}) == VersionStates{{v1, "deactivated"}, {v2, "deactivated"}});

    // Destroy: every version gone, and the key with them.
    p.destroy_key("life");
    CHECK(server.state(v2) == "NOT_FOUND");  // PyKMIP deletes a destroyed object
    const Error gone = error_of([&] { (void)p.key_info("life"); });
    CHECK(gone.code() == Errc::kms_key);
    CHECK_THAT(gone.what(), Contains("no KMIP object named 'life'"));
    CHECK(p.version_states("life", {v1, v2}) == VersionStates{{v1, "destroyed"}, {v2, "destroyed"}});
    for (const auto& step :
         std::vector<std::function<void()>>{[&] { (void)p.rotate_key("life"); }, [&] { (void)p.disable_key("life"); },
                                            [&] { (void)p.enable_key("life"); }, [&] { p.destroy_key("life"); }}) {
        CHECK(error_of(step).code() == Errc::kms_key);
    }
}

TEST_CASE("kmip: versions made outside diskcrypt, other tenants, and a server that is gone", "[kmip][pykmip]")
{
    const TempDir dir;
    PyKmipServer server(dir);
    const Agentish a(provider_toml(server.pki(), {{server.endpoint()}, {}, ""}));
    const Agentish fast(provider_toml(
        server.pki(), {{server.endpoint()}, {}, "request_timeout = 2\nconnect_timeout = 1\nread_timeout = 1\n"}));
    auto& p = a.provider();

    // Two objects with one Name and one Initial Date: the larger identifier is the primary.
    const std::vector<std::string> twins = server.create_keys("twins", 2, true, true);
    const std::string larger = std::stoll(twins[0]) > std::stoll(twins[1]) ? twins[0] : twins[1];
    const KeyInfo t = p.key_info("twins");
    REQUIRE(t.versions.size() == 2);
    CHECK(t.versions[0].created == t.versions[1].created);
    CHECK(t.versions[1].version == larger);
    CHECK(t.versions[1].primary);
    CHECK_FALSE(t.versions[0].primary);
    CHECK(p.describe("twins").version == larger);

    // A newer pre-active version is the primary, not enabled; enable activates it.
    const std::string old_active = server.create_key("mixed");
    const std::string pending = server.create_key("mixed", false);
    const auto dm = p.describe("mixed");
    CHECK(dm.version == pending);
    CHECK_FALSE(dm.enabled);
    CHECK(dm.state == "pre-active");
    CHECK(p.version_states("mixed", {old_active, pending}) ==
          VersionStates{{old_active, "active"}, {pending, "pre-active"}});
    const KeyInfo enabled = p.enable_key("mixed");
    REQUIRE(enabled.versions.size() == 2);
    CHECK(enabled.versions[0].state == "active");
    CHECK(enabled.versions[1].state == "active");
    CHECK(p.describe("mixed").enabled);
    CHECK(p.enable_key("mixed").versions.size() == 2);  // all active: nothing to do

    // A compromised version, and one the server never had.
    server.revoke(old_active, true);
    CHECK(p.version_states("mixed", {old_active, pending, "999999"}) ==
          VersionStates{{old_active, "compromised"}, {pending, "active"}, {"999999", "destroyed"}});
    const Error no_enable = error_of([&] { (void)p.enable_key("mixed"); });
    CHECK(no_enable.code() == Errc::not_supported);
    CHECK_THAT(no_enable.what(), Contains("KMIP version " + old_active + " is compromised"));

    // Destroying an active key revokes it first.
    const std::string short_lived = p.create_key("short-lived").versions.at(0).version;
    p.destroy_key("short-lived");
    CHECK(p.version_states("short-lived", {short_lived}) == VersionStates{{short_lived, "destroyed"}});

    // Another tenant's key: not listed, and its state is an error, never a revocation.
    const std::string theirs = server.create_key("their-key", true, server.pki().client2());
    const Error hidden = error_of([&] { (void)p.version_states("their-key", {theirs}); });
    CHECK(hidden.code() == Errc::kms_auth);
    const std::vector<KeyInfo> keys = p.list_keys();
    std::vector<std::string> names;
    for (const KeyInfo& k : keys) {
        names.push_back(k.key_id);
        CHECK(std::count_if(k.versions.begin(), k.versions.end(), [](const auto& v) { return v.primary; }) == 1);
    }
    CHECK(names == std::vector<std::string>{"mixed", "twins"});
    CHECK(keys.at(1).versions.at(1).version == larger);

    // The server gone: version_states throws, it does not report a state.
    auto& f = fast.provider();
    CHECK(f.version_states("twins", {larger}) == VersionStates{{larger, "active"}});
    (void)server.crash();
    const auto t0 = Clock::now();
    const Error down = error_of([&] { (void)f.version_states("twins", {larger}); });
    CHECK(down.code() == Errc::kms_unavailable);
    CHECK_THAT(down.what(), Contains("no KMIP server completed Locate"));
    CHECK(seconds_since(t0) < 3.0);
}

TEST_CASE("kmip: provider options are checked with their line", "[kmip]")
{
    const std::string base =
        "[providers.kms]\ntype = \"kmip\"\nca_file = \"/ca.pem\"\nclient_certificate = \"/c.pem\"\n";
    const auto error_for = [&](const std::string& extra) {
        try {
            (void)diskcrypt::parse_config(base + extra, "agent.toml");
        } catch (const Error& e) {
            CHECK(e.code() == Errc::config);
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    const std::string key = "client_key_file = \"/k.pem\"\n";
    CHECK_THAT(error_for(key), Contains("needs endpoints"));
    CHECK_THAT(error_for(key + "endpoints = []\n"), Contains("needs endpoints"));
    CHECK_THAT(error_for(key + "endpoints = [\"h:0\"]\n"), Contains("agent.toml:6") && Contains("endpoint 'h:0'"));
    CHECK_THAT(error_for(key + "endpoints = [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]\n"),
               Contains("at most 8"));
    CHECK_THAT(error_for("endpoints = [\"h\"]\n"), Contains("missing client key"));
    CHECK_THAT(error_for(key + "endpoints = [\"h\"]\nclient_key_credential = \"k\"\n"), Contains("not both"));
    CHECK_THAT(error_for("endpoints = [\"h\"]\nclient_key_credential = \"../k\"\n"), Contains("credential name"));
    CHECK_THAT(error_for(key + "endpoints = [\"h\"]\npool_size = 0\n"), Contains("pool_size"));
    CHECK_THAT(error_for(key + "endpoints = [\"h\"]\nrequest_timeout = 0\n"), Contains("request_timeout"));
    CHECK_THAT(error_for(key + "endpoints = [\"h\"]\nrequest_timeout = 2\nconnect_timeout = 3\n"),
               Contains("must not exceed request_timeout"));
    CHECK_THAT(error_for(key + "endpoints = [\"h\"]\nserver_name = \"a b\"\n"), Contains("server_name"));
    CHECK_THAT(error_for(key + "endpoints = [\"h\"]\nbogus = 1\n"), Contains("bogus"));
    CHECK(error_for(key + "endpoints = [\"h\", \"[::1]:15696\"]\n") == "accepted");
}
