// The associated data (AD) that binds a wrapped secret to its disk and key
// and, from version 2, to how the disk is mapped.
//
// Version 1, byte for byte (documented in agent/README.md, fixed vectors in
// tests/unit/test_associated_data.cpp):
//
//   "diskcrypt-kms-ad"   16 bytes, ASCII, no terminator
//   0x00                  separator
//   0x01                  AD format version
//   then, in this order, each field as a 2-byte big-endian length and its bytes:
//   disk id, provider name, key id, key version
//
// Version 2 (written by format since issue 9): the same prefix with version
// byte 0x02 and the same four fields, then the mapping parameters:
//
//   cipher            2-byte big-endian length + bytes ("aes-xts-plain64")
//   disk type         2-byte big-endian length + bytes ("network-ssd")
//   volume key size   4 bytes, big-endian, in bytes (64)
//   sector size       4 bytes, big-endian, in bytes (512..4096)
//   data offset       8 bytes, big-endian, in bytes (1048576)
//   IV tweak          8 bytes, big-endian, in 512-byte sectors (0)
//
// The values come from the header's segment as libcryptsetup read it (and the
// token's disk type): a header edited to another sector size, offset, IV
// tweak, cipher, key size or disk type then fails the AEAD tag check in the
// KMS. Version 1 tokens still open; they leave all six mapping fields unbound
// (read_header() still refuses cipher, key size, offset and IV tweak other
// than format's; sector size and disk type are whatever the header says).
//
// The disk id is the caller's (the control plane's), never the header's: a
// token copied to another disk, or a header on the wrong device, then fails
// the AEAD tag check in the KMS.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/names.hpp"

namespace diskcrypt {

inline constexpr unsigned kAssociatedDataVersion = 2;

// What version 2 binds besides the disk and the key.
struct MappingBinding {
    std::string cipher;  // "aes-xts-plain64"
    std::string disk_type;
    std::uint32_t volume_key_bytes = 0;
    std::uint32_t sector_size = 0;
    std::uint64_t data_offset = 0;  // bytes
    std::uint64_t iv_tweak = 0;     // 512-byte sectors
};

// Validates every field (Error(usage) otherwise) and builds the version 1 AD.
std::vector<std::uint8_t> associated_data(std::string_view disk_id, const KeyRef& key);
// Validates every field (Error(usage) otherwise) and builds the version 2 AD.
std::vector<std::uint8_t> associated_data(std::string_view disk_id, const KeyRef& key, const MappingBinding& mapping);

}  // namespace diskcrypt
