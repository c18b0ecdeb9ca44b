// The device-mapper side of a diskcrypt disk, without libdevmapper: mapping
// names and dm uuids, and the `diskcrypt` target's table built from a LUKS2
// header (typed, as cryptsetup builds dm-crypt tables from a struct), and
// parsed back from `dmsetup table` when the agent rebuilds its view.
//
//   name   diskcrypt-<disk-id>
//   uuid   DISKCRYPT-<disk-id>
//   table  0 <len> diskcrypt aes-xts-plain64 :64:logon:diskcrypt:<luks-uuid>:<random>
//          <iv_offset> <major>:<minor> <dev_offset> [<n> sector_size:<s> iv_large_sectors allow_discards
//          zero_unwritten read_workqueue write_workqueue inline_depth:<d>]
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "agent/disk/header.hpp"

namespace diskcrypt {

inline constexpr std::string_view kMappingPrefix = "diskcrypt-";
inline constexpr std::string_view kDmUuidPrefix = "DISKCRYPT-";
inline constexpr std::string_view kTargetName = "diskcrypt";
inline constexpr std::string_view kTableCipher = "aes-xts-plain64";
inline constexpr int kDekBytes = 64;  // AES-256-XTS
inline constexpr std::string_view kKeyDescriptionPrefix = "diskcrypt:";

// "diskcrypt-<disk-id>" and "DISKCRYPT-<disk-id>" (the id is validated).
std::string mapping_name(std::string_view disk_id);
std::string dm_uuid(std::string_view disk_id);
// The disk id in a dm uuid of ours, or nothing if the uuid is not ours.
std::optional<std::string> disk_id_from_dm_uuid(std::string_view uuid);
// "/dev/mapper/diskcrypt-<disk-id>".
std::string mapped_path(std::string_view disk_id);

// "diskcrypt:<luks-uuid>:<16 random hex digits>"; Error(header) unless the
// UUID has the canonical form.
std::string new_key_description(std::string_view luks_uuid);
// The LUKS UUID inside a key description of ours, or nothing (also when the
// UUID there is not in the canonical form).
std::optional<std::string> luks_uuid_from_key_description(std::string_view description);

struct CryptTable {
    std::uint64_t length = 0;  // 512-byte sectors
    std::string key_description;
    std::uint64_t iv_offset = 0;  // 512-byte sectors
    unsigned major = 0;
    unsigned minor = 0;
    std::uint64_t dev_offset = 0;  // 512-byte sectors
    unsigned sector_size = 512;
    bool iv_large_sectors = false;
    bool allow_discards = false;
    bool zero_unwritten = false;
    bool read_workqueue = false;
    bool write_workqueue = false;
    std::optional<unsigned> inline_depth;

    // The target's parameters (everything after "diskcrypt").
    [[nodiscard]] std::string params() const;
    [[nodiscard]] std::string backing_devno() const { return std::to_string(major) + ":" + std::to_string(minor); }
};

// The table for a header on a block device (major:minor) of `device_bytes`:
// refuses (Error(header)) ciphers other than aes-xts-plain64 with a 512-bit
// key, and (Error(device)) a device smaller than the data offset plus one
// sector or whose data area is not a multiple of the sector size.
// `allow_discards` is the attach's decision (the caller's request, permitted
// by the disk type's profile); the header's persistent flag is ignored.
CryptTable table_from_header(const DiskHeader& header, unsigned major, unsigned minor, std::uint64_t device_bytes,
                             std::string key_description, bool allow_discards = false);

// Sets the table options a disk type's profile chooses (zero_unwritten and
// the queueing options; discards are the attach's decision).
void apply_profile(CryptTable& table, const DiskProfile& profile);

// Parses the parameters `dmsetup table` shows for one of our mappings;
// nothing if they do not have the shape params() writes.
std::optional<CryptTable> parse_table_params(std::uint64_t length, std::string_view params);

}  // namespace diskcrypt
