// attach, detach, list and status of disks: the agent's view of the
// diskcrypt mappings on this host, rebuilt from device-mapper on every request
// (the agent keeps no state of its own, so a restarted agent sees what an
// earlier one attached).
//
// attach: disk lock; the device path is opened once (O_NONBLOCK) and must be
// a block device; libcryptsetup reads that descriptor and the table names its
// device number, checked again just before the table is loaded; an empty
// device of ours left by an interrupted attach is removed (audited); an existing mapping of
// the same disk id on the same device is returned as it is (idempotent), on
// another device refused, and a device already attached under another id
// refused; then the header's disk id is checked against the caller's, the
// secret unwrapped with the AD built from the caller's id, the volume key
// (DEK) taken through libcryptsetup (which verifies its digest) into locked
// memory, and, in a thread of its own, added as a possessor-only logon key to
// that thread's keyring, the mapping created (discards only when the caller
// asks and the disk type's profile permits; never from the header), and the
// key invalidated
// whatever happened. The thread then ends, and its keyring with it.
//
// detach: disk lock; refuses a mapping in use and names its holders (mounts,
// stacked devices, processes); with force, the table is replaced by dm-error
// (every further I/O fails, the key leaves the kernel with the old table) and
// the mapping is removed, deferred until the last opener closes it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "agent/config.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/table.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ops/verify.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {

struct DiskInfo {
    std::string disk_id;
    std::string mapping;  // diskcrypt-<id>
    std::string dm_uuid;
    std::string path;       // /dev/mapper/diskcrypt-<id>
    std::string dm_device;  // dm-N
    std::string devno;      // major:minor of the mapping
    std::string backing_devno;
    std::string backing_device;  // /dev/NAME, or "" if unknown
    std::uint64_t size = 0;      // bytes the VM sees
    unsigned sector_size = 512;
    bool iv_large_sectors = false;
    bool allow_discards = false;
    bool zero_unwritten = false;
    bool read_workqueue = false;
    bool write_workqueue = false;
    std::optional<unsigned> inline_depth;  // null: the target's default
    std::string luks_uuid;
    std::string target;     // "diskcrypt", or "error" after a forced detach
    std::string key_state;  // "valid", "wiped" (from the target's status), "" if unknown
    int open_count = 0;
    bool suspended = false;
    std::vector<std::string> holders;                    // mounts, stacked devices, processes
    nlohmann::json counters = nlohmann::json::object();  // reads, writes, errors, ... from the status
    std::optional<KeyRef> key;                           // from the header, if readable
    std::string disk_type;                               // from the header
    std::string state;                                   // "" or kEmptyState (a device of ours without a table)
    std::string header_error;  // why the backing device's header could not be read (escaped), or ""
    // A revoked disk (suspended, key wiped by the revocation check): the key
    // version, its state and since when (agent/ops/revocation.hpp); null otherwise.
    nlohmann::json revoked;
};

// The state `list` shows for a device of ours without a table, left by an
// attach interrupted between creating diskcrypt-ID and loading its table;
// the next attach of that disk id removes it (audit event "remove-empty").
inline constexpr std::string_view kEmptyState = "empty: left by an interrupted attach";

struct AttachResult {
    DiskInfo disk;
    std::string service_account;
    std::string policy_revision;  // the access policy the check was made under
    std::string device;           // as the caller named it
    std::string provider_type;
    std::uint64_t data_offset = 0;
    bool already_attached = false;
    long long elapsed_ms = 0;
    long long kms_ms = 0;  // of elapsed_ms, the time spent waiting for the KMS
};

struct DetachResult {
    DiskInfo disk;  // as it was before the detach
    bool forced = false;
    bool deferred = false;  // forced while open: removed when the last opener closes it
    long long elapsed_ms = 0;
};

AttachResult attach_disk(const AgentConfig& cfg, const proto::AttachArgs& args);

// attach's two steps, for import: the table from a checked header and the
// disk type's profile (before the KMS is asked), then, with the unwrapped
// secret, the DEK from the keyslot (Error(header) if it does not open) given
// to the kernel in a thread of its own and the mapping created.
CryptTable disk_table(const AgentConfig& cfg, const DiskHeader& header, const OpenedDevice& dev, bool allow_discards);
void map_disk(crypt_device* cd, const DiskHeader& header, const OpenedDevice& dev, const std::string& disk_id,
              CryptTable table, const SecureBuffer& secret);
DetachResult detach_disk(const AgentConfig& cfg, const proto::DetachArgs& args);
// Every diskcrypt mapping on the host (dm uuid prefix DISKCRYPT-), by disk id;
// with `headers`, also what each backing device's header says (key, type).
std::vector<DiskInfo> list_disks(bool headers = true);
// Adds what the backing device's header says (key, disk type) to `d`, when the
// header is readable; a header that is not is logged, never an error.
void add_header_info(DiskInfo& d);
// Revocation (agent/ops/revocation.hpp), under the disk's lock: suspends the
// mapping (in-flight I/O completes, new I/O waits) and wipes the target's key
// ("key wipe").
void wipe_disk_key(const AgentConfig& cfg, const std::string& disk_id);
// Restoration: for a suspended mapping whose key was wiped, the header of the
// backing device its table names (checked: this disk's, and describing the
// live table), the secret unwrapped through the KMS (audited), the DEK given
// to the target with "key set" from a thread keyring, and the mapping
// resumed.
void rekey_disk(const AgentConfig& cfg, const std::string& disk_id);
// One disk; Error(not_attached) if it has no mapping.
DiskInfo disk_status(const std::string& disk_id);

nlohmann::json to_json(const DiskInfo& d);
nlohmann::json to_json(const AttachResult& r);
nlohmann::json to_json(const DetachResult& r);

// Who holds an open mapping: mount points (/proc/self/mountinfo), stacked
// devices (/sys/block/dm-N/holders) and processes with it open (/proc/*/fd),
// e.g. "mounted on /mnt", "held by dm-4 (vg-lv)", "open by pid 812 (qemu-system-x86)".
std::vector<std::string> holders_of(unsigned major, unsigned minor, const std::string& mapping);

}  // namespace diskcrypt
