// Hostile peers against the agent as a process: bytes that are not UTF-8,
// peers of other uids holding connection slots, the status group under socket
// activation, and a stop request while requests wait or hang.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "agent/ipc/protocol.hpp"
#include "agent/ipc/server.hpp"
#include "agent/raii.hpp"
#include "agent/text.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::FileDescriptor;
using diskcrypt::test::Result;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct PeerAgent {
    explicit PeerAgent(const std::string& agent_extra = "", const std::string& audit_file = "")
    {
        REQUIRE(chmod(dir.path().c_str(), 0755) == 0);  // other uids reach the socket
        if (!audit_file.empty()) {
            audit = audit_file;
        }
        const std::string policy = diskcrypt::test::write_tests_policy(dir / "policy.toml", {"hsm:disk-key-01"});
        diskcrypt::test::write_file(config, "[agent]\nsocket = \"" + socket + "\"\nlock_dir = \"" + lock_dir + "\"\n" +
                                                policy + agent_extra + "[audit]\nfile = \"" + audit +
                                                "\"\njournal = \"never\"\n" + hsm.provider_toml());
    }

    void start() { agent = diskcrypt::test::start_agent({"--config", config}, socket, log); }

    [[nodiscard]] Result cli(std::vector<std::string> args) const
    {
        return diskcrypt::test::run_cli(socket, std::move(args));
    }

    diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm{dir};
    std::string socket = dir / "agent.sock";
    std::string config = dir / "agent.toml";
    std::string audit = dir / "audit.jsonl";
    std::string log = dir / "agent.log";
    std::string lock_dir = dir / "lock";
    std::unique_ptr<diskcrypt::test::Background> agent;
};

FileDescriptor connect_to(const std::string& path)
{
    FileDescriptor fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::copy(path.begin(), path.end(), &addr.sun_path[0]);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
    if (!fd || connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        return {};
    }
    return fd;
}

// One message, or "" on EOF/timeout.
std::string receive(int fd, int timeout_ms)
{
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) {
        return {};
    }
    std::vector<char> buf(diskcrypt::proto::kMaxMessage + 1);
    const ssize_t n = recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    return n > 0 ? std::string(buf.data(), static_cast<std::size_t>(n)) : std::string();
}

json exchange(int fd, const std::string& request, int timeout_ms = 10000)
{
    if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
        return nullptr;
    }
    const std::string r = receive(fd, timeout_ms);
    return r.empty() ? json(nullptr) : json::parse(r);
}

const std::string kStatus = R"({"protocol":1,"op":"status"})";

// A child process as uid:gid that connects `n` times to `socket` and reports
// on `report` how many connections were answered busy at once; it keeps them
// open until `hold` is closed by the parent.
pid_t hold_connections(const std::string& socket, uid_t uid, gid_t gid, int n, int& accepted, int& busy,
                       FileDescriptor& hold)
{
    std::array<int, 2> report{};
    std::array<int, 2> wait{};
    REQUIRE(pipe2(report.data(), O_CLOEXEC) == 0);
    REQUIRE(pipe2(wait.data(), O_CLOEXEC) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(report[0]);
        close(wait[1]);
        if (setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
            _exit(120);
        }
        std::vector<FileDescriptor> conns;
        conns.reserve(static_cast<std::size_t>(n));
        for (int i = 0; i < n; ++i) {
            conns.push_back(connect_to(socket));
        }
        // A refused connection has its answer at once; an accepted one waits
        // for a request.
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        int ok = 0;
        int refused = 0;
        for (const auto& c : conns) {
            const std::string r = c ? receive(c.get(), 0) : std::string("x");
            if (r.empty()) {
                ++ok;  // accepted and waiting for a request
            } else {
                ++refused;
            }
        }
        const std::array<int, 2> counts{ok, refused};
        [[maybe_unused]] const ssize_t sent = write(report[1], counts.data(), sizeof(counts));
        char c = 0;
        [[maybe_unused]] const ssize_t got = read(wait[0], &c, 1);  // until the parent closes it
        _exit(0);
    }
    close(report[1]);
    close(wait[0]);
    hold.reset(wait[1]);
    std::array<int, 2> counts{-1, -1};
    REQUIRE(read(report[0], counts.data(), sizeof(counts)) == static_cast<ssize_t>(sizeof(counts)));
    close(report[0]);
    accepted = counts[0];
    busy = counts[1];
    return pid;
}

}  // namespace

