// make bench-kms: unwraps per second and p50/p99 latency of the two KMS
// providers side by side in one run, PKCS#11 (SoftHSM2, in-process) and KMIP
// (PyKMIP 0.10 over mutual TLS on 127.0.0.1), for 1, 8 and 64 concurrent
// unwraps, as attaches at boot issue them. A benchmark, not a test: it
// asserts only that every unwrap returned the right secret. Hidden from
// ctest ([.bench]); run as `kms-bench "[.bench]"`.
//
// Each row runs batches: CLIENTS threads each unwrap once at the same
// moment (a batch is "CLIENTS attaches at once"), until KMS_BENCH_SECONDS
// (default 3) have passed and at least 3 batches ran. Latency is per unwrap
// (from the batch's start, so a request queued behind the pool counts its
// wait); "batch/rt" is a batch's median time over the single-client median:
// how many KMS round trips 64 attaches at once cost (about 64 / pool_size
// with a pool, 64 without). Then KMIP again behind a relay that adds a
// round-trip time (KMS_BENCH_RTT_MS, default 20) with pools of 1, 4 and 16.
// Environment: KMS_BENCH_SECONDS, KMS_BENCH_POOL (pool_size of the first
// rows, default 4), KMS_BENCH_RTT_MS.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <iomanip>
#include <iostream>
#include <latch>
#include <list>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/kms/provider.hpp"
#include "agent/raii.hpp"
#include "tests/support/pykmip.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using diskcrypt::FileDescriptor;
using diskcrypt::KeyRef;
using diskcrypt::SecureBuffer;
using Clock = std::chrono::steady_clock;

namespace {

// A TCP relay on 127.0.0.1 that delays every chunk by `one_way` in each
// direction: PyKMIP behind a link with a round-trip time, as a KMS in
// another zone would be. Only the link is emulated; the server is real.
class DelayLink {
public:
    DelayLink(std::uint16_t target, std::chrono::milliseconds one_way)
        : target_(target), one_way_(one_way), listener_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0))
    {
        sockaddr_in a = loopback(0);
        REQUIRE(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);  // NOLINT
        REQUIRE(::listen(listener_.get(), 128) == 0);
        socklen_t len = sizeof(a);
        REQUIRE(::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0);  // NOLINT
        port_ = ntohs(a.sin_port);
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    DelayLink(const DelayLink&) = delete;
    DelayLink& operator=(const DelayLink&) = delete;
    DelayLink(DelayLink&&) = delete;
    DelayLink& operator=(DelayLink&&) = delete;
    ~DelayLink()
    {
        stop_ = true;
        (void)::shutdown(listener_.get(), SHUT_RDWR);
        acceptor_.join();
        for (auto& c : conns_) {
            (void)::shutdown(c.client.get(), SHUT_RDWR);
            (void)::shutdown(c.server.get(), SHUT_RDWR);
            for (auto& d : c.dirs) {
                const std::lock_guard lock(d.mutex);
                d.done = true;
                d.ready.notify_all();
            }
        }
        for (auto& c : conns_) {
            for (auto& t : c.threads) {
                t.join();
            }
        }
    }
    [[nodiscard]] std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }

