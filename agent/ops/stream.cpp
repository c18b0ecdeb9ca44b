#include "agent/ops/stream.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>

#include "agent/disk_lock.hpp"
#include "agent/error.hpp"

namespace diskcrypt {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kIoAlign = 4096;
constexpr auto kProgressInterval = std::chrono::milliseconds(500);

struct FreeDeleter {
    // NOLINTNEXTLINE(cppcoreguidelines-no-malloc, cppcoreguidelines-owning-memory): aligned_alloc's pair
    void operator()(std::uint8_t* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<std::uint8_t, FreeDeleter>;

AlignedBytes aligned_bytes(std::size_t size)
{
    // NOLINTNEXTLINE(cppcoreguidelines-no-malloc, cppcoreguidelines-owning-memory)
    auto* p = static_cast<std::uint8_t*>(std::aligned_alloc(kIoAlign, size));
    if (p == nullptr) {
        throw Error(Errc::internal, "cannot allocate a " + std::to_string(size) + "-byte copy buffer");
    }
    return AlignedBytes(p);
}

void write_exact(int fd, const std::uint8_t* buf, std::size_t n, std::uint64_t off, const std::string& what)
{
    std::size_t done = 0;
    while (done < n) {
        const ssize_t r = pwrite(fd, buf + done, n - done, static_cast<off_t>(off + done));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            throw Error(Errc::device,
                        errno_text("writing " + what + " at byte " + std::to_string(off + done), r < 0 ? errno : EIO));
        }
        done += static_cast<std::size_t>(r);
    }
}

bool all_zero(const std::uint8_t* p, std::size_t n)
{
    return std::all_of(p, p + n, [](std::uint8_t b) { return b == 0; });
}

}  // namespace

// NOLINTBEGIN(cppcoreguidelines-pro-type-vararg): open and ioctl are C vararg APIs
FileDescriptor reopen(const std::string& path, int flags, bool direct)
{
    FileDescriptor fd;
    if (direct) {
        fd.reset(::open(path.c_str(), flags | O_DIRECT | O_CLOEXEC));
    }
    if (!fd) {
        fd.reset(::open(path.c_str(), flags | O_CLOEXEC));
    }
    if (!fd) {
        throw Error(Errc::device, errno_text("cannot open " + path + " for the data", errno));
    }
    return fd;
}

void zero_range(int fd, bool block, const std::string& name, std::uint64_t off, std::uint64_t len)
{
    if (len == 0) {
        return;
    }
    if (block && off % 512 == 0 && len % 512 == 0) {
        std::array<std::uint64_t, 2> range{off, len};
        if (::ioctl(fd, BLKZEROOUT, range.data()) == 0) {
            return;
        }
    }
    const AlignedBytes zeros = aligned_bytes(kStreamChunkBytes);
    std::fill_n(zeros.get(), kStreamChunkBytes, std::uint8_t{0});
    for (std::uint64_t done = 0; done < len;) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kStreamChunkBytes, len - done));
        write_exact(fd, zeros.get(), n, off + done, name);
        done += n;
    }
}
// NOLINTEND(cppcoreguidelines-pro-type-vararg)

void read_exact(int fd, std::uint8_t* buf, std::size_t n, std::uint64_t off, const std::string& what)
{
    std::size_t done = 0;
    while (done < n) {
        const ssize_t r = pread(fd, buf + done, n - done, static_cast<off_t>(off + done));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            throw Error(Errc::device, errno_text("reading " + what + " at byte " + std::to_string(off + done), errno));
        }
        if (r == 0) {
            throw Error(Errc::device, what + " ended at byte " + std::to_string(off + done) + ", before its size");
        }
        done += static_cast<std::size_t>(r);
    }
}

void flush_data(int fd, const std::string& what)
{
    if (fdatasync(fd) != 0) {
        throw Error(Errc::device, errno_text("flushing " + what, errno));
    }
}

std::uint64_t stream_data(const StreamJob& job, OpChannel& channel)
{
    const AlignedBytes buf = aligned_bytes(kStreamChunkBytes);
    std::uint64_t done = job.start;
    std::uint64_t checkpoint = done;
    const auto started = Clock::now();
    auto last = started;
    auto report = [&](bool always) {
        const auto now = Clock::now();
        if (!always && now - last < kProgressInterval) {
            return;
        }
        last = now;
        const double secs = std::chrono::duration<double>(now - started).count();
        const double rate = secs > 0 ? static_cast<double>(done - job.start) / secs : 0.0;
        nlohmann::json p = {{"operation", job.operation}, {"source", job.source_id},
                            {"target", job.target_id},    {"done", done},
                            {"total", job.total},         {"rate_bytes_per_s", static_cast<std::uint64_t>(rate)}};
        if (rate > 0) {
            p["eta_s"] = static_cast<std::uint64_t>(static_cast<double>(job.total - done) / rate);
        }
        channel.progress(p);
    };
    report(true);
    while (done < job.total) {
        if (channel.cancelled() || disk_lock_waits_stopped()) {
            throw Error(Errc::cancelled, job.operation + " of " + job.source_id + " to " + job.target_id +
                                             " cancelled after " + std::to_string(done) + " of " +
                                             std::to_string(job.total) + " bytes");
        }
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kStreamChunkBytes, job.total - done));
        const bool whole = n % kIoAlign == 0;
        read_exact(whole ? job.in : job.in_tail, buf.get(), n, job.in_offset + done, job.in_name);
        if (job.zero && all_zero(buf.get(), n)) {
            job.zero(done, n);
        } else {
            write_exact(whole ? job.out : job.out_tail, buf.get(), n, job.out_offset + done, job.out_name);
        }
        done += n;
        if (job.checkpoint && done - checkpoint >= kCheckpointBytes && done < job.total) {
            flush_data(job.out, job.out_name);
            flush_data(job.out_tail, job.out_name);
            job.checkpoint(done);
            checkpoint = done;
        }
        report(false);
    }
    flush_data(job.out, job.out_name);
    flush_data(job.out_tail, job.out_name);
    report(true);
    return done - job.start;
}

}  // namespace diskcrypt
