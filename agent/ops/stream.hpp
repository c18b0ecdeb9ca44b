// Moving a data area from one file to another in large aligned chunks, with
// progress, cancellation and checkpoints: what copy and import share.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "agent/ops/channel.hpp"
#include "agent/raii.hpp"

namespace diskcrypt {

inline constexpr std::uint64_t kStreamChunkBytes = 4ULL << 20U;
inline constexpr std::uint64_t kCheckpointBytes = 256ULL << 20U;
// Chunks in flight at once (one thread and one buffer each): the next read
// overlaps the last write, and a kernel target that encrypts in the
// submitter's context gets more than one CPU.
inline constexpr unsigned kStreamDepth = 4;

// The same file again: with `direct`, O_DIRECT where the file allows it (a
// block device; not tmpfs), else buffered. Error(device) if it cannot be
// opened at all.
FileDescriptor reopen(const std::string& path, int flags, bool direct);

struct StreamJob {
    std::string operation;  // "copy", "import": progress and messages
    std::string source_id;  // progress
    std::string target_id;
    // Chunks that are whole multiples of 4 KiB go through the first
    // descriptor of each pair (O_DIRECT where possible), a short tail through
    // the second (buffered).
    int in = -1;
    int in_tail = -1;
    std::string in_name;
    std::uint64_t in_offset = 0;  // where the data starts in the source
    int out = -1;
    int out_tail = -1;
    std::string out_name;
    std::uint64_t out_offset = 0;  // where it goes in the target
    std::uint64_t total = 0;       // bytes of data
    std::uint64_t start = 0;       // bytes already moved (a resumed run)
    // For an all-zero chunk: zeroes [out_offset + done, + len) some cheaper
    // way (BLKZEROOUT) instead of writing it; empty: written as it is.
    // Called from the streaming threads, several at once.
    std::function<void(std::uint64_t done, std::uint64_t len)> zero;
    // Every kCheckpointBytes, after the target is flushed: `done` bytes are
    // written for good. Called from the calling thread.
    std::function<void(std::uint64_t done)> checkpoint;
};

struct StreamResult {
    std::uint64_t moved = 0;   // bytes this run read and wrote or zeroed
    std::uint64_t zeroed = 0;  // of those, all-zero chunks given to `zero`
    long long ms = 0;          // the time it took, flush included
};

// Moves [start, total) of the data with kStreamDepth chunks in flight, in
// windows that end at each checkpoint. Sends a progress message at the start,
// at most every 0.5 s and at the end, and checks for cancellation at least
// every 0.1 s (Error(cancelled); a stopping agent counts): chunks in flight
// finish, no new one starts. Flushes the target at the end. Error(device)
// names the file and the byte offset of a failed read or write (of the
// failed chunk that comes first in the data; the other chunks stop).
StreamResult stream_data(const StreamJob& job, OpChannel& channel);

// Writes exactly n bytes at off (Error(device) naming `what` otherwise).
void write_exact(int fd, const std::uint8_t* buf, std::size_t n, std::uint64_t off, const std::string& what);

// Zeroes [off, off + len) of an open file: BLKZEROOUT where `block` (cheap on
// thin storage), plain writes where that is refused or on a regular file.
void zero_range(int fd, bool block, const std::string& name, std::uint64_t off, std::uint64_t len);

// Reads exactly n bytes at off (Error(device) naming `what` otherwise).
void read_exact(int fd, std::uint8_t* buf, std::size_t n, std::uint64_t off, const std::string& what);

// fdatasync, Error(device) naming `what`.
void flush_data(int fd, const std::string& what);

}  // namespace diskcrypt
