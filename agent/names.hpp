// Names a caller passes in: disk ids, disk types, service accounts, key
// references. Shared by the CLI (early, friendly checks) and the agent (the
// checks that count). Every failure is Error(usage) naming the value and rule.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace diskcrypt {

// Disk ids: [A-Za-z0-9._-]{1,100} (the control plane's id; also the mapping
// name diskcrypt-<id> later). Lineage ids follow the same rule.
void validate_disk_id(std::string_view id, std::string_view what = "disk id");

// Service accounts: [A-Za-z0-9._@-]{1,128}.
void validate_service_account(std::string_view sa, std::string_view what = "service account");
// User accounts (the acting user of format): the same rule.
void validate_user_account(std::string_view user);

// A disk type's profile (agent/README.md, "Disk types"), applied at format
// (the sector size) and at attach (the table's options). Each field may be
// overridden per type by the host ([disk_types.TYPE] in the configuration).
//
// Discards policy: `discards` says whether an attach may pass discards down
// to the storage, and only when the caller asks for them (attach
// --allow-discards); the header's persistent flag never counts. Discards
// tell the storage which blocks the guest does not use (its free-space map),
// so they are allowed only for the SSD types, whose storage reclaims the
// space; HDD disks and local disks never get them.
//
// zero_unwritten: cloud disks are thin-provisioned and a new one reads
// zeros, which decrypt to noise; with it the target presents an all-zero
// ciphertext sector as zeros, so a never-written (or discarded) block reads
// as the guest expects. The storage learns nothing it did not know (which
// blocks were never written).
struct DiskProfile {
    unsigned sector_size = 512;            // LUKS2 encryption sector size format uses
    bool discards = false;                 // attach --allow-discards permitted
    bool zero_unwritten = true;            // table option zero_unwritten
    bool read_workqueue = false;           // table option: decrypt in the workqueue, never inline
    bool write_workqueue = false;          // table option: encrypt in the workqueue, never inline
    std::optional<unsigned> inline_depth;  // table option inline_depth:N (0-65536); the target's 1 if unset

    friend bool operator==(const DiskProfile&, const DiskProfile&) = default;
};

inline constexpr unsigned kMaxInlineDepth = 65536;

struct DiskType {
    std::string_view name;
    bool encryptable;
    std::string_view description;
    DiskProfile profile;  // the built-in defaults
};

// The known disk types, encryptable and local ones.
std::span<const DiskType> disk_types();

// Returns the profile of an encryptable type; refuses local and unknown types.
const DiskType& encryptable_disk_type(std::string_view name);

// Sector sizes LUKS2 allows: 512, 1024, 2048, 4096.
void validate_sector_size(unsigned sector_size);

// A KMS key as named on disk and on the command line.
struct KeyRef {
    std::string provider;  // a provider name from the agent's configuration
    std::string key_id;    // the provider's id for the key (PKCS#11: CKA_ID bytes)
    std::string version;   // the key version the provider reported at wrap time

    [[nodiscard]] std::string spec() const { return provider + ":" + key_id; }
};

// Provider names: [a-z0-9][a-z0-9_-]{0,31}.
void validate_provider_name(std::string_view name);
// Key ids: [A-Za-z0-9._:/-]{1,128}.
void validate_key_id(std::string_view id);
// Key versions: [A-Za-z0-9._-]{1,64}.
void validate_key_version(std::string_view version);

// Parses "PROVIDER:KEY_ID" (the version is left empty: the provider knows it).
KeyRef parse_key_spec(std::string_view spec);

}  // namespace diskcrypt
