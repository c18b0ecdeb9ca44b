// The LUKS2 binary header as cryptsetup lays it out on disk (struct
// luks2_hdr_disk; cryptsetup's docs/on-disk-format-luks2.pdf), for the tests
// and the fuzz target that write headers as an attacker with access to the
// storage would. Integers are big-endian; text fields are NUL-terminated.
// The JSON area follows the 4096-byte binary header up to hdr_size; the
// second copy starts at hdr_size.
#pragma once

#include <cstddef>

namespace diskcrypt::test::luks2 {

constexpr std::size_t kOffVersion = 6;       // u16
constexpr std::size_t kOffHdrSize = 8;       // u64: binary header + JSON area
constexpr std::size_t kOffSeqid = 16;        // u64
constexpr std::size_t kOffLabel = 24;        // 48 bytes
constexpr std::size_t kOffCsumAlg = 72;      // 32 bytes, "sha256"
constexpr std::size_t kOffSalt = 104;        // 64 bytes
constexpr std::size_t kOffUuid = 168;        // 40 bytes
constexpr std::size_t kOffSubsystem = 208;   // 48 bytes
constexpr std::size_t kOffHdrOffset = 256;   // u64: where this copy starts
constexpr std::size_t kOffCsum = 448;        // 64 bytes, over hdr_size bytes with itself zeroed
constexpr std::size_t kBinaryHeader = 4096;  // where the JSON starts

constexpr std::size_t kLabelBytes = 48;
constexpr std::size_t kUuidBytes = 40;
constexpr std::size_t kSubsystemBytes = 48;
constexpr std::size_t kCsumBytes = 64;

}  // namespace diskcrypt::test::luks2
