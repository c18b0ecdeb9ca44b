#include "tests/support/pykmip.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <deque>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include "agent/raii.hpp"

// NOLINTNEXTLINE(readability-redundant-declaration,cppcoreguidelines-avoid-non-const-global-variables): POSIX
extern char** environ;

namespace diskcrypt::test {

namespace {

// Debian's interpreter: a pyenv python3 earlier in PATH cannot import kmip.
constexpr const char* kPython = "/usr/bin/python3";
constexpr const char* kServerScript = "/usr/bin/pykmip-server";
const std::string kSupportDir = DISKCRYPT_SOURCE_DIR "/tests/support";

// Logged by KmipServer.serve() right after listen().
constexpr const char* kListening = "Starting connection service";
constexpr const char* kBindFailed = "Server failed to bind";

using Clock = std::chrono::steady_clock;

std::uint16_t free_port()
{
    const FileDescriptor s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!s) {
        throw std::runtime_error("socket failed");
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (bind(s.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0 ||
        getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        throw std::runtime_error("cannot find a free port on 127.0.0.1");
    }
    return ntohs(addr.sin_port);
}

// Waits up to `timeout` for `pid` (our child) to exit; its status if it did.
std::optional<int> wait_exit(pid_t pid, std::chrono::milliseconds timeout)
{
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        int ws = 0;
        const pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid) {
            return decode_status(ws);
        }
        if (r < 0 && errno != EINTR) {
            return -1;  // not our child any more
        }
        if (Clock::now() >= deadline) {
            return std::nullopt;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

// Whether process group `pgid` has no process left, waiting up to `timeout`.
bool group_gone(pid_t pgid, std::chrono::milliseconds timeout)
{
    const auto deadline = Clock::now() + timeout;
    while (!(kill(-pgid, 0) != 0 && errno == ESRCH)) {
        if (Clock::now() >= deadline) {
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
}

std::string tail(const std::string& text, std::size_t lines)
{
    std::deque<std::string> last;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        last.push_back(line);
        if (last.size() > lines) {
            last.pop_front();
        }
    }
    std::string out;
    for (const auto& l : last) {
        out += l + "\n";
    }
    return out;
}

}  // namespace

KmipPki KmipPki::make(const std::string& dir)
{
    const Result r = run({"bash", kSupportDir + "/kmip-pki.sh", dir}, {}, {}, 60);
    if (r.status != 0) {
        throw std::runtime_error("kmip-pki.sh " + dir + " failed (" + std::to_string(r.status) + "): " + r.err);
    }
    return KmipPki(dir);
}

PyKmipServer::PyKmipServer(const TempDir& dir, PyKmipOptions options)
    : pki_(options.pki ? std::move(*options.pki) : KmipPki::make(dir / "pki")), debug_log_(options.debug_log)
{
    std::string tmpl = dir / "pykmip-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
        throw std::runtime_error("mkdtemp in " + dir.path() + " failed");
    }
    dir_ = tmpl;
    conf_ = dir_ + "/server.conf";
    log_ = dir_ + "/server.log";
    output_ = dir_ + "/server.out";
    policy_dir_ = dir_ + "/policies";
    database_ = dir_ + "/pykmip.db";
    if (mkdir(policy_dir_.c_str(), 0700) != 0) {
        throw std::runtime_error("mkdir " + policy_dir_);
    }
    // Another test may take the free port before the server binds it: try
    // another one then.
    for (int attempt = 1;; ++attempt) {
        port_ = free_port();
        write_file(conf_,
                   "[server]\n"
                   "hostname=127.0.0.1\n"
                   "port=" +
                       std::to_string(port_) + "\ncertificate_path=" + pki_.server_cert() +
                       "\nkey_path=" + pki_.server_key() + "\nca_path=" + pki_.ca() +
                       "\nauth_suite=TLS1.2\nenable_tls_client_auth=True\npolicy_path=" + policy_dir_ +
                       "\ndatabase_path=" + database_ + "\nlogging_level=" + (debug_log_ ? "DEBUG" : "INFO") + "\n",
                   0600);
        try {
            start();
            return;
        } catch (const std::runtime_error&) {
            if (attempt == 3 || read_file(log_).find(kBindFailed) == std::string::npos) {
                throw;
            }
        }
    }
}

PyKmipServer::~PyKmipServer() { (void)stop(); }

std::string PyKmipServer::endpoint() const { return "127.0.0.1:" + std::to_string(port_); }

std::string PyKmipServer::log_tail(std::size_t lines) const
{
    return "--- " + log_ + ":\n" + tail(read_file(log_), lines) + "--- " + output_ + ":\n" +
           tail(read_file(output_), lines);
}

void PyKmipServer::start()
{
    const std::size_t log_from = read_file(log_).size();
    // Everything the child needs is prepared before fork: between fork and
    // exec it only makes async-signal-safe calls.
    std::vector<std::string> args{kPython, kServerScript, "-f", conf_, "-l", log_};
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
        throw std::runtime_error("fork failed");
    }
    if (pid == 0) {
        // Its own process group (stop() can reach its children), and SIGINT
        // (a clean stop) if this test process dies first.
        (void)setpgid(0, 0);
        (void)prctl(PR_SET_PDEATHSIG, SIGINT);  // NOLINT(cppcoreguidelines-pro-type-vararg)
        if (getppid() != parent) {
            _exit(127);
        }
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg)
        const int out = ::open(output_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        const int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // NOLINT(cppcoreguidelines-pro-type-vararg)
        if (out < 0 || in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) {
            _exit(127);
        }
        execve(argv[0], argv.data(), environ);
        _exit(127);
    }
    (void)setpgid(pid, pid);  // also here: no window in which stop() misses the group
    pid_ = pid;

    const auto deadline = Clock::now() + std::chrono::seconds(15);
    for (;;) {
        const std::string log = read_file(log_);
        if (log.size() > log_from && log.find(kListening, log_from) != std::string::npos) {
            return;
        }
        if (const auto status = wait_exit(pid_, std::chrono::milliseconds(0))) {
            pid_ = -1;
            throw std::runtime_error("pykmip-server exited with status " + std::to_string(*status) +
                                     " while starting\n" + log_tail());
        }
        if (Clock::now() >= deadline) {
            const std::string why = log_tail();
            (void)stop();
            throw std::runtime_error("pykmip-server did not listen on " + endpoint() + " within 15 s\n" + why);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

int PyKmipServer::stop()
{
    if (pid_ <= 0) {
        return 0;
    }
    const pid_t pid = std::exchange(pid_, -1);
    (void)kill(pid, SIGINT);
    std::optional<int> status = wait_exit(pid, std::chrono::seconds(60));
    if (!status) {
        (void)kill(-pid, SIGTERM);
        status = wait_exit(pid, std::chrono::seconds(5));
    }
    if (!status) {
        (void)kill(-pid, SIGKILL);
        status = wait_exit(pid, std::chrono::seconds(5));
    }
    // Its manager and policy monitor end with it; if it died abnormally
    // they are orphans in its group.
    if (!group_gone(pid, std::chrono::seconds(3))) {
        (void)kill(-pid, SIGKILL);
        (void)group_gone(pid, std::chrono::seconds(3));
    }
    return status.value_or(-1);
}

int PyKmipServer::crash()
{
    if (pid_ <= 0) {
        return 0;
    }
    const pid_t pid = std::exchange(pid_, -1);
    (void)kill(-pid, SIGKILL);
    const std::optional<int> status = wait_exit(pid, std::chrono::seconds(5));
    (void)group_gone(pid, std::chrono::seconds(3));
    return status.value_or(-1);
}

void PyKmipServer::restart(bool crash_first)
{
    (void)(crash_first ? crash() : stop());
    start();
}

Result PyKmipServer::admin(const std::vector<std::string>& args, const std::optional<KmipIdentity>& as) const
{
    const KmipIdentity who = as ? *as : pki_.client();
    std::vector<std::string> argv{kPython,  kSupportDir + "/pykmip_admin.py",
                                  "--host", "127.0.0.1",
                                  "--port", std::to_string(port_),
                                  "--cert", who.cert,
                                  "--key",  who.key,
                                  "--ca",   pki_.ca()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, {}, {}, 60);
}

std::string PyKmipServer::admin_ok(const std::vector<std::string>& args, const std::optional<KmipIdentity>& as) const
{
    const Result r = admin(args, as);
    if (r.status != 0) {
        throw std::runtime_error("pykmip_admin.py failed (" + std::to_string(r.status) + "): " + r.err);
    }
    std::string out = r.out;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) {
        out.pop_back();
    }
    return out;
}

std::string PyKmipServer::create_key(const std::string& name, bool activate,
                                     const std::optional<KmipIdentity>& as) const
{
    return create_keys(name, 1, activate, false, as).front();
}

std::vector<std::string> PyKmipServer::create_keys(const std::string& name, int count, bool activate, bool same_second,
                                                   const std::optional<KmipIdentity>& as) const
{
    std::vector<std::string> args{"create", name, "--count", std::to_string(count)};
    if (activate) {
        args.emplace_back("--activate");
    }
    if (same_second) {
        args.emplace_back("--same-second");
    }
    const std::string out = admin_ok(args, as);
    std::vector<std::string> uids;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        if (!line.empty()) {
            uids.push_back(line);
        }
    }
    if (uids.size() != static_cast<std::size_t>(count)) {
        throw std::runtime_error("pykmip_admin.py create printed " + std::to_string(uids.size()) + " UIDs, not " +
                                 std::to_string(count) + ": " + out);
    }
    return uids;
}

void PyKmipServer::activate(const std::string& uid, const std::optional<KmipIdentity>& as) const
{
    (void)admin_ok({"activate", uid}, as);
}

void PyKmipServer::revoke(const std::string& uid, bool compromised, const std::optional<KmipIdentity>& as) const
{
    (void)admin_ok({"revoke", uid, compromised ? "compromised" : "deactivated"}, as);
}

void PyKmipServer::destroy(const std::string& uid, const std::optional<KmipIdentity>& as) const
{
    (void)admin_ok({"destroy", uid}, as);
}

std::string PyKmipServer::state(const std::string& uid, const std::optional<KmipIdentity>& as) const
{
    return admin_ok({"state", uid}, as);
}

}  // namespace diskcrypt::test
