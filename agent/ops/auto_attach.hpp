// auto-attach and auto-detach: what udev's diskcrypt-attach@MAJ:MIN.service
// runs when a block device with a diskcrypt header appears or goes.
//
// What the header says is not trusted: which devices may attach, and with
// which disk id, type, key and service account, is written by host
// provisioning, one TOML file per disk in the provisioning folder
// ([auto_attach] directory, /etc/diskcrypt/disks.d by default), matched by
// the device's serial as the kernel reports it (virtio-blk, NVMe). The
// entry's claims then go through attach unchanged: the access check, the
// header's agreement with the claims, the keyslot check. A device without
// an entry, or with more than one, is refused (and audited), never attached.
//
// auto-detach finds the mapping whose backing device is MAJ:MIN: a device
// that is gone is detached by force (the table becomes dm-error, the
// mapping is removed when its last opener closes it: nothing waits on I/O
// that cannot complete); a device still present is detached as `detach`
// does (refused while in use).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/config.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ops/attach.hpp"

namespace diskcrypt {

inline constexpr std::string_view kDefaultProvisioningDir = "/etc/diskcrypt/disks.d";
// Bounds on the provisioning folder: files read, bytes per file.
inline constexpr std::size_t kMaxProvisioningFiles = 10000;
inline constexpr std::size_t kMaxProvisioningBytes = 64U << 10U;
inline constexpr std::size_t kMaxSerialBytes = 64;

// One provisioning file: the serial it matches and the claims attach gets.
struct ProvisioningEntry {
    std::string source;  // the file
    std::string serial;
    proto::AttachArgs claims;  // device left empty
};

// Error(config) "FILE:LINE: reason" for a file that is not a valid entry
// (unknown or missing keys, wrong types, invalid names).
ProvisioningEntry parse_provisioning_entry(std::string_view text, const std::string& source);

// The entry of `dir` whose serial is `serial` (each *.toml file read as a
// trusted file, see trusted_file.hpp); nullopt if none; Error(config) if two
// files claim the serial or a file is refused (it cannot be told whether it
// was meant for this device).
std::optional<ProvisioningEntry> find_provisioning_entry(const std::string& dir, const std::string& serial);

// A serial as the kernel reports it (surrounding blanks removed); Error(device)
// unless it is 1 to 64 of [A-Za-z0-9._:-].
std::string validate_serial(std::string_view raw);

// A block device named by its device number, from sysfs.
struct BlockDeviceId {
    std::string devno;   // "MAJ:MIN"
    std::string path;    // /dev/NAME
    std::string serial;  // "" if the device reports none
};
// Error(usage) for a malformed MAJ:MIN; Error(device) if no such block device.
BlockDeviceId identify_block_device(std::string_view devno, const std::string& sysfs = "/sys");

struct AutoAttachResult {
    BlockDeviceId device;
    std::string entry;  // the provisioning file used
    AttachResult attach;
};
AutoAttachResult auto_attach(const AgentConfig& cfg, const proto::AutoDeviceArgs& args);

struct AutoDetachResult {
    std::string devno;
    bool device_present = false;
    DetachResult detach;
};
AutoDetachResult auto_detach(const AgentConfig& cfg, const proto::AutoDeviceArgs& args);

nlohmann::json to_json(const AutoAttachResult& r);
nlohmann::json to_json(const AutoDetachResult& r);

}  // namespace diskcrypt
