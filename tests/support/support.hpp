// Helpers for diskcrypt's host tests: temporary directories on tmpfs, running
// programs with captured output, reading and writing files.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace diskcrypt::test {

// A fresh directory under /dev/shm (tmpfs: nothing reaches a disk), removed
// with its contents on destruction.
class TempDir {
public:
    TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    TempDir(TempDir&&) = delete;
    TempDir& operator=(TempDir&&) = delete;
    ~TempDir();
    [[nodiscard]] const std::string& path() const { return path_; }
    [[nodiscard]] std::string operator/(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

// A wait status as an exit status: the code, 128+signal when killed, -1 otherwise.
int decode_status(int ws);

struct Result {
    int status = -1;  // exit status, or 128+signal
    std::string out;
    std::string err;
};

// Runs argv[0] (searched in PATH) with extra environment variables, feeding
// `input` on stdin; waits at most `timeout_s` seconds (then kills it).
Result run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {},
           const std::string& input = {}, int timeout_s = 60);

// Like run(), and fails the current test (Catch REQUIRE) if the status is not 0.
Result run_ok(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {},
              const std::string& input = {});

// A program left running in the background (stdout and stderr to a file);
// SIGTERM and wait on destruction.
class Background {
public:
    Background(const std::vector<std::string>& argv, const std::string& log_file,
               const std::map<std::string, std::string>& env = {});
    Background(const Background&) = delete;
    Background& operator=(const Background&) = delete;
    Background(Background&&) = delete;
    Background& operator=(Background&&) = delete;
    ~Background();
    [[nodiscard]] pid_t pid() const { return pid_; }
    // SIGTERM, then wait; returns the exit status (128+signal if killed).
    int stop(int timeout_s = 10);
    // Whether it has exited; if so, its status in `status`.
    bool exited(int& status);

private:
    pid_t pid_ = -1;
    std::optional<int> status_;
};

std::string read_file(const std::string& path);
// The audit file's lines, each parsed as JSON.
std::vector<nlohmann::json> audit_events(const std::string& file);
// How many of `events`, from index `from` on, have every field of `fields`.
std::size_t count_events(const std::vector<nlohmann::json>& events, const nlohmann::json& fields, std::size_t from = 0);
void write_file(const std::string& path, const std::string& data, mode_t mode = 0600);
std::vector<std::uint8_t> read_bytes(const std::string& path);
// Every regular file below `dir`, recursively.
std::vector<std::string> list_files(const std::string& dir);
// Waits until `path` exists (up to timeout_s).
bool wait_for_path(const std::string& path, int timeout_s = 10);
bool contains(const std::string& haystack, const std::string& needle);

// diskcrypt-agent started with `args` (after the program name), its output to
// `log`; returns once `socket` exists, and fails the test with the log if it
// does not appear.
// With `prefix`, the agent runs under that command (e.g. strace).
std::unique_ptr<Background> start_agent(const std::vector<std::string>& args, const std::string& socket,
                                        const std::string& log, const std::vector<std::string>& prefix = {});
// The diskcrypt CLI run with `--socket socket` before `args`.
Result run_cli(const std::string& socket, std::vector<std::string> args);

// The host tests' access policy (agent/README.md, "Access policy"): the keys
// named (PROVIDER:KEY_ID) and kServiceAccount are in folder "tests", where
// serviceAccount:kServiceAccount holds kms.keys.encrypterDecrypter and
// userAccount:kUser holds editor.
inline constexpr std::string_view kServiceAccount = "sa-tests";
inline constexpr std::string_view kUser = "provisioner";
std::string tests_policy(const std::vector<std::string>& keys);
// "policy = \"PATH\"\n" for [agent], after writing tests_policy(keys) to PATH
// (0644: the agent refuses a policy others may write).
std::string write_tests_policy(const std::string& path, const std::vector<std::string>& keys);
// The identity options the control plane passes, added to a format, verify
// or attach command line that does not name them: format --service-account
// kServiceAccount --user kUser; verify and attach --service-account
// kServiceAccount --key `key`. Attach's --type is the test's to name.
std::vector<std::string> with_identity(std::vector<std::string> args, const std::string& key);

// A LUKS2 header in an image file, edited as an attacker with write access to
// the storage would: the metadata JSON and the UUID of both header copies are
// rewritten with fresh SHA-256 checksums, so libcryptsetup loads the result.
struct Luks2Header {
    std::string json;  // the metadata JSON (any bytes)
    std::string uuid;  // the binary header's UUID field (any bytes, < 40)
};
Luks2Header read_luks2(const std::string& image);
void write_luks2(const std::string& image, const Luks2Header& header);

}  // namespace diskcrypt::test
