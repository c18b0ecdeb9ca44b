// The agent's new duties that run without device-mapper, end to end with the
// agent and the CLI as processes: audit events in the configured file,
// systemd readiness and socket activation (the test plays systemd), and the
// answers of attach, detach, list and status on a host without
// device-mapper. The kernel side is tested in the QEMU guest (tests/attach).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "agent/dm.hpp"
#include "agent/raii.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::FileDescriptor;
using diskcrypt::test::Result;
using nlohmann::json;

namespace {

struct Agent {
    Agent()
    {
        hsm.create_key({.id = "disk-key-01", .label = "disk key"});
        const std::string policy = diskcrypt::test::write_tests_policy(dir / "policy.toml", {"hsm:disk-key-01"});
        diskcrypt::test::write_file(config, "[agent]\nsocket = \"" + socket +
                                                "\"\ndefault_key = \"hsm:disk-key-01\"\nlock_dir = \"" +
                                                (dir / "lock") + "\"\n" + policy + "[audit]\nfile = \"" + audit +
                                                "\"\njournal = \"never\"\n" + hsm.provider_toml());
        diskcrypt::test::write_file(image, "");
        std::filesystem::resize_file(image, 8ULL << 20U);
    }

    void start() { agent = diskcrypt::test::start_agent({"--config", config}, socket, log); }

    [[nodiscard]] Result cli(std::vector<std::string> args) const
    {
        return diskcrypt::test::run_cli(socket, diskcrypt::test::with_identity(std::move(args), "hsm:disk-key-01"));
    }

    diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm{dir};
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string audit = dir / "audit.jsonl";
    std::string log = dir / "agent.log";
    std::string image = dir / "disk.img";
    std::unique_ptr<diskcrypt::test::Background> agent;
};

// systemd's notification socket, played by the test (sd_notify(3)).
struct NotifySocket {
    explicit NotifySocket(std::string p) : path(std::move(p))
    {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        REQUIRE(path.size() < sizeof(addr.sun_path));
        std::copy(path.begin(), path.end(), &addr.sun_path[0]);
        REQUIRE(bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);
    }
    // One datagram, or "" after timeout_ms.
    [[nodiscard]] std::string receive(int timeout_ms) const
    {
        timeval tv{timeout_ms / 1000, static_cast<suseconds_t>((timeout_ms % 1000) * 1000)};
        (void)setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        std::array<char, 512> buf{};
        const ssize_t n = recv(fd.get(), buf.data(), buf.size() - 1, 0);
        return n > 0 ? std::string(buf.data(), static_cast<std::size_t>(n)) : std::string();
    }

