// The PyKMIP test harness itself (tests/support/pykmip.hpp): the server starts
// on a free port, keys go through their life cycle with PyKMIP's own client,
// two servers share one PKI, and a stopped server leaves no process behind.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>

#include "tests/support/pykmip.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::test::KmipPki;
using diskcrypt::test::PyKmipServer;
using diskcrypt::test::TempDir;

namespace {

bool group_exists(pid_t pgid) { return kill(-pgid, 0) == 0 || errno != ESRCH; }

// Processes whose command line names `conf` (pgrep -f).
std::string processes_with(const std::string& conf) { return diskcrypt::test::run({"pgrep", "-af", conf}).out; }

}  // namespace

TEST_CASE("pykmip harness: the server listens and keys go through their life cycle", "[pykmip]")
{
    const TempDir dir;
    const auto t0 = std::chrono::steady_clock::now();
    PyKmipServer server(dir);
    const auto started = std::chrono::steady_clock::now() - t0;
    WARN("PKI and server start: " << std::chrono::duration_cast<std::chrono::milliseconds>(started).count() << " ms");
    REQUIRE(server.running());
    CHECK(server.port() > 0);
    CHECK(server.endpoint() == "127.0.0.1:" + std::to_string(server.port()));

    struct stat st {};
    REQUIRE(stat(server.client_key().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    REQUIRE(stat(server.ca().c_str(), &st) == 0);

    const std::string uid = server.create_key("disk-kek-1");
    CHECK(server.state(uid) == "ACTIVE");
    const std::string pre = server.create_key("disk-kek-2", false);
    CHECK(pre != uid);
    CHECK(server.state(pre) == "PRE_ACTIVE");
    server.activate(pre);
    CHECK(server.state(pre) == "ACTIVE");

    // Deactivated, then destroyed (an Active key cannot be destroyed).
    CHECK_THROWS_WITH(server.destroy(pre), Contains("PERMISSION_DENIED"));
    server.revoke(pre, false);
    CHECK(server.state(pre) == "DEACTIVATED");
    server.destroy(pre);
    CHECK(server.state(pre) == "NOT_FOUND");

    server.revoke(uid, true);
    CHECK(server.state(uid) == "COMPROMISED");
    CHECK(server.state("4711") == "NOT_FOUND");

    // Another owner's key is invisible; a foreign CA fails in the handshake,
    // a certificate without clientAuth at the KMIP layer.
    const std::string other = server.create_key("other-tenant-key", true, server.pki().client2());
    CHECK(server.state(other, server.pki().client2()) == "ACTIVE");
    CHECK_THROWS_WITH(server.state(other), Contains("PERMISSION_DENIED"));
    CHECK_THROWS_WITH(server.state(other, server.pki().rogue()), Contains("SSLError"));
    CHECK_THROWS_WITH(server.state(other, server.pki().noauth()), Contains("AUTHENTICATION_NOT_SUCCESSFUL"));
}

TEST_CASE("pykmip harness: two servers share one PKI and restart keeps the keys", "[pykmip]")
{
    const TempDir dir;
    PyKmipServer first(dir);
    PyKmipServer second(dir, {first.pki()});
    CHECK(second.port() != first.port());
    CHECK(second.pki().dir() == first.pki().dir());
    CHECK(second.log() != first.log());

    const std::string a = first.create_key("on-first");
    CHECK(second.state(a) == "NOT_FOUND");  // separate databases
    const std::string b = second.create_key("on-second", false);
    CHECK(second.state(b) == "PRE_ACTIVE");

    const auto port = second.port();
    const auto t0 = std::chrono::steady_clock::now();
    second.restart();
    WARN("restart: "
         << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count()
         << " ms");
    CHECK(second.port() == port);
    CHECK(second.state(b) == "PRE_ACTIVE");
    CHECK(first.state(a) == "ACTIVE");
}

TEST_CASE("pykmip harness: stop leaves no process", "[pykmip]")
{
    const TempDir dir;
    const KmipPki pki = KmipPki::make(dir / "shared-pki");
    const auto started = std::chrono::steady_clock::now();
    PyKmipServer server(dir, {pki, true});
    WARN("server start (PKI made before): "
         << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count()
         << " ms");
    const pid_t pid = server.pid();
    REQUIRE(pid > 0);
    CHECK(group_exists(pid));
    CHECK_THAT(processes_with(server.conf()), Contains("pykmip-server"));

    const auto t0 = std::chrono::steady_clock::now();
    CHECK(server.stop() == 0);
    const auto took = std::chrono::steady_clock::now() - t0;
    WARN("stop: " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
    CHECK(took < std::chrono::seconds(5));
    CHECK_FALSE(server.running());
    CHECK_FALSE(group_exists(pid));
    CHECK(processes_with(server.conf()).empty());
    CHECK(server.stop() == 0);  // again: nothing to do
    CHECK_THAT(diskcrypt::test::read_file(server.log()), Contains("Stopping connection service"));
}
