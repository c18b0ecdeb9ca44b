// One operation at a time per disk: an exclusive flock() on
// <lock_dir>/<disk-id>.lock, through a fresh open() for every operation. flock
// locks belong to the open file, so two threads of one agent exclude each other
// as two agents on one host do; different disks never wait for each other.
// The lock files stay (they are empty, on /run); the lock goes with the file
// descriptor, also when the agent dies.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "agent/raii.hpp"

namespace diskcrypt {

inline constexpr std::string_view kDefaultLockDir = "/run/diskcrypt/lock";
inline constexpr std::chrono::milliseconds kDiskLockTimeout{60000};

// Waits up to `timeout` for the disk's lock; Error(busy) if another operation
// on the disk holds it that long, Error(internal) if the lock file cannot be
// made. Creates `lock_dir` (0700) if it is missing.
FileLock lock_disk(const std::string& lock_dir, std::string_view disk_id,
                   std::chrono::milliseconds timeout = kDiskLockTimeout);

}  // namespace diskcrypt