private:
    struct Direction {
        std::mutex mutex;
        std::condition_variable ready;
        std::deque<std::pair<Clock::time_point, std::vector<char>>> chunks;
        bool done = false;
    };
    struct Conn {
        FileDescriptor client;
        FileDescriptor server;
        std::array<Direction, 2> dirs;
        std::vector<std::thread> threads;
    };

    static sockaddr_in loopback(std::uint16_t port)
    {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(port);
        return a;
    }

    void accept_loop()
    {
        for (;;) {
            FileDescriptor client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (!client || stop_) {
                return;
            }
            FileDescriptor server(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_in a = loopback(target_);
            if (::connect(server.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {  // NOLINT
                continue;
            }
            Conn& c = conns_.emplace_back();
            c.client = std::move(client);
            c.server = std::move(server);
            for (int d = 0; d < 2; ++d) {
                const int from = d == 0 ? c.client.get() : c.server.get();
                const int to = d == 0 ? c.server.get() : c.client.get();
                Direction& dir = c.dirs.at(static_cast<std::size_t>(d));
                c.threads.emplace_back([this, from, &dir] { read_side(from, dir); });
                c.threads.emplace_back([to, &dir] { write_side(to, dir); });
            }
        }
    }

    void read_side(int from, Direction& dir) const
    {
        std::vector<char> buf(std::size_t{64} * 1024);
        for (;;) {
            const ssize_t n = ::read(from, buf.data(), buf.size());
            const std::lock_guard lock(dir.mutex);
            if (n <= 0) {
                dir.done = true;
                dir.ready.notify_all();
                return;
            }
            dir.chunks.emplace_back(Clock::now() + one_way_,
                                    std::vector<char>(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n)));
            dir.ready.notify_all();
        }
    }

    static void write_side(int to, Direction& dir)
    {
        std::unique_lock lock(dir.mutex);
        for (;;) {
            dir.ready.wait(lock, [&] { return dir.done || !dir.chunks.empty(); });
            if (dir.chunks.empty()) {
                (void)::shutdown(to, SHUT_WR);
                return;
            }
            auto [due, data] = std::move(dir.chunks.front());
            dir.chunks.pop_front();
            lock.unlock();
            std::this_thread::sleep_until(due);
            for (std::size_t off = 0; off < data.size();) {
                // MSG_NOSIGNAL: a peer that closed must not kill the benchmark with SIGPIPE.
                const ssize_t w = ::send(to, data.data() + off, data.size() - off, MSG_NOSIGNAL);
                if (w <= 0) {
                    break;
                }
                off += static_cast<std::size_t>(w);
            }
            lock.lock();
        }
    }

    std::uint16_t target_;
    std::chrono::milliseconds one_way_;
    FileDescriptor listener_;
    std::uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::list<Conn> conns_;  // touched by the acceptor only, until it has joined
    std::thread acceptor_;
};

struct Row {
    std::string provider;
    int clients = 0;
    std::size_t unwraps = 0;
    double per_second = 0;
    double p50_ms = 0;
    double p99_ms = 0;
    double batch_ms = 0;
};

double percentile(std::vector<double> v, double p)
{
    std::sort(v.begin(), v.end());
    const auto i = static_cast<std::size_t>(std::lround(p * static_cast<double>(v.size() - 1)));
    return v[std::min(i, v.size() - 1)];
}

int env_int(const char* name, int fallback)
{
    const char* v = std::getenv(name);                           // NOLINT(concurrency-mt-unsafe): before any thread
    return v != nullptr ? std::max(1, std::atoi(v)) : fallback;  // NOLINT(cert-err34-c)
}

Row measure(const std::string& label, diskcrypt::kms::Provider& p, const std::string& key_id, int clients,
            double seconds)
{
    const auto d = p.describe(key_id);
    KeyRef key{p.name(), key_id, d.version};
    std::vector<SecureBuffer> secrets;
    std::vector<std::vector<std::uint8_t>> ads;
    std::vector<diskcrypt::kms::WrappedSecret> blobs;
    for (int i = 0; i < clients; ++i) {
        secrets.push_back(SecureBuffer::random(32));
        ads.push_back(diskcrypt::associated_data("bench-disk-" + std::to_string(i), key));
        blobs.push_back(p.wrap(key_id, d.version, secrets.back().span(), ads.back()));
    }
    // One warm-up batch: the pool's connections or sessions exist before timing.
    std::vector<double> latencies;
    std::vector<double> batches;
    std::atomic<int> wrong{0};
    const auto batch = [&](bool record) {
        std::vector<double> lat(static_cast<std::size_t>(clients));
        std::latch ready(clients + 1);
        std::vector<std::thread> threads;
        threads.reserve(static_cast<std::size_t>(clients));
        Clock::time_point start;
        std::latch go(1);
        for (int i = 0; i < clients; ++i) {
            threads.emplace_back([&, i] {
                const auto u = static_cast<std::size_t>(i);
                ready.count_down();
                go.wait();
                if (!p.unwrap(key_id, d.version, blobs[u], ads[u]).equals(secrets[u].span())) {
                    ++wrong;
                }
                lat[u] = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
            });
        }
        ready.arrive_and_wait();
        start = Clock::now();
        go.count_down();
        for (auto& t : threads) {
            t.join();
        }
        if (record) {
            batches.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
            latencies.insert(latencies.end(), lat.begin(), lat.end());
        }
    };
    batch(false);
    const auto t0 = Clock::now();
    while (batches.size() < 3 || std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
        batch(true);
    }
    const double total = std::chrono::duration<double>(Clock::now() - t0).count();
    REQUIRE(wrong == 0);
    Row r;
    r.provider = label;
    r.clients = clients;
    r.unwraps = latencies.size();
    r.per_second = static_cast<double>(latencies.size()) / total;
    r.p50_ms = percentile(latencies, 0.5);
    r.p99_ms = percentile(latencies, 0.99);
    r.batch_ms = percentile(batches, 0.5);
    return r;
}

}  // namespace

