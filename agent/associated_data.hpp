// The associated data (AD) that binds a wrapped secret to its disk and key.
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
// The disk id is the caller's (the control plane's), never the header's: a
// token copied to another disk, or a header on the wrong device, then fails
// the AEAD tag check in the KMS.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "agent/names.hpp"

namespace diskcrypt {

inline constexpr unsigned kAssociatedDataVersion = 1;

// Validates every field (Error(usage) otherwise) and builds the version 1 AD.
std::vector<std::uint8_t> associated_data(std::string_view disk_id, const KeyRef& key);

}  // namespace diskcrypt