TEST_CASE("e2e hostile peer: bytes that are not UTF-8 get a protocol error and the agent serves on",
          "[e2e][hostile-peer]")
{
    PeerAgent a;
    a.start();
    {
        const FileDescriptor fd = connect_to(a.socket);
        REQUIRE(fd);
        const std::vector<std::string> hostile = {
            "\xff",
            R"({"protocol":1,"op":"st)" + std::string("\xff\xfe") + R"("})",
            R"({"protocol":1,"op":"status","args":{")" + std::string("\xc3\x28") + R"(":1}})",
            R"({"protocol":1,"op":"status","args":{"disk_id":")" + std::string("\xed\xa0\x80") + R"("}})",
            R"({"protocol":1,"op":"\u001b[31m\u00ff"})",
        };
        for (const auto& request : hostile) {
            INFO(diskcrypt::printable(request));
            const json r = exchange(fd.get(), request);
            REQUIRE(r.is_object());
            CHECK(r.at("ok") == false);
            CHECK(r.at("error").at("code") == "protocol");
            CHECK(r.at("error").at("exit") == 13);
            for (const char c : r.at("error").at("message").get<std::string>()) {
                CHECK((c >= 0x20 && c <= 0x7e));
            }
        }
        // The same connection still works.
        CHECK(exchange(fd.get(), kStatus).at("ok") == true);
    }
    const Result s = a.cli({"status"});
    CHECK(s.status == 0);
    CHECK_THAT(s.out, Contains("diskcrypt-agent"));

    // The five refusals of that connection are one audit event with the count.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    int protocol_events = 0;
    for (const auto& e : diskcrypt::test::audit_events(a.audit)) {
        if (e.at("reason") == "protocol") {
            ++protocol_events;
            CHECK(e.at("result") == "refused");
            CHECK_THAT(e.at("message").get<std::string>(), Contains("5 requests refused on one connection"));
        }
    }
    CHECK(protocol_events == 1);
    // The log is printable too.
    for (const char c : diskcrypt::test::read_file(a.log)) {
        CHECK(((c >= 0x20 && c <= 0x7e) || c == '\n'));
    }
}

TEST_CASE("e2e hostile peer: other uids cannot take root's connection slots", "[e2e][hostile-peer]")
{
    PeerAgent a("status_group = \"nogroup\"\n");
    a.start();
    const gid_t nogroup = 65534;
    std::vector<FileDescriptor> holds;
    std::vector<pid_t> children;
    int total = 0;
    // Eight uids try eight connections each, the first one nine.
    for (uid_t uid = 60001; uid <= 60008; ++uid) {
        int accepted = 0;
        int busy = 0;
        FileDescriptor hold;
        const int n = uid == 60001 ? 9 : 8;
        children.push_back(hold_connections(a.socket, uid, nogroup, n, accepted, busy, hold));
        holds.push_back(std::move(hold));
        INFO("uid " << uid);
        CHECK(accepted + busy == n);
        if (uid == 60001) {
            CHECK(accepted == static_cast<int>(diskcrypt::kMaxConnectionsPerUid));
            CHECK(busy == 1);
        }
        total += accepted;
    }
    CHECK(total == static_cast<int>(diskcrypt::kMaxConnections - diskcrypt::kRootConnections));
    // A non-root caller over the limit is answered busy (exit 15).
    const std::string copy = a.dir / "diskcrypt";
    std::filesystem::copy_file(DISKCRYPT_CLI_BIN, copy);
    REQUIRE(chmod(copy.c_str(), 0755) == 0);
    const Result over = diskcrypt::test::run(
        {"setpriv", "--reuid=60009", "--regid=65534", "--clear-groups", copy, "--socket", a.socket, "status"});
    CHECK(over.status == 15);
    CHECK_THAT(over.err, Contains("connections of non-root callers, all it allows (16 are kept for root)"));
    // Root is still served, on several connections at once.
    std::vector<FileDescriptor> root;
    for (std::size_t i = 0; i < diskcrypt::kRootConnections - 1; ++i) {
        root.push_back(connect_to(a.socket));
    }
    const Result s = a.cli({"status"});
    CHECK(s.status == 0);
    INFO(s.err);
    for (const auto& fd : root) {
        CHECK(exchange(fd.get(), kStatus).at("ok") == true);
    }
    holds.clear();
    for (const pid_t pid : children) {
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status));
    }
    // The log says it, without one line per refused connection.
    const std::string log = diskcrypt::test::read_file(a.log);
    CHECK_THAT(log, Contains("refused a connection"));
}

