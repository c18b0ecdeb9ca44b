// `format`: a device becomes a diskcrypt disk (LUKS2, AES-256-XTS, one
// keyslot opened by a KMS-wrapped 32-byte secret, the diskcrypt-kms token).
//
// Order of work, so that a failure leaves nothing half-done:
//   1. arguments, device checks and the signature probe (read only);
//   2. KMS: describe the key, draw the secret, wrap it with the binding AD and
//      unwrap it again to prove the KMS can open what it wrapped (read only);
//   3. the whole header (LUKS2 metadata, keyslot, token) is built in memory
//      (a memfd) and its keyslot opened with the secret (read only);
//   4. only then the device is written: with --force the old signatures are
//      wiped (blkid, as wipefs does), and the header image is written in one
//      crypt_header_restore();
//   5. the header is read back from the device and its keyslot opened.
// A failure in 1-3 leaves the device untouched. A failure in 4-5 zeroes the
// first kHeaderBytes of the device, so no valid-looking header remains; the
// error says so.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "agent/config.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/token.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {

// The header geometry, the PBKDF and the cipher are in agent/disk/header.hpp:
// read_header() accepts exactly what format writes.
// The smallest usable size format accepts.
inline constexpr std::uint64_t kMinUsableBytes = 1024ULL * 1024;

struct FormatResult {
    std::string device;
    std::string disk_id;
    std::string disk_type;
    std::string lineage_id;
    std::string service_account;
    std::string user;             // who formatted it, as the control plane said
    std::string policy_revision;  // the access policy the checks were made under
    std::string luks_uuid;
    KeyRef key;
    std::string provider_type;
    unsigned sector_size = 0;
    std::uint64_t device_size = 0;
    std::uint64_t data_offset = 0;
    std::uint64_t usable_size = 0;
    int keyslot = 0;
    int token_id = 0;
    std::vector<std::string> destroyed;  // signatures wiped with --force
    long long elapsed_ms = 0;
};

FormatResult format_disk(const AgentConfig& cfg, const proto::FormatArgs& args);

// What import adds to format.
struct FormatExtras {
    std::optional<Incomplete> incomplete;     // the token's mark
    std::optional<std::uint64_t> min_usable;  // Error(device) with both sizes if the usable size is smaller
    std::string source;                       // names what needs min_usable, for that message
    bool redo_own_import = false;             // an interrupted import of this disk id is overwritten without --force
    bool lock_held = false;                   // the caller holds the disk's lock
    SecureBuffer* secret_out = nullptr;       // receives the keyslot secret
};
FormatResult format_disk(const AgentConfig& cfg, const proto::FormatArgs& args, FormatExtras& extras);
nlohmann::json to_json(const FormatResult& r);

// What format would refuse to overwrite: one line per signature
// ("ext4 filesystem at offset 1080 (UUID ...)"). Reads only.
std::vector<std::string> probe_signatures(int fd, const std::string& device);

}  // namespace diskcrypt