    std::string path;
    FileDescriptor fd{socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
};

bool has_event(const std::vector<json>& events, const json& fields)
{
    for (const auto& e : events) {
        bool all = true;
        for (const auto& [k, v] : fields.items()) {
            all = all && e.contains(k) && e.at(k) == v;
        }
        if (all) {
            return true;
        }
    }
    return false;
}

}  // namespace

TEST_CASE("e2e audit: format, wrap, unwrap, verify and refusals are events with disk, account, key, caller",
          "[e2e][audit]")
{
    Agent a;
    a.start();
    const Result f =
        a.cli({"format", a.image, "--disk-id", "disk-1", "--type", "network-ssd", "--service-account", "sa-tests"});
    REQUIRE(f.status == 0);
    const Result v = a.cli({"verify", a.image, "--disk-id", "disk-2"});
    CHECK(v.status == 11);
    const std::vector<json> events = diskcrypt::test::audit_events(a.audit);
    const json key = {{"provider", "hsm"}, {"id", "disk-key-01"}, {"version", "1"}};
    for (const char* ev : {"wrap", "unwrap", "format"}) {
        INFO(ev);
        CHECK(has_event(events, {{"event", ev},
                                 {"result", "ok"},
                                 {"disk_id", "disk-1"},
                                 {"service_account", "sa-tests"},
                                 {"key", key},
                                 {"device", a.image}}));
    }
    CHECK(
        has_event(events, {{"event", "verify"}, {"result", "refused"}, {"reason", "binding"}, {"disk_id", "disk-2"}}));
    for (const auto& e : events) {
        CHECK(e.at("caller").at("uid") == getuid());
        CHECK(e.at("time").get<std::string>().size() == 20);
    }
    // The format event carries the LUKS UUID of the new header.
    bool uuid_seen = false;
    for (const auto& e : events) {
        uuid_seen = uuid_seen || (e.at("event") == "format" && e.at("luks_uuid").is_string());
    }
    CHECK(uuid_seen);
}

TEST_CASE("e2e attach: without device-mapper every disk op says so (exit 17) and status still answers", "[e2e][attach]")
{
    if (diskcrypt::dm::available()) {
        WARN(
            "this host has device-mapper: the no-device-mapper answers are not checked here (the guest suite "
            "tests attach)");
        return;
    }
    Agent a;
    a.start();
    const std::vector<std::vector<std::string>> ops = {
        {"attach", "/dev/null", "--disk-id", "disk-1", "--type", "network-ssd", "--service-account", "sa-tests"},
        {"detach", "disk-1"},
        {"list"},
        {"status", "disk-1"},
    };
    for (const auto& op : ops) {
        INFO(op.front());
        const Result r = a.cli(op);
        CHECK(r.status == 17);
        CHECK_THAT(r.err, Contains("device-mapper is not available in this kernel"));
        CHECK_THAT(r.err, Contains("hint: load it with 'modprobe dm-mod'"));
    }
    const Result s = a.cli({"--json", "status"});
    REQUIRE(s.status == 0);
    const json j = json::parse(s.out);
    CHECK(j.at("device_mapper") == false);
    CHECK(j.at("attached").is_null());
    const std::vector<json> events = diskcrypt::test::audit_events(a.audit);
    CHECK(has_event(events, {{"event", "attach"},
                             {"result", "failed"},
                             {"reason", "kernel"},
                             {"disk_id", "disk-1"},
                             {"service_account", "sa-tests"}}));
    CHECK(has_event(events, {{"event", "detach"}, {"result", "failed"}, {"reason", "kernel"}}));
}

TEST_CASE("e2e systemd: READY=1 and STOPPING=1 on NOTIFY_SOCKET, the socket passed in LISTEN_FDS", "[e2e][systemd]")
{
    Agent a;
    // The notification socket the agent reports to, as systemd's.
    const NotifySocket notify(a.dir / "notify");
    const std::string& notify_path = notify.path;
    // The listening socket, made by "systemd" (the test) at a path of its choice.
    const std::string activated = a.dir / "activated.sock";
    FileDescriptor listener(socket(AF_UNIX, SOCK_SEQPACKET, 0));
    sockaddr_un laddr{};
    laddr.sun_family = AF_UNIX;
    std::copy(activated.begin(), activated.end(), &laddr.sun_path[0]);
    REQUIRE(bind(listener.get(), reinterpret_cast<const sockaddr*>(&laddr), sizeof(laddr)) == 0);
    REQUIRE(listen(listener.get(), 8) == 0);

    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // The child: the socket at fd 3, LISTEN_PID = itself, as systemd does.
        if (dup2(listener.get(), 3) < 0) {
            _exit(120);
        }
        const std::string listen_pid = std::to_string(getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", listen_pid.c_str(), 1);
        setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
        const int log = open(a.log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(log, 2);
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): execl is a C vararg API
        execl(DISKCRYPT_AGENT_BIN, DISKCRYPT_AGENT_BIN, "--config", a.config.c_str(), nullptr);
        _exit(127);
    }
    listener.reset();
    auto receive = [&notify](int timeout_s) { return notify.receive(timeout_s * 1000); };
    const std::string ready = receive(20);
    CHECK_THAT(ready, Contains("READY=1"));
    // It serves on the passed socket and made no file of its own.
    const Result s = diskcrypt::test::run({DISKCRYPT_CLI_BIN, "--socket", activated, "status"});
    CHECK(s.status == 0);
    CHECK_THAT(s.out, Contains("diskcrypt-agent"));
    CHECK_FALSE(std::filesystem::exists(a.socket));
    REQUIRE(kill(pid, SIGTERM) == 0);
    CHECK_THAT(receive(20), Contains("STOPPING=1"));
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    INFO("agent log:\n" << diskcrypt::test::read_file(a.log));
    CHECK_THAT(diskcrypt::test::read_file(a.log), Contains("listening on the socket passed by systemd"));
    // The socket stays: it belongs to systemd.
    CHECK(std::filesystem::exists(activated));
}

TEST_CASE("e2e systemd: WATCHDOG=1 at half of WATCHDOG_USEC, none without it", "[e2e][systemd]")
{
    Agent a;
    const NotifySocket notify(a.dir / "notify");
    const bool with_watchdog = GENERATE(true, false);
    setenv("NOTIFY_SOCKET", notify.path.c_str(), 1);
    if (with_watchdog) {
        setenv("WATCHDOG_USEC", "200000", 1);  // WatchdogSec=200ms: a ping every 100 ms
    }
    a.start();
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    // The first ping may come before READY=1.
    std::string first = notify.receive(20'000);
    while (!first.empty() && first.find("READY=1") == std::string::npos) {
        first = notify.receive(20'000);
    }
    REQUIRE_THAT(first, Contains("READY=1"));
    int pings = 0;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1000);
    while (std::chrono::steady_clock::now() < until) {
        if (notify.receive(200).find("WATCHDOG=1") != std::string::npos) {
            ++pings;
        }
    }
    INFO("agent log:\n" << diskcrypt::test::read_file(a.log));
    if (with_watchdog) {
        CHECK(pings >= 3);  // about ten in a second; three show that it repeats
    } else {
        CHECK(pings == 0);
    }
}