TEST_CASE("e2e hostile peer: a non-root connection ends after its lifetime, however busy", "[e2e][hostile-peer]")
{
    PeerAgent a("status_group = \"nogroup\"\n");
    a.start();
    std::array<int, 2> report{};
    REQUIRE(pipe2(report.data(), O_CLOEXEC) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(report[0]);
        if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(60010) != 0) {
            _exit(120);
        }
        const FileDescriptor fd = connect_to(a.socket);
        const auto start = Clock::now();
        int answered = 0;
        // A request every second, never idle: the idle timer alone never fires.
        while (Clock::now() - start < std::chrono::seconds(diskcrypt::kNonRootLifetimeSeconds + 15)) {
            const json r = exchange(fd.get(), kStatus, 3000);
            if (!r.is_object()) {
                break;
            }
            ++answered;
            std::this_thread::sleep_for(std::chrono::seconds(1));
        }
        const auto secs =
            static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start).count());
        const std::array<int, 2> out{secs, answered};
        [[maybe_unused]] const ssize_t sent = write(report[1], out.data(), sizeof(out));
        _exit(0);
    }
    close(report[1]);
    std::array<int, 2> got{-1, -1};
    REQUIRE(read(report[0], got.data(), sizeof(got)) == static_cast<ssize_t>(sizeof(got)));
    close(report[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    INFO("closed after " << got[0] << " s, " << got[1] << " answers");
    CHECK(got[1] > 5);
    CHECK(got[0] >= diskcrypt::kNonRootLifetimeSeconds - 1);
    CHECK(got[0] <= diskcrypt::kNonRootLifetimeSeconds + 4);
}

TEST_CASE("e2e hostile peer: SIGTERM ends a wait for a disk lock at once, with an answer", "[e2e][stop]")
{
    PeerAgent a;
    a.start();
    // Another holder of disk-1's lock (as a second agent would be).
    std::filesystem::create_directories(a.lock_dir);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
    const FileDescriptor lock(open((a.lock_dir + "/disk-1.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    REQUIRE(lock);
    REQUIRE(flock(lock.get(), LOCK_EX) == 0);
    const FileDescriptor fd = connect_to(a.socket);
    REQUIRE(fd);
    const std::string attach =
        R"({"protocol":1,"op":"attach","args":{"device":"/dev/null","disk_id":"disk-1","type":"network-ssd",)"
        R"("key":"hsm:disk-key-01","service_account":"sa-tests"}})";
    REQUIRE(send(fd.get(), attach.data(), attach.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(attach.size()));
    std::this_thread::sleep_for(std::chrono::milliseconds(700));  // it waits for the lock now
    const auto t0 = Clock::now();
    REQUIRE(kill(a.agent->pid(), SIGTERM) == 0);
    const std::string r = receive(fd.get(), 8000);
    int status = -1;
    for (int i = 0; i < 80 && !a.agent->exited(status); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    INFO("agent log:\n" << diskcrypt::test::read_file(a.log));
    CHECK(took < 3000);
    REQUIRE_FALSE(r.empty());
    const json j = json::parse(r);
    CHECK(j.at("ok") == false);
    CHECK(j.at("error").at("code") == "agent-unavailable");
    CHECK_THAT(j.at("error").at("message").get<std::string>(),
               Contains("the agent is stopping: nothing was done to disk disk-1"));
    CHECK(status == 0);
}

TEST_CASE("e2e hostile peer: SIGTERM while a request hangs: answered and exited after the grace period", "[e2e][stop]")
{
    diskcrypt::test::TempDir fifo_dir;
    const std::string fifo = fifo_dir / "audit.fifo";
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    // A reader while the agent starts (it opens the audit file once), then
    // none: the next audit event's open() hangs, as a stuck sink would.
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
    FileDescriptor reader(open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    REQUIRE(reader);
    PeerAgent a("", fifo);
    a.start();
    CHECK(a.cli({"status"}).status == 0);
    reader.reset();
    const FileDescriptor fd = connect_to(a.socket);
    REQUIRE(fd);
    const std::string detach = R"({"protocol":1,"op":"detach","args":{"disk_id":"disk-1"}})";
    REQUIRE(send(fd.get(), detach.data(), detach.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(detach.size()));
    std::this_thread::sleep_for(std::chrono::milliseconds(700));  // it hangs in the audit sink now
    const auto t0 = Clock::now();
    REQUIRE(kill(a.agent->pid(), SIGTERM) == 0);
    const std::string r = receive(fd.get(), 12000);
    int status = -1;
    for (int i = 0; i < 120 && !a.agent->exited(status); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    INFO("agent log:\n" << diskcrypt::test::read_file(a.log));
    CHECK(took >= diskcrypt::kStopGraceSeconds * 1000 - 500);
    CHECK(took < 8000);
    REQUIRE_FALSE(r.empty());
    const json j = json::parse(r);
    CHECK(j.at("error").at("code") == "agent-unavailable");
    CHECK_THAT(j.at("error").at("message").get<std::string>(),
               Contains("the agent stopped before this request finished"));
    CHECK(status == 0);
    CHECK_THAT(diskcrypt::test::read_file(a.log), Contains("still running"));
    CHECK_FALSE(std::filesystem::exists(a.socket));
}

namespace {

// Plays systemd: a listening socket at `path` with `gid` and `mode`, passed
// to the agent as fd 3. Returns the agent's pid.
pid_t start_activated(const PeerAgent& a, const std::string& path, gid_t gid, mode_t mode)
{
    FileDescriptor listener(socket(AF_UNIX, SOCK_SEQPACKET, 0));
    sockaddr_un laddr{};
    laddr.sun_family = AF_UNIX;
    std::copy(path.begin(), path.end(), &laddr.sun_path[0]);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
    REQUIRE(bind(listener.get(), reinterpret_cast<const sockaddr*>(&laddr), sizeof(laddr)) == 0);
    REQUIRE(chown(path.c_str(), 0, gid) == 0);
    REQUIRE(chmod(path.c_str(), mode) == 0);
    REQUIRE(listen(listener.get(), 8) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (dup2(listener.get(), 3) < 0) {
            _exit(120);
        }
        const std::string listen_pid = std::to_string(getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", listen_pid.c_str(), 1);
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
        const int log = open(a.log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(log, 2);
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): execl is a C vararg API
        execl(DISKCRYPT_AGENT_BIN, DISKCRYPT_AGENT_BIN, "--config", a.config.c_str(), nullptr);
        _exit(127);
    }
    return pid;
}

int wait_exit(pid_t pid, int timeout_s)
{
    for (int i = 0; i < timeout_s * 10; ++i) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return -1;
}

}  // namespace

TEST_CASE("e2e systemd: a status_group the passed socket does not grant is refused at start", "[e2e][systemd]")
{
    PeerAgent a("status_group = \"nogroup\"\n");
    const std::string activated = a.dir / "activated.sock";
    const pid_t pid = start_activated(a, activated, 0, 0600);
    const int status = wait_exit(pid, 20);
    const std::string log = diskcrypt::test::read_file(a.log);
    INFO(log);
    CHECK(status == 12);
    CHECK_THAT(log,
               Contains("[agent] status_group = \"nogroup\" (gid 65534) disagrees with the socket systemd passed: " +
                        activated + " (mode 0600, group root) grants status and list to no group"));
    CHECK_THAT(log, Contains("set SocketGroup=nogroup and SocketMode=0660 in diskcrypt-agent.socket"));
}

TEST_CASE("e2e systemd: the passed socket's group is the status group", "[e2e][systemd]")
{
    PeerAgent a;  // no status_group configured
    const std::string activated = a.dir / "activated.sock";
    const pid_t pid = start_activated(a, activated, 65534, 0660);
    REQUIRE(diskcrypt::test::wait_for_path(activated));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const std::string copy = a.dir / "diskcrypt";
    std::filesystem::copy_file(DISKCRYPT_CLI_BIN, copy);
    REQUIRE(chmod(copy.c_str(), 0755) == 0);
    Result r;
    for (int i = 0; i < 50; ++i) {
        r = diskcrypt::test::run({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", copy, "--socket",
                                  activated, "--json", "status"});
        if (r.status != 3) {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    INFO(r.err << diskcrypt::test::read_file(a.log));
    CHECK(r.status == 0);
    if (r.status == 0) {
        CHECK(json::parse(r.out).at("status_group") == "nogroup");
    }
    // Another uid outside the group is still refused.
    r = diskcrypt::test::run(
        {"setpriv", "--reuid=65534", "--regid=100", "--clear-groups", copy, "--socket", activated, "status"});
    CHECK(r.status == 4);
    REQUIRE(kill(pid, SIGTERM) == 0);
    CHECK(wait_exit(pid, 20) == 0);
    CHECK_THAT(diskcrypt::test::read_file(a.log), Contains("status group: nogroup (from the socket file)"));
}
