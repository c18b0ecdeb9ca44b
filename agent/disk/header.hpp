// Reading a diskcrypt LUKS2 header from a device: the LUKS2 metadata through
// libcryptsetup, the one diskcrypt-kms token, and the keyslot it names.
//
// The header belongs to the storage and is not trusted. read_header() checks,
// before any KMS call and any key derivation, that the LUKS2 metadata is
// exactly what `format` writes (check_layout() below lists every field): a
// header edited to an expensive KDF, a second keyslot or segment, other areas
// or a reencryption requirement is Error(header) naming the field. Every
// string taken from the header passes through printable() before it reaches a
// message or a DiskHeader field.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "agent/disk/token.hpp"
#include "agent/raii.hpp"

namespace diskcrypt {

inline constexpr std::string_view kSubsystem = "diskcrypt";

// The header `format` writes, and the only one read_header() accepts:
// 2 x 16 KiB LUKS2 metadata, 992 KiB keyslots area (room for three 512-bit
// keyslots, 252 KiB each), data at 1 MiB.
inline constexpr std::uint64_t kMetadataBytes = 16ULL * 1024;
inline constexpr std::uint64_t kKeyslotsBytes = 1024ULL * 1024 - 2 * kMetadataBytes;
inline constexpr std::uint64_t kHeaderBytes = 1024ULL * 1024;
// Keyslot PBKDF: PBKDF2-SHA256 with libcryptsetup's minimum iteration count
// (the secret is 32 random bytes, so stretching adds nothing). The digest
// uses the same count: libcryptsetup writes its minimum (1000) with
// CRYPT_PBKDF_NO_BENCHMARK.
inline constexpr std::uint32_t kPbkdfIterations = 1000;
inline constexpr std::uint32_t kDigestIterations = 1000;
inline constexpr std::string_view kLuksCipher = "aes-xts-plain64";
inline constexpr int kVolumeKeyBytes = 64;  // AES-256-XTS
// Anti-forensic split of the keyslot: LUKS1 AF, 4000 stripes, SHA-256; the
// keyslot's area is the split key rounded up to 4 KiB.
inline constexpr std::uint64_t kAfStripes = 4000;
inline constexpr std::uint64_t kKeyslotAreaBytes =
    (std::uint64_t{kVolumeKeyBytes} * kAfStripes + 4095U) / 4096U * 4096U;

// The canonical LUKS2 UUID: 36 characters, 8-4-4-4-12 hex digits (either
// case). Error(header) naming `where` otherwise (the value escaped).
void validate_luks_uuid(std::string_view uuid, std::string_view where);
bool is_luks_uuid(std::string_view uuid);

struct DiskHeader {
    std::string device;     // as the caller named it, made printable (for messages)
    std::string luks_uuid;  // canonical form (validated)
    int token_id = -1;
    Token token;
    std::uint64_t data_offset = 0;  // bytes
    unsigned sector_size = 0;
    std::string cipher;  // "aes-xts-plain64"
    int volume_key_bytes = 0;
    std::uint64_t iv_offset = 0;  // the segment's IV tweak, in 512-byte sectors
    // The header's persistent allow-discards flag: shown, never used (the
    // disk type's profile and the caller decide discards at attach).
    bool allow_discards = false;
};

// crypt_init + crypt_load(LUKS2) on `path`. Error(device) if the device cannot
// be opened, Error(header) if it holds no LUKS2 header. Messages name `shown`
// (the caller's name for the device when `path` is /proc/self/fd/N), escaped;
// the one-argument form names `path`.
CryptDevice open_luks2(const std::string& path);
CryptDevice open_luks2(const std::string& path, const std::string& shown);

// Reads and validates a loaded header: the LUKS2 UUID (canonical), subsystem
// "diskcrypt", the metadata exactly as `format` writes it (check_layout),
// exactly one diskcrypt-kms token (strictly decoded; no token plugin is ever
// asked), whose keyslot is the one keyslot. Error(header) otherwise, naming
// the device (`device`, escaped) and the field. No KMS call, no key derivation.
DiskHeader read_header(crypt_device* cd, const std::string& device);

// Replaces token `token_id` of the header on `path` (named `shown` in
// messages) with `token`, in one LUKS2 metadata update (both copies, a new
// sequence id: a crash leaves the old token or the new one). Error(device).
void replace_token(const std::string& path, const std::string& shown, int token_id, const Token& token);

// The checks of read_header() on the LUKS2 metadata as crypt_dump_json()
// shows it (exposed for tests): exactly one keyslot (luks2, 512-bit key,
// PBKDF2-SHA256 at kPbkdfIterations, LUKS1 AF 4000 stripes SHA-256, raw area
// aes-xts-plain64 at 32 KiB of kKeyslotAreaBytes), one digest (pbkdf2 SHA-256
// at kDigestIterations, over that keyslot and segment 0), one segment (crypt,
// offset kHeaderBytes, size dynamic, IV tweak 0, aes-xts-plain64, sector size
// 512-4096), config json_size and keyslots_size as format sets them, no
// requirements. `json_text` may hold any bytes. Returns the keyslot number.
int check_layout(std::string_view json_text, const std::string& device);

}  // namespace diskcrypt
