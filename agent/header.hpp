// Reading a diskcrypt LUKS2 header from a device: the LUKS2 metadata through
// libcryptsetup, the one diskcrypt-kms token, and the keyslot it names.
#pragma once

#include <cstdint>
#include <string>

#include "agent/raii.hpp"
#include "agent/token.hpp"

namespace diskcrypt {

inline constexpr std::string_view kSubsystem = "diskcrypt";

struct DiskHeader {
    std::string device;
    std::string luks_uuid;
    int token_id = -1;
    Token token;
    std::uint64_t data_offset = 0;  // bytes
    unsigned sector_size = 0;
    std::string cipher;  // "aes-xts-plain64"
    int volume_key_bytes = 0;
    std::uint64_t iv_offset = 0;  // the segment's IV tweak, in 512-byte sectors
    bool allow_discards = false;  // the header's persistent activation flag
};

// crypt_init + crypt_load(LUKS2). Error(device) if the device cannot be opened,
// Error(header) if it holds no LUKS2 header.
CryptDevice open_luks2(const std::string& device);

// Reads and validates the diskcrypt parts of a loaded header: subsystem
// "diskcrypt", exactly one diskcrypt-kms token (strictly decoded), whose
// keyslot exists and is active. Error(header) otherwise, naming the device.
DiskHeader read_header(crypt_device* cd, const std::string& device);

}  // namespace diskcrypt
