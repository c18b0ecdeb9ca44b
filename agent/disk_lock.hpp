// One operation at a time per disk: an exclusive flock() on
// <lock_dir>/<disk-id>.lock, through a fresh open() for every operation. flock
// locks belong to the open file, so two threads of one agent exclude each other
// as two agents on one host do; different disks never wait for each other.
// The lock files stay (they are empty, on /run); the lock goes with the file
// descriptor, also when the agent dies.
//
// A wait for the lock is interruptible: once the agent is stopping
// (stop_disk_lock_waits(), called on SIGTERM), lock_disk() fails at once with
// Error(agent_unavailable) "the agent is stopping", before the operation has
// done anything, instead of waiting out its timeout.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "agent/raii.hpp"

namespace diskcrypt {

inline constexpr std::string_view kDefaultLockDir = "/run/diskcrypt/lock";
inline constexpr std::chrono::milliseconds kDiskLockTimeout{60000};

// Waits up to `timeout` for the disk's lock; Error(busy) if another operation
// on the disk holds it that long, Error(agent_unavailable) if the agent is
// stopping (checked before every attempt, also the first), Error(internal) if
// the lock file cannot be made. Creates `lock_dir` (0700) if it is missing.
FileLock lock_disk(const std::string& lock_dir, std::string_view disk_id,
                   std::chrono::milliseconds timeout = kDiskLockTimeout);

// From now on every lock_disk(), waiting or not, fails with "the agent is
// stopping". Process-wide and one-way (the agent exits after it).
void stop_disk_lock_waits() noexcept;
bool disk_lock_waits_stopped() noexcept;

}  // namespace diskcrypt
