// `verify`: proves that this host can open a disk, without opening it for
// I/O: reads the header, checks the caller's disk id against it, unwraps the
// secret through the KMS with the AD built from the caller's disk id, and
// opens the keyslot (check only). No secret leaves the agent.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/config.hpp"
#include "agent/disk/header.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {

// A device opened once for a whole operation: what was checked is what
// libcryptsetup reads (through `fd_path`, /proc/self/fd/N) and what the table
// names (`devno`, from this descriptor's fstat).
struct OpenedDevice {
    FileDescriptor fd;
    std::string shown;    // the caller's path, made printable (for messages)
    std::string fd_path;  // /proc/self/fd/N
    bool block = false;
    dev_t devno = 0;         // st_rdev of a block device
    std::uint64_t size = 0;  // bytes
};

// Opens `path` (absolute; Error(usage) otherwise) with O_RDONLY | O_NONBLOCK
// | O_CLOEXEC | O_NOCTTY, so a FIFO or a tty never blocks the thread, and
// checks with fstat that it is a block device (or, with allow_regular, a
// regular file): Error(device) otherwise.
OpenedDevice open_device_once(const std::string& path, bool allow_regular);

// Just before a table naming `dev.devno` is loaded: the descriptor is still
// a block device with that number (Error(device) otherwise).
void recheck_device(const OpenedDevice& dev);

// What the control plane says about a disk (attach and verify take it from
// the caller, never from the header): its id, its type and its KMS key.
struct DiskClaim {
    std::string disk_id;
    std::string disk_type;
    KeyRef key;  // version empty: the header's version of this key is used
};

// The claim's values, validated (Error(usage): invalid disk id, unknown or
// local disk type, bad PROVIDER:KEY_ID, provider not configured). Without a
// disk type (verify may leave it out) the claim's is empty and not checked.
DiskClaim make_claim(const AgentConfig& cfg, const std::string& disk_id, const std::optional<std::string>& disk_type,
                     const std::string& key);

// Error(incomplete) if the header is an interrupted copy or import.
// Error(binding) unless the header agrees with the claim: the same disk id,
// the same disk type, and wrapped under the same key (provider and key id),
// so that a header written back under a retired key, or another disk's, is
// refused before the KMS is asked.
void check_claim(const DiskHeader& header, const DiskClaim& claim);

// Unwraps a header's secret for the disk the caller names. Checks first that
// the header belongs to `disk_id` (Error(binding): "this header belongs to
// disk X, not Y"), that its provider is configured with the same type
// (Error(config)), then asks the KMS with the AD of the token's version (a
// failed tag is Error(binding); with version 2 the message says that the
// header's mapping parameters or disk type may not match what was wrapped).
SecureBuffer unwrap_secret(const AgentConfig& cfg, const DiskHeader& header, const std::string& disk_id);

// Error(header) unless `secret` opens the header's keyslot (libcryptsetup
// checks it against the keyslot's digest; nothing is activated). `shown`
// names the device.
void check_keyslot_secret(crypt_device* cd, const DiskHeader& header, const SecureBuffer& secret,
                          const std::string& shown);

struct VerifyResult {
    DiskHeader header;
    std::string service_account;  // the caller's, which holds decrypt on the key
    std::string policy_revision;  // the access policy the check was made under
};

// verify: the access check (the service account needs kms.keys.decrypt on
// the claimed key), the claim against the header, then the unwrap.
VerifyResult verify_disk(const AgentConfig& cfg, const proto::VerifyArgs& args);
nlohmann::json to_json(const VerifyResult& r);

}  // namespace diskcrypt
