// stream_data, the mover that copy and import share: every byte in place with
// several chunks in flight, zero runs handed to `zero`, checkpoints at window
// ends after a flush, cancellation and I/O errors stopping it with the
// specific error. On memory files (no O_DIRECT there: the buffered path).
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/error.hpp"
#include "agent/ops/stream.hpp"

using diskcrypt::Errc;
using diskcrypt::Error;
using diskcrypt::FileDescriptor;
using diskcrypt::kCheckpointBytes;
using diskcrypt::kStreamChunkBytes;
using diskcrypt::StreamJob;

namespace {

FileDescriptor memory_file(std::uint64_t size)
{
    FileDescriptor fd(memfd_create("stream-test", MFD_CLOEXEC));
    REQUIRE(fd);
    REQUIRE(ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
    return fd;
}

std::vector<std::uint8_t> contents(int fd, std::uint64_t off, std::size_t n)
{
    std::vector<std::uint8_t> out(n);
    diskcrypt::read_exact(fd, out.data(), n, off, "test file");
    return out;
}

// Records progress; says cancelled from the `cancel_at`th question on (0:
// never).
class RecordingChannel final : public diskcrypt::OpChannel {
public:
    explicit RecordingChannel(unsigned cancel_at = 0) : cancel_at_(cancel_at) {}
    void progress(const nlohmann::json& update) override { updates_.push_back(update); }
    [[nodiscard]] bool cancelled() override { return cancel_at_ > 0 && ++asked_ >= cancel_at_; }
    [[nodiscard]] const std::vector<nlohmann::json>& updates() const { return updates_; }

private:
    std::vector<nlohmann::json> updates_;
    unsigned cancel_at_;
    unsigned asked_ = 0;
};

struct Files {
    FileDescriptor in;
    FileDescriptor out;
    std::vector<std::uint8_t> data;
};

// A source of `size` bytes at offset 512: random, with the chunks listed in
// `zero_chunks` all zero; a target of the same layout at offset 1024,
// pre-filled with 0xee so that a chunk not written shows.
Files make_files(std::uint64_t size, const std::set<std::uint64_t>& zero_chunks)
{
    Files f;
    f.data.resize(size);
    std::mt19937_64 rng(42);  // NOLINT(cert-msc51-cpp): the same data in every run
    for (auto& b : f.data) {
        b = static_cast<std::uint8_t>(rng());
    }
    for (const std::uint64_t c : zero_chunks) {
        const std::uint64_t from = c * kStreamChunkBytes;
        std::fill_n(f.data.begin() + static_cast<std::ptrdiff_t>(from),
                    std::min<std::uint64_t>(kStreamChunkBytes, size - from), std::uint8_t{0});
    }
    f.in = memory_file(size + 512);
    diskcrypt::write_exact(f.in.get(), f.data.data(), f.data.size(), 512, "source");
    f.out = memory_file(size + 1024);
    const std::vector<std::uint8_t> fill(size, 0xee);
    diskcrypt::write_exact(f.out.get(), fill.data(), fill.size(), 1024, "target");
    return f;
}

StreamJob job_for(const Files& f, std::uint64_t size)
{
    StreamJob job;
    job.operation = "copy";
    job.source_id = "disk-a";
    job.target_id = "disk-b";
    job.in = f.in.get();
    job.in_tail = f.in.get();
    job.in_name = "source test";
    job.in_offset = 512;
    job.out = f.out.get();
    job.out_tail = f.out.get();
    job.out_name = "target test";
    job.out_offset = 1024;
    job.total = size;
    return job;
}

// The error stream_data stops with: its code and message.
std::pair<Errc, std::string> stream_error(const StreamJob& job, diskcrypt::OpChannel& channel)
{
    try {
        (void)diskcrypt::stream_data(job, channel);
    } catch (const Error& e) {
        return {e.code(), e.what()};
    }
    FAIL("stream_data did not fail");
    return {};
}

}  // namespace

TEST_CASE("stream: every byte lands in place, zero chunks go to zero, the tail too", "[stream]")
{
    // 5 whole chunks and a 3-sector tail; chunks 1 and 4 all zero.
    const std::uint64_t size = 5 * kStreamChunkBytes + 1536;
    const Files f = make_files(size, {1, 4});
    StreamJob job = job_for(f, size);
    std::mutex mu;
    std::set<std::uint64_t> zeroed;
    job.zero = [&](std::uint64_t done, std::uint64_t len) {
        const std::lock_guard<std::mutex> g(mu);
        CHECK(len == kStreamChunkBytes);
        zeroed.insert(done);
        diskcrypt::zero_range(f.out.get(), false, "target test", 1024 + done, len);
    };
    RecordingChannel channel;
    const auto r = diskcrypt::stream_data(job, channel);
    CHECK(r.moved == size);
    CHECK(r.zeroed == 2 * kStreamChunkBytes);
    CHECK(zeroed == std::set<std::uint64_t>{kStreamChunkBytes, 4 * kStreamChunkBytes});
    CHECK(contents(f.out.get(), 1024, size) == f.data);
    // Progress: the first and the last at least, the last complete.
    REQUIRE(channel.updates().size() >= 2);
    CHECK(channel.updates().front().at("done") == 0);
    CHECK(channel.updates().back().at("done") == size);
    CHECK(channel.updates().back().at("total") == size);
    CHECK(channel.updates().back().at("operation") == "copy");
}

TEST_CASE("stream: a resumed run moves only the rest", "[stream]")
{
    const std::uint64_t size = 4 * kStreamChunkBytes;
    const Files f = make_files(size, {});
    StreamJob job = job_for(f, size);
    job.start = 2 * kStreamChunkBytes;
    diskcrypt::NoChannel channel;
    CHECK(diskcrypt::stream_data(job, channel).moved == 2 * kStreamChunkBytes);
    const auto out = contents(f.out.get(), 1024, size);
    CHECK(std::all_of(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(job.start),
                      [](std::uint8_t b) { return b == 0xee; }));
    CHECK(std::equal(out.begin() + static_cast<std::ptrdiff_t>(job.start), out.end(),
                     f.data.begin() + static_cast<std::ptrdiff_t>(job.start)));
}

TEST_CASE("stream: checkpoints come at window ends, with everything before them written", "[stream]")
{
    const std::uint64_t size = kCheckpointBytes + 2 * kStreamChunkBytes;
    const Files f = make_files(size, {});
    StreamJob job = job_for(f, size);
    std::vector<std::uint64_t> points;
    job.checkpoint = [&](std::uint64_t done) {
        points.push_back(done);
        CHECK(contents(f.out.get(), 1024, done) ==
              std::vector<std::uint8_t>(f.data.begin(), f.data.begin() + static_cast<std::ptrdiff_t>(done)));
    };
    diskcrypt::NoChannel channel;
    CHECK(diskcrypt::stream_data(job, channel).moved == size);
    CHECK(points == std::vector<std::uint64_t>{kCheckpointBytes});
    CHECK(contents(f.out.get(), 1024, size) == f.data);
}

TEST_CASE("stream: a cancelled run stops with cancelled, and says how far it got", "[stream]")
{
    const std::uint64_t size = kCheckpointBytes + 2 * kStreamChunkBytes;
    const Files f = make_files(size, {});
    StreamJob job = job_for(f, size);
    std::vector<std::uint64_t> points;
    job.checkpoint = [&](std::uint64_t done) { points.push_back(done); };
    // Asked before the first window, then while its chunks are in flight (or
    // before the second window, if the first was quicker than the question).
    RecordingChannel channel(2);
    const auto [code, message] = stream_error(job, channel);
    CHECK(code == Errc::cancelled);
    CHECK_THAT(message, Catch::Contains("copy of disk-a to disk-b cancelled after"));
    CHECK_THAT(message, Catch::Contains("of " + std::to_string(size) + " bytes"));
    CHECK(points.size() <= 1);
    CHECK(channel.updates().back().at("done") < size);
}

TEST_CASE("stream: a failed read or write names the file and the offset", "[stream]")
{
    const std::uint64_t size = 3 * kStreamChunkBytes;
    SECTION("the source shorter than it claims")
    {
        Files f = make_files(size, {});
        REQUIRE(ftruncate(f.in.get(), static_cast<off_t>(512 + kStreamChunkBytes + 100)) == 0);
        StreamJob job = job_for(f, size);
        diskcrypt::NoChannel channel;
        const auto [code, message] = stream_error(job, channel);
        CHECK(code == Errc::device);
        CHECK_THAT(message,
                   Catch::Contains("source test ended at byte " + std::to_string(512 + kStreamChunkBytes + 100)));
    }
    SECTION("a target that cannot be written")
    {
        Files f = make_files(size, {});
        StreamJob job = job_for(f, size);
        FileDescriptor ro(memfd_create("stream-test-ro", MFD_CLOEXEC | MFD_ALLOW_SEALING));
        REQUIRE(ro);
        REQUIRE(ftruncate(ro.get(), static_cast<off_t>(size + 1024)) == 0);
        REQUIRE(fcntl(ro.get(), F_ADD_SEALS, F_SEAL_WRITE) == 0);  // NOLINT(cppcoreguidelines-pro-type-vararg)
        job.out = ro.get();
        job.out_tail = ro.get();
        diskcrypt::NoChannel channel;
        const auto [code, message] = stream_error(job, channel);
        CHECK(code == Errc::device);
        CHECK_THAT(message, Catch::Contains("writing target test at byte"));
    }
}
