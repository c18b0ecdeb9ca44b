// Key custody: locked, undumpable, wiped buffers; a non-dumpable process.
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "agent/secure_buffer.hpp"

using diskcrypt::SecureBuffer;

namespace {

// The smaps block of the mapping that contains `addr`.
std::string smaps_of(const void* addr)
{
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    std::ifstream in("/proc/self/smaps");
    std::string line;
    std::string block;
    bool inside = false;
    while (std::getline(in, line)) {
        const auto dash = line.find('-');
        const auto space = line.find(' ');
        const bool header = dash != std::string::npos && space != std::string::npos && dash < space &&
                            line.find_first_not_of("0123456789abcdef") == dash;
        if (header) {
            if (inside) {
                return block;
            }
            const auto lo = std::stoull(line.substr(0, dash), nullptr, 16);
            const auto hi = std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16);
            inside = a >= lo && a < hi;
            block.clear();
        }
        if (inside) {
            block += line + "\n";
        }
    }
    return inside ? block : std::string();
}

std::string vmflags(const std::string& block)
{
    const auto p = block.find("VmFlags:");
    return p == std::string::npos ? std::string() : block.substr(p, block.find('\n', p) - p) + " ";
}

}  // namespace

TEST_CASE("custody: a SecureBuffer is locked, not dumped, wiped on fork", "[custody]")
{
    SecureBuffer b = SecureBuffer::random(32);
    REQUIRE(b.size() == 32);
    const std::string block = smaps_of(b.data());
    REQUIRE_FALSE(block.empty());
    const std::string flags = vmflags(block);
    INFO(block);
    CHECK_THAT(flags, Catch::Matchers::Contains(" lo "));  // VM_LOCKED (mlock)
    CHECK_THAT(flags, Catch::Matchers::Contains(" dd "));  // VM_DONTDUMP (MADV_DONTDUMP)
    CHECK_THAT(flags, Catch::Matchers::Contains(" wf "));  // VM_WIPEONFORK

    // A forked child sees zeros where the parent has the secret.
    bool any = false;
    for (std::size_t i = 0; i < b.size(); ++i) {
        any = any || b.data()[i] != 0;
    }
    REQUIRE(any);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int nonzero = 0;
        for (std::size_t i = 0; i < 32; ++i) {
            nonzero += b.data()[i] != 0 ? 1 : 0;
        }
        _exit(nonzero == 0 ? 0 : 1);
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    CHECK(WIFEXITED(ws));
    CHECK(WEXITSTATUS(ws) == 0);
}

TEST_CASE("custody: moves transfer, truncate wipes, equals is exact", "[custody]")
{
    SecureBuffer a(16);
    for (std::size_t i = 0; i < a.size(); ++i) {
        a.data()[i] = static_cast<std::uint8_t>(i + 1);
    }
    const std::uint8_t* p = a.data();
    SecureBuffer b(std::move(a));
    CHECK(b.data() == p);
    // NOLINTBEGIN(bugprone-use-after-move,clang-analyzer-cplusplus.Move): the moved-from state is the contract
    CHECK(a.empty());
    CHECK(a.data() == nullptr);
    // NOLINTEND(bugprone-use-after-move,clang-analyzer-cplusplus.Move)
    b.truncate(4);
    CHECK(b.size() == 4);
    CHECK(p[5] == 0);  // the cut-off bytes were wiped
    const std::vector<std::uint8_t> same{1, 2, 3, 4};
    const std::vector<std::uint8_t> other{1, 2, 3, 5};
    CHECK(b.equals(same));
    CHECK_FALSE(b.equals(other));
    CHECK_FALSE(b.equals(std::vector<std::uint8_t>{1, 2, 3}));
}

TEST_CASE("custody: harden_process makes the process non-dumpable with no core", "[custody]")
{
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        diskcrypt::harden_process();
        rlimit core{};
        getrlimit(RLIMIT_CORE, &core);
        const bool ok = !diskcrypt::process_dumpable() && core.rlim_cur == 0 && core.rlim_max == 0;
        _exit(ok ? 0 : 1);
    }
    int ws = 0;
    waitpid(pid, &ws, 0);
    CHECK(WIFEXITED(ws));
    CHECK(WEXITSTATUS(ws) == 0);
}
