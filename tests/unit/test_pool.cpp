// The bounded pool of KMS handles (agent/kms/pool.hpp), with a counting
// stand-in for a PKCS#11 session or KMIP connection.
#include "agent/kms/pool.hpp"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <latch>
#include <memory>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

using diskcrypt::kms::Clock;
using std::chrono::milliseconds;

namespace {

// The handles that exist now.
std::atomic<int>& live()
{
    static std::atomic<int> count{0};
    return count;
}

struct Handle {
    int id;
    explicit Handle(int i) : id(i) { ++live(); }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    Handle(Handle&&) = delete;
    Handle& operator=(Handle&&) = delete;
    ~Handle() { --live(); }
};

using TestPool = diskcrypt::kms::Pool<Handle>;

// A maker that numbers its handles and counts its calls.
struct Maker {
    std::atomic<int> made{0};
    TestPool::Maker fn()
    {
        return [this] { return std::make_unique<Handle>(++made); };
    }
};

Clock::time_point soon(int ms = 5000) { return Clock::now() + milliseconds(ms); }

}  // namespace

TEST_CASE("pool: a handle given back is reused", "[pool]")
{
    Maker m;
    {
        TestPool pool(2);
        CHECK(pool.size() == 2);
        int first = 0;
        {
            auto lease = pool.take(soon(), m.fn());
            REQUIRE(lease);
            CHECK_FALSE(lease->reused());
            first = (**lease).id;
            CHECK(pool.open() == 1);
            CHECK(pool.idle() == 0);
        }
        CHECK(pool.open() == 1);
        CHECK(pool.idle() == 1);
        auto lease = pool.take(soon(), m.fn());
        REQUIRE(lease);
        CHECK(lease->reused());
        CHECK((*lease)->id == first);
        CHECK(m.made == 1);
    }
    CHECK(live() == 0);  // the pool destroys its idle handles
}

TEST_CASE("pool: at most size handles, a taker waits until its deadline", "[pool]")
{
    Maker m;
    TestPool pool(2);
    auto a = pool.take(soon(), m.fn());
    auto b = pool.take(soon(), m.fn());
    REQUIRE(a);
    REQUIRE(b);
    CHECK(pool.open() == 2);

    const auto begin = Clock::now();
    CHECK_FALSE(pool.take(Clock::now() + milliseconds(100), m.fn()));
    CHECK(Clock::now() - begin >= milliseconds(100));
    CHECK(m.made == 2);
    CHECK_FALSE(pool.take(Clock::now() - milliseconds(1), m.fn()));  // a deadline already past

    SECTION("a handle given back meanwhile is handed on")
    {
        const int id = (*a)->id;
        std::thread giver([&a] {
            std::this_thread::sleep_for(milliseconds(50));
            a.reset();
        });
        auto c = pool.take(soon(), m.fn());
        giver.join();
        REQUIRE(c);
        CHECK(c->reused());
        CHECK((*c)->id == id);
        CHECK(m.made == 2);
    }
    SECTION("a discarded handle frees its place for a new one")
    {
        std::thread giver([&a] {
            std::this_thread::sleep_for(milliseconds(50));
            a->discard();
            a.reset();
        });
        auto c = pool.take(soon(), m.fn());
        giver.join();
        REQUIRE(c);
        CHECK_FALSE(c->reused());
        CHECK(m.made == 3);
        CHECK(live() == 2);
    }
}

TEST_CASE("pool: a maker that throws frees its place", "[pool]")
{
    TestPool pool(1);
    const TestPool::Maker failing = []() -> std::unique_ptr<Handle> { throw std::runtime_error("HSM down"); };
    CHECK_THROWS_WITH(pool.take(soon(), failing), "HSM down");
    CHECK(pool.open() == 0);
    Maker m;
    auto lease = pool.take(Clock::now() + milliseconds(100), m.fn());
    REQUIRE(lease);
    CHECK(pool.open() == 1);
}

TEST_CASE("pool: discard destroys the handle instead of giving it back", "[pool]")
{
    Maker m;
    TestPool pool(2);
    {
        auto lease = pool.take(soon(), m.fn());
        REQUIRE(lease);
        lease->discard();
        CHECK(live() == 0);  // at once
    }
    CHECK(pool.open() == 0);
    CHECK(pool.idle() == 0);
    auto lease = pool.take(soon(), m.fn());
    REQUIRE(lease);
    CHECK_FALSE(lease->reused());
    CHECK(m.made == 2);
}

TEST_CASE("pool: reset drops the idle handles now and those in use when they come back", "[pool]")
{
    Maker m;
    TestPool pool(3);
    auto a = pool.take(soon(), m.fn());
    auto b = pool.take(soon(), m.fn());
    auto c = pool.take(soon(), m.fn());
    REQUIRE((a && b && c));
    b.reset();
    c.reset();
    CHECK(pool.idle() == 2);
    CHECK(live() == 3);

    pool.reset();
    CHECK(pool.idle() == 0);
    CHECK(pool.open() == 1);  // a, still leased
    CHECK(live() == 1);

    // New handles after the reset are kept as usual.
    {
        auto d = pool.take(soon(), m.fn());
        REQUIRE(d);
        CHECK_FALSE(d->reused());
        CHECK(m.made == 4);
    }
    CHECK(pool.idle() == 1);

    a.reset();  // made before the reset: destroyed, not given back
    CHECK(pool.idle() == 1);
    CHECK(pool.open() == 1);
    CHECK(live() == 1);
}

TEST_CASE("pool: a handle made while the pool was reset is not kept", "[pool]")
{
    TestPool pool(1);
    std::latch making(1);
    std::latch reset_done(1);
    std::thread taker([&] {
        const auto lease = pool.take(soon(), [&] {
            making.count_down();
            reset_done.wait();
            return std::make_unique<Handle>(1);
        });
    });
    making.wait();
    pool.reset();
    reset_done.count_down();
    taker.join();
    CHECK(pool.open() == 0);
    CHECK(pool.idle() == 0);
    CHECK(live() == 0);
}

TEST_CASE("pool: concurrent takers never hold more than size handles", "[pool]")
{
    constexpr std::size_t kSize = 3;
    constexpr int kThreads = 16;
    constexpr int kRounds = 200;
    Maker m;
    TestPool pool(kSize);
    std::atomic<int> in_use{0};
    std::atomic<int> peak{0};
    std::atomic<int> peak_live{0};
    std::atomic<int> timeouts{0};
    std::latch start(kThreads);
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            start.arrive_and_wait();
            for (int r = 0; r < kRounds; ++r) {
                auto lease = pool.take(soon(), m.fn());
                if (!lease) {
                    ++timeouts;
                    continue;
                }
                const int now = ++in_use;
                int p = peak.load();
                while (now > p && !peak.compare_exchange_weak(p, now)) {
                }
                const int now_live = live().load();
                p = peak_live.load();
                while (now_live > p && !peak_live.compare_exchange_weak(p, now_live)) {
                }
                if ((r + t) % 7 == 0) {
                    std::this_thread::yield();
                }
                if ((r + t) % 50 == 0) {
                    lease->discard();  // now and then a broken one
                }
                --in_use;
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(timeouts == 0);
    CHECK(peak <= static_cast<int>(kSize));
    CHECK(peak_live <= static_cast<int>(kSize));
    CHECK(pool.open() <= kSize);
    CHECK(pool.open() == pool.idle());
    CHECK(live() == static_cast<int>(pool.open()));
}