TEST_CASE("kms bench: unwraps per second and latency, PKCS#11 and KMIP side by side", "[.bench]")
{
    const double seconds = env_int("KMS_BENCH_SECONDS", 3);
    const int pool = env_int("KMS_BENCH_POOL", 4);
    const int rtt_ms = env_int("KMS_BENCH_RTT_MS", 20);
    const diskcrypt::test::TempDir dir;
    diskcrypt::test::SoftHsm hsm(dir);
    hsm.create_key({.id = "bench-key"});
    diskcrypt::test::PyKmipServer server(dir);
    (void)server.create_key("bench-key");
    const auto& pki = server.pki();
    const std::string extra = "pool_size = " + std::to_string(pool) + "\nrequest_timeout = 120\n";
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(
        hsm.provider_toml("hsm", extra) + "\n[providers.kms]\ntype = \"kmip\"\nendpoints = [\"" + server.endpoint() +
            "\"]\nserver_name = \"kmip.test\"\nca_file = \"" + pki.ca() + "\"\nclient_certificate = \"" +
            pki.client().cert + "\"\nclient_key_file = \"" + pki.client().key + "\"\n" + extra,
        "bench.toml");

    std::vector<Row> rows;
    for (const auto& [label, name] : {std::pair{"pkcs11 (SoftHSM2)", "hsm"}, std::pair{"kmip (PyKMIP, TLS)", "kms"}}) {
        for (const int clients : {1, 8, 64}) {
            rows.push_back(measure(label, *cfg.provider(name), "bench-key", clients, seconds));
        }
    }
    // KMIP behind a link with a round-trip time: what the pool buys when the
    // KMS is far away rather than busy (PyKMIP itself does ~3 ms of CPU work
    // per request in one Python process, so on loopback it is the limit).
    const DelayLink link(server.port(), std::chrono::milliseconds(rtt_ms / 2));
    for (const int size : {1, 4, 16}) {
        const std::string label = "kmip +" + std::to_string(rtt_ms) + "ms RTT pool " + std::to_string(size);
        const diskcrypt::AgentConfig far = diskcrypt::parse_config(
            "[providers.far]\ntype = \"kmip\"\nendpoints = [\"" + link.endpoint() +
                "\"]\nserver_name = \"kmip.test\"\nca_file = \"" + pki.ca() + "\"\nclient_certificate = \"" +
                pki.client().cert + "\"\nclient_key_file = \"" + pki.client().key +
                "\"\npool_size = " + std::to_string(size) + "\nrequest_timeout = 120\n",
            "bench.toml");
        for (const int clients : {1, 64}) {
            rows.push_back(measure(label, *far.provider("far"), "bench-key", clients, seconds));
        }
    }
    std::ostringstream out;
    out << "\nKMS unwrap benchmark: pool_size " << pool << " for the first rows, " << seconds << " s per row\n"
        << std::left << std::setw(28) << "provider" << std::right << std::setw(8) << "clients" << std::setw(9)
        << "unwraps" << std::setw(11) << "unwraps/s" << std::setw(9) << "p50 ms" << std::setw(9) << "p99 ms"
        << std::setw(11) << "batch ms" << std::setw(10) << "batch/rt"
        << "\n"
        << std::fixed;
    for (const Row& r : rows) {
        const Row& single = *std::find_if(rows.begin(), rows.end(),
                                          [&](const Row& o) { return o.provider == r.provider && o.clients == 1; });
        out << std::left << std::setw(28) << r.provider << std::right << std::setw(8) << r.clients << std::setw(9)
            << r.unwraps << std::setprecision(0) << std::setw(11) << r.per_second << std::setprecision(2)
            << std::setw(9) << r.p50_ms << std::setw(9) << r.p99_ms << std::setw(11) << r.batch_ms
            << std::setprecision(1) << std::setw(10) << r.batch_ms / single.batch_ms << "\n";
    }
    out << "batch/rt: a batch of CLIENTS unwraps at once, in single-client round trips (median)\n";
    std::cout << out.str() << std::flush;
}
