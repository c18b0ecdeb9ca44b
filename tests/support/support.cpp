#include "tests/support/support.hpp"

#include "tests/support/luks2_layout.hpp"

#include <fcntl.h>
#include <openssl/sha.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <thread>

// NOLINTNEXTLINE(readability-redundant-declaration,cppcoreguidelines-avoid-non-const-global-variables): POSIX
extern char** environ;

namespace diskcrypt::test {

namespace {

// argv and envp for posix_spawn, kept alive while in use.
struct CArgs {
    std::vector<std::string> strings;
    std::vector<char*> ptrs;
    explicit CArgs(std::vector<std::string> s) : strings(std::move(s))
    {
        for (auto& x : strings) {
            ptrs.push_back(x.data());
        }
        ptrs.push_back(nullptr);
    }
};

CArgs make_env(const std::map<std::string, std::string>& extra)
{
    std::map<std::string, std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string kv(*e);
        const auto eq = kv.find('=');
        if (eq != std::string::npos) {
            env[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
    }
    for (const auto& [k, v] : extra) {
        env[k] = v;
    }
    std::vector<std::string> out;
    out.reserve(env.size());
    for (const auto& [k, v] : env) {
        std::string kv = k;
        kv += '=';
        kv += v;
        out.push_back(std::move(kv));
    }
    return CArgs(out);
}

}  // namespace

int decode_status(int ws)
{
    if (WIFEXITED(ws)) {
        return WEXITSTATUS(ws);
    }
    if (WIFSIGNALED(ws)) {
        return 128 + WTERMSIG(ws);
    }
    return -1;
}

TempDir::TempDir()
{
    std::string tmpl = "/dev/shm/diskcrypt-test-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
        throw std::runtime_error("mkdtemp failed");
    }
    path_ = tmpl;
}

TempDir::~TempDir()
{
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

Result run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
           const std::string& input, int timeout_s)
{
    std::array<int, 2> in{-1, -1};
    std::array<int, 2> out{-1, -1};
    std::array<int, 2> err{-1, -1};
    if (pipe2(in.data(), O_CLOEXEC) != 0 || pipe2(out.data(), O_CLOEXEC) != 0 || pipe2(err.data(), O_CLOEXEC) != 0) {
        throw std::runtime_error("pipe2 failed");
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    CArgs args(argv);
    CArgs envp = make_env(env);
    pid_t pid = -1;
    const int rc = posix_spawnp(&pid, args.ptrs[0], &fa, nullptr, args.ptrs.data(), envp.ptrs.data());
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (rc != 0) {
        close(in[1]);
        close(out[0]);
        close(err[0]);
        Result r;
        r.status = 127;
        r.err = "cannot start " + argv[0] + ": " + std::strerror(rc);
        return r;
    }
    // Feed stdin (small inputs only) and close it.
    std::size_t written = 0;
    while (written < input.size()) {
        const ssize_t n = write(in[1], input.data() + written, input.size() - written);
        if (n <= 0) {
            break;
        }
        written += static_cast<std::size_t>(n);
    }
    close(in[1]);

    Result r;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    std::array<pollfd, 2> fds{{{out[0], POLLIN, 0}, {err[0], POLLIN, 0}}};
    int open_fds = 2;
    std::array<char, 4096> buf{};
    while (open_fds > 0) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            kill(pid, SIGKILL);
            break;
        }
        if (poll(fds.data(), fds.size(), static_cast<int>(left.count())) < 0 && errno != EINTR) {
            break;
        }
        for (std::size_t i = 0; i < fds.size(); ++i) {
            if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
                const ssize_t n = read(fds[i].fd, buf.data(), buf.size());
                if (n <= 0) {
                    close(fds[i].fd);
                    fds[i].fd = -1;
                    --open_fds;
                } else {
                    (i == 0 ? r.out : r.err).append(buf.data(), static_cast<std::size_t>(n));
                }
            }
        }
    }
    for (auto& f : fds) {
        if (f.fd >= 0) {
            close(f.fd);
        }
    }
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    r.status = decode_status(ws);
    return r;
}

