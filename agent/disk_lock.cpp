#include "agent/disk_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <thread>

#include "agent/error.hpp"
#include "agent/names.hpp"

namespace diskcrypt {

namespace {

std::atomic<bool>& stop_flag()
{
    static std::atomic<bool> stopped{false};
    return stopped;
}

[[noreturn]] void fail_stopping(std::string_view disk_id)
{
    throw Error(Errc::agent_unavailable, "the agent is stopping: nothing was done to disk " + std::string(disk_id),
                "run the command again when the agent is back (systemctl start diskcrypt-agent)");
}

}  // namespace

void stop_disk_lock_waits() noexcept { stop_flag().store(true); }

bool disk_lock_waits_stopped() noexcept { return stop_flag().load(); }

FileLock lock_disk(const std::string& lock_dir, std::string_view disk_id, std::chrono::milliseconds timeout)
{
    validate_disk_id(disk_id);
    if (mkdir(lock_dir.c_str(), 0700) != 0 && errno != EEXIST) {
        throw Error(Errc::internal, errno_text("cannot create the lock folder " + lock_dir, errno));
    }
    const std::string path = lock_dir + "/" + std::string(disk_id) + ".lock";
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
    FileDescriptor fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!fd) {
        throw Error(Errc::internal, errno_text("cannot open the lock file " + path, errno));
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(2);
    for (;;) {
        if (disk_lock_waits_stopped()) {
            fail_stopping(disk_id);
        }
        if (flock(fd.get(), LOCK_EX | LOCK_NB) == 0) {
            return FileLock(std::move(fd));
        }
        if (errno != EWOULDBLOCK && errno != EINTR) {
            throw Error(Errc::internal, errno_text("cannot lock " + path, errno));
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            throw Error(Errc::busy,
                        "another operation on disk " + std::string(disk_id) + " is still running after " +
                            std::to_string(timeout.count() / 1000) + " s",
                        "retry when it has finished; the agent's log names it");
        }
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
}

}  // namespace diskcrypt
