// A bounded pool of KMS handles (PKCS#11 sessions, KMIP connections) shared by
// concurrent requests.
//
// At most `size` handles exist at once: take() hands out an idle one, makes a
// new one while fewer than `size` exist, and otherwise waits, until its
// deadline, for one to come back. The pool's mutex is held only to move
// handles in and out, never while a handle is made or used, so requests run
// their KMS round trips in parallel. A lease gives its handle back when it
// ends, unless the request found it broken (discard()) or the pool was reset
// meanwhile (a token that dropped every session): those are destroyed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace diskcrypt::kms {

using Clock = std::chrono::steady_clock;

template <class T>
class Pool {
public:
    using Maker = std::function<std::unique_ptr<T>()>;

    class Lease {
    public:
        Lease(Lease&& other) noexcept
            : pool_(std::exchange(other.pool_, nullptr)),
              handle_(std::move(other.handle_)),
              generation_(other.generation_),
              reused_(other.reused_)
        {
        }
        Lease& operator=(Lease&&) = delete;
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        ~Lease()
        {
            if (pool_ != nullptr) {
                pool_->give_back(std::move(handle_), generation_);
            }
        }

        T& operator*() const { return *handle_; }
        T* operator->() const { return handle_.get(); }
        // The handle was made for an earlier request (it may have gone stale
        // on the server's side since; a fresh one is worth one retry).
        [[nodiscard]] bool reused() const { return reused_; }
        // The handle is broken: destroy it instead of giving it back.
        void discard() { handle_.reset(); }

    private:
        friend class Pool;
        Lease(Pool* pool, std::unique_ptr<T> handle, std::uint64_t generation, bool reused)
            : pool_(pool), handle_(std::move(handle)), generation_(generation), reused_(reused)
        {
        }
        Pool* pool_;
        std::unique_ptr<T> handle_;
        std::uint64_t generation_;
        bool reused_;
    };

    explicit Pool(std::size_t size) : size_(size == 0 ? 1 : size) {}
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;
    Pool(Pool&&) = delete;
    Pool& operator=(Pool&&) = delete;
    ~Pool() = default;

    // An idle handle, or a new one from `make` (called without the lock; its
    // exceptions propagate and free the slot), or nullopt when none came
    // free before `deadline`.
    std::optional<Lease> take(Clock::time_point deadline, const Maker& make)
    {
        std::uint64_t generation = 0;
        {
            std::unique_lock lock(mutex_);
            if (!freed_.wait_until(lock, deadline, [this] { return !idle_.empty() || count_ < size_; })) {
                return std::nullopt;
            }
            generation = generation_;
            if (!idle_.empty()) {
                std::unique_ptr<T> h = std::move(idle_.back());
                idle_.pop_back();
                return Lease(this, std::move(h), generation, true);
            }
            ++count_;
        }
        try {
            std::unique_ptr<T> h = make();
            return Lease(this, std::move(h), generation, false);
        } catch (...) {
            release_slot();
            throw;
        }
    }

    // Destroys the idle handles; those in use are destroyed when they come
    // back (the KMS dropped them all, e.g. a token was removed).
    void reset()
    {
        std::vector<std::unique_ptr<T>> dropped;
        {
            const std::lock_guard lock(mutex_);
            ++generation_;
            count_ -= idle_.size();
            dropped.swap(idle_);
        }
        freed_.notify_all();
    }

    [[nodiscard]] std::size_t size() const { return size_; }
    // Handles that exist now (idle or leased).
    [[nodiscard]] std::size_t open() const
    {
        const std::lock_guard lock(mutex_);
        return count_;
    }
    [[nodiscard]] std::size_t idle() const
    {
        const std::lock_guard lock(mutex_);
        return idle_.size();
    }

private:
    void give_back(std::unique_ptr<T> handle, std::uint64_t generation)
    {
        std::unique_ptr<T> drop;
        {
            const std::lock_guard lock(mutex_);
            if (handle && generation == generation_) {
                idle_.push_back(std::move(handle));
            } else {
                drop = std::move(handle);
                --count_;
            }
        }
        freed_.notify_one();
    }

    void release_slot()
    {
        {
            const std::lock_guard lock(mutex_);
            --count_;
        }
        freed_.notify_one();
    }

    const std::size_t size_;
    mutable std::mutex mutex_;
    std::condition_variable freed_;
    std::vector<std::unique_ptr<T>> idle_;
    std::size_t count_ = 0;  // idle + leased
    std::uint64_t generation_ = 0;
};

}  // namespace diskcrypt::kms