Result run_ok(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
              const std::string& input)
{
    Result r = run(argv, env, input);
    INFO("command: " << argv[0] << (argv.size() > 1 ? " " + argv[1] : std::string()) << "\nstdout: " << r.out
                     << "\nstderr: " << r.err);
    REQUIRE(r.status == 0);
    return r;
}

Background::Background(const std::vector<std::string>& argv, const std::string& log_file,
                       const std::map<std::string, std::string>& env)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    CArgs args(argv);
    CArgs envp = make_env(env);
    const int rc = posix_spawnp(&pid_, args.ptrs[0], &fa, nullptr, args.ptrs.data(), envp.ptrs.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        throw std::runtime_error("cannot start " + argv[0]);
    }
}

Background::~Background() { (void)stop(); }

bool Background::exited(int& status)
{
    if (status_) {
        status = *status_;
        return true;
    }
    int ws = 0;
    if (waitpid(pid_, &ws, WNOHANG) == pid_) {
        status_ = decode_status(ws);
        status = *status_;
        return true;
    }
    return false;
}

int Background::stop(int timeout_s)
{
    int status = 0;
    if (exited(status)) {
        return status;
    }
    kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
        if (exited(status)) {
            return status;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill(pid_, SIGKILL);
    int ws = 0;
    waitpid(pid_, &ws, 0);
    status_ = decode_status(ws);
    return *status_;
}

std::string read_file(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

std::size_t count_events(const std::vector<nlohmann::json>& events, const nlohmann::json& fields, std::size_t from)
{
    std::size_t n = 0;
    for (std::size_t i = from; i < events.size(); ++i) {
        bool all = true;
        for (const auto& [k, v] : fields.items()) {
            all = all && events[i].contains(k) && events[i].at(k) == v;
        }
        n += all ? 1 : 0;
    }
    return n;
}

std::vector<nlohmann::json> audit_events(const std::string& file)
{
    std::vector<nlohmann::json> out;
    std::istringstream in(read_file(file));
    std::string line;
    while (std::getline(in, line)) {
        out.push_back(nlohmann::json::parse(line));
    }
    return out;
}

std::vector<std::uint8_t> read_bytes(const std::string& path)
{
    const std::string s = read_file(path);
    return {s.begin(), s.end()};
}

void write_file(const std::string& path, const std::string& data, mode_t mode)
{
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out << data;
    }
    if (chmod(path.c_str(), mode) != 0) {
        throw std::runtime_error("chmod " + path);
    }
}

std::vector<std::string> list_files(const std::string& dir)
{
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
        if (e.is_regular_file()) {
            out.push_back(e.path().string());
        }
    }
    return out;
}

