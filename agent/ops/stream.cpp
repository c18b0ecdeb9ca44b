#include "agent/ops/stream.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "agent/disk_lock.hpp"
#include "agent/error.hpp"

namespace diskcrypt {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kIoAlign = 4096;
constexpr auto kProgressInterval = std::chrono::milliseconds(500);
constexpr auto kCancelPoll = std::chrono::milliseconds(100);

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

bool all_zero(const std::uint8_t* p, std::size_t n)
{
    return std::all_of(p, p + n, [](std::uint8_t b) { return b == 0; });
}

}  // namespace

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
    static const AlignedBytes zeros = [] {
        AlignedBytes z = aligned_bytes(kStreamChunkBytes);
        std::fill_n(z.get(), kStreamChunkBytes, std::uint8_t{0});
        return z;
    }();
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

namespace {

// One window of a stream: its chunks, taken in order by the streaming
// threads; `stop` ends each thread after the chunk it holds.
struct Window {
    Window(std::uint64_t from, std::uint64_t to) : end(to), next(from) {}
    const std::uint64_t end;
    std::atomic<std::uint64_t> next;
    std::atomic<bool> stop{false};
    std::mutex mu;
    std::condition_variable wake;
    unsigned running = 0;  // under mu
    // The error of the chunk at the lowest offset that failed, under mu
    // (several chunks in flight may fail; the first in the data is named).
    std::exception_ptr failure;
    std::uint64_t failed_at = std::numeric_limits<std::uint64_t>::max();
};

struct Counters {
    std::atomic<std::uint64_t> moved{0};
    std::atomic<std::uint64_t> zeroed{0};
};

// A streaming thread's work: chunks of the window until none is left, stop
// is set or one fails.
void move_chunks(const StreamJob& job, Window& w, std::uint8_t* buf, Counters& count)
{
    std::uint64_t off = 0;
    try {
        while (!w.stop.load()) {
            off = w.next.fetch_add(kStreamChunkBytes);
            if (off >= w.end) {
                break;
            }
            const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kStreamChunkBytes, w.end - off));
            const bool whole = n % kIoAlign == 0;
            read_exact(whole ? job.in : job.in_tail, buf, n, job.in_offset + off, job.in_name);
            if (job.zero && all_zero(buf, n)) {
                job.zero(off, n);
                count.zeroed += n;
            } else {
                write_exact(whole ? job.out : job.out_tail, buf, n, job.out_offset + off, job.out_name);
            }
            count.moved += n;
        }
    } catch (...) {
        const std::lock_guard<std::mutex> g(w.mu);
        if (off < w.failed_at) {
            w.failure = std::current_exception();
            w.failed_at = off;
        }
        w.stop = true;
    }
    const std::lock_guard<std::mutex> g(w.mu);
    --w.running;
    w.wake.notify_all();
}

}  // namespace

StreamResult stream_data(const StreamJob& job, OpChannel& channel)
{
    std::vector<AlignedBytes> buffers;
    for (unsigned i = 0; i < kStreamDepth; ++i) {
        buffers.push_back(aligned_bytes(kStreamChunkBytes));
    }
    const auto started = Clock::now();
    Counters count;
    auto last = started;
    auto report = [&](bool always) {
        const auto now = Clock::now();
        if (!always && now - last < kProgressInterval) {
            return;
        }
        last = now;
        const std::uint64_t moved = count.moved.load();
        const std::uint64_t done = job.start + moved;
        const double secs = std::chrono::duration<double>(now - started).count();
        const double rate = secs > 0 ? static_cast<double>(moved) / secs : 0.0;
        nlohmann::json p = {{"operation", job.operation}, {"source", job.source_id},
                            {"target", job.target_id},    {"done", done},
                            {"total", job.total},         {"rate_bytes_per_s", static_cast<std::uint64_t>(rate)}};
        if (rate > 0) {
            p["eta_s"] = static_cast<std::uint64_t>(static_cast<double>(job.total - done) / rate);
        }
        channel.progress(p);
    };
    auto cancelled = [&] { return channel.cancelled() || disk_lock_waits_stopped(); };
    auto cancel_error = [&] {
        return Error(Errc::cancelled, job.operation + " of " + job.source_id + " to " + job.target_id +
                                          " cancelled after " + std::to_string(job.start + count.moved.load()) +
                                          " of " + std::to_string(job.total) + " bytes");
    };

    report(true);
    for (std::uint64_t from = job.start; from < job.total;) {
        if (cancelled()) {
            throw cancel_error();
        }
        Window w(from, job.checkpoint ? std::min(job.total, from + kCheckpointBytes) : job.total);
        {
            w.running = kStreamDepth;
            std::vector<std::jthread> threads;
            try {
                for (unsigned t = 0; t < kStreamDepth; ++t) {
                    threads.emplace_back(move_chunks, std::cref(job), std::ref(w), buffers[t].get(), std::ref(count));
                }
            } catch (const std::system_error& e) {
                w.stop = true;  // the threads started end after their chunk
                throw Error(Errc::internal, std::string("cannot start the streaming threads: ") + e.what());
            }
            std::unique_lock<std::mutex> held(w.mu);
            while (w.running > 0) {
                w.wake.wait_for(held, kCancelPoll);
                held.unlock();
                if (cancelled()) {
                    w.stop = true;
                }
                report(false);
                held.lock();
            }
        }  // the threads joined
        if (w.failure) {
            std::rethrow_exception(w.failure);
        }
        if (job.start + count.moved.load() < w.end) {
            throw cancel_error();
        }
        from = w.end;
        if (job.checkpoint && from < job.total) {
            flush_data(job.out, job.out_name);
            flush_data(job.out_tail, job.out_name);
            job.checkpoint(from);
        }
    }
    flush_data(job.out, job.out_name);
    flush_data(job.out_tail, job.out_name);
    report(true);
    StreamResult r;
    r.moved = count.moved.load();
    r.zeroed = count.zeroed.load();
    r.ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
    return r;
}

}  // namespace diskcrypt
