// Opening a device that an operation writes (format, copy), the signature
// probe, and the one write of a header image: what the writing operations
// share. verify.hpp's open_device_once() opens a device that is only read.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "agent/raii.hpp"

namespace diskcrypt {

struct WritableDevice {
    FileDescriptor fd;
    FileDescriptor exclusive;  // held open with O_EXCL (block devices) for the whole operation
    std::string path;          // as the caller named it, made printable (for messages)
    std::string fd_path;       // /proc/self/fd/N: what libcryptsetup opens, the very file checked here
    bool block = false;
    std::uint64_t size = 0;
    unsigned logical_block = 512;
};

// "/proc/self/fd/N".
std::string fd_path(int fd);

// Opens `path` (absolute) read-write; a block device also with O_EXCL, held
// until the result is destroyed (Error(device) "in use" if it is mounted,
// mapped or held). A regular file is accepted (tests, image files).
WritableDevice open_writable(const std::string& path);

// Lists (and with `wipe`, erases) every superblock and partition-table
// signature, the way wipefs does: one line per signature ("ext4 filesystem
// at offset 1080 (UUID ...)").
std::vector<std::string> scan_signatures(int fd, const std::string& device, bool wipe);

// Writes the LUKS2 header held in the file `image_path` to the device in one
// crypt_header_restore(), then flushes. Error(device) on failure.
void write_header_image(const WritableDevice& d, const std::string& image_path);

// After a failed write: zeroes the header area (as far as the device lets
// it), then probes again. Returns what the message should say.
std::string undo_partial_header(const WritableDevice& d);

}  // namespace diskcrypt