bool wait_for_path(const std::string& path, int timeout_s)
{
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
        if (access(path.c_str(), F_OK) == 0) {
            return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

bool contains(const std::string& haystack, const std::string& needle)
{
    return haystack.find(needle) != std::string::npos;
}

std::unique_ptr<Background> start_agent(const std::vector<std::string>& args, const std::string& socket,
                                        const std::string& log, const std::vector<std::string>& prefix)
{
    std::vector<std::string> argv = prefix;
    argv.emplace_back(DISKCRYPT_AGENT_BIN);
    argv.insert(argv.end(), args.begin(), args.end());
    auto agent = std::make_unique<Background>(argv, log);
    if (!wait_for_path(socket)) {
        FAIL("the agent did not create its socket " << socket << "; log:\n" << read_file(log));
    }
    return agent;
}

Result run_cli(const std::string& socket, std::vector<std::string> args)
{
    args.insert(args.begin(), {DISKCRYPT_CLI_BIN, "--socket", socket});
    return run(args);
}

std::string tests_policy(const std::vector<std::string>& keys)
{
    std::string p;
    for (const std::string& k : keys) {
        p += "[keys.\"" + k + "\"]\nfolder = \"tests\"\n";
    }
    p += "[service_accounts." + std::string(kServiceAccount) + "]\nfolder = \"tests\"\n";
    p += "[[bindings]]\nsubject = \"serviceAccount:" + std::string(kServiceAccount) +
         "\"\nrole = \"kms.keys.encrypterDecrypter\"\nresource = \"folder:tests\"\n";
    p += "[[bindings]]\nsubject = \"userAccount:" + std::string(kUser) +
         "\"\nrole = \"editor\"\nresource = \"folder:tests\"\n";
    return p;
}

std::string write_tests_policy(const std::string& path, const std::vector<std::string>& keys)
{
    write_file(path, tests_policy(keys), 0644);
    return "policy = \"" + path + "\"\n";
}

std::vector<std::string> with_identity(std::vector<std::string> args, const std::string& key)
{
    const auto op = std::find_if(args.begin(), args.end(),
                                 [](const std::string& a) { return a == "format" || a == "verify" || a == "attach"; });
    if (op == args.end()) {
        return args;
    }
    const bool format = *op == "format";
    const auto add = [&args](const std::string& option, std::string_view value) {
        if (std::find(args.begin(), args.end(), option) == args.end()) {
            args.push_back(option);
            args.emplace_back(value);
        }
    };
    add("--service-account", kServiceAccount);
    if (format) {
        add("--user", kUser);
    } else {
        add("--key", key);
    }
    return args;
}

namespace {

using namespace luks2;  // NOLINT(google-build-using-namespace): the layout's names
constexpr std::size_t kJsonAt = kBinaryHeader;

std::size_t hdr_size(const std::vector<std::uint8_t>& image)
{
    REQUIRE(image.size() >= kJsonAt);
    std::uint64_t n = 0;
    for (std::size_t i = 0; i < 8; ++i) {
        n = (n << 8U) | image[kOffHdrSize + i];
    }
    REQUIRE(n > kJsonAt);
    REQUIRE(image.size() >= 2 * n);
    return static_cast<std::size_t>(n);
}

std::string c_string(const std::uint8_t* p, std::size_t max)
{
    std::size_t n = 0;
    while (n < max && p[n] != 0) {
        ++n;
    }
    return {reinterpret_cast<const char*>(p), n};  // NOLINT(cppcoreguidelines-pro-type-reinterpret-cast)
}

}  // namespace

Luks2Header read_luks2(const std::string& image)
{
    const std::vector<std::uint8_t> bytes = read_bytes(image);
    const std::size_t size = hdr_size(bytes);
    return {c_string(bytes.data() + kJsonAt, size - kJsonAt), c_string(bytes.data() + kOffUuid, kUuidBytes)};
}

void write_luks2(const std::string& image, const Luks2Header& header)
{
    std::vector<std::uint8_t> bytes = read_bytes(image);
    const std::size_t size = hdr_size(bytes);
    REQUIRE(header.json.size() < size - kJsonAt);
    REQUIRE(header.uuid.size() < kUuidBytes);
    for (const std::size_t copy : {std::size_t{0}, size}) {
        std::uint8_t* h = bytes.data() + copy;
        std::fill(h + kOffUuid, h + kOffUuid + kUuidBytes, 0);
        std::copy(header.uuid.begin(), header.uuid.end(), h + kOffUuid);
        std::fill(h + kJsonAt, h + size, 0);
        std::copy(header.json.begin(), header.json.end(), h + kJsonAt);
        std::fill(h + kOffCsum, h + kOffCsum + kCsumBytes, 0);
        std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
        SHA256(h, size, digest.data());
        std::copy(digest.begin(), digest.end(), h + kOffCsum);
    }
    const int fd = ::open(image.c_str(), O_WRONLY | O_CLOEXEC);  // NOLINT(cppcoreguidelines-pro-type-vararg)
    REQUIRE(fd >= 0);
    const auto n = pwrite(fd, bytes.data(), 2 * size, 0);
    ::close(fd);
    REQUIRE(n == static_cast<ssize_t>(2 * size));
}

}  // namespace diskcrypt::test
