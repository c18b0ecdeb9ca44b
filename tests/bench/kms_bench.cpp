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
// with a pool, 64 without). Environment: KMS_BENCH_SECONDS, KMS_BENCH_POOL
// (pool_size of both providers, default 4).
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/kms/provider.hpp"
#include "tests/support/pykmip.hpp"
#include "tests/support/softhsm.hpp"
#include "tests/support/support.hpp"

using diskcrypt::KeyRef;
using diskcrypt::SecureBuffer;
using Clock = std::chrono::steady_clock;

namespace {

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
    const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
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
    std::printf("\nKMS unwrap benchmark: pool_size %d for both providers, %.0f s per row\n", pool, seconds);
    std::printf("%-20s %7s %8s %10s %8s %8s %10s %9s\n", "provider", "clients", "unwraps", "unwraps/s", "p50 ms",
                "p99 ms", "batch ms", "batch/rt");
    for (const Row& r : rows) {
        const Row& single = *std::find_if(rows.begin(), rows.end(),
                                          [&](const Row& o) { return o.provider == r.provider && o.clients == 1; });
        std::printf("%-20s %7d %8zu %10.0f %8.2f %8.2f %10.2f %9.1f\n", r.provider.c_str(), r.clients, r.unwraps,
                    r.per_second, r.p50_ms, r.p99_ms, r.batch_ms, r.batch_ms / single.batch_ms);
    }
    std::printf("batch/rt: a batch of CLIENTS unwraps at once, in single-client round trips (median)\n");
    std::fflush(stdout);
}
