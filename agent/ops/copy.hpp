// `copy`: an encrypted disk, snapshot or image made from an encrypted source,
// the seeds' rows whose source is encrypted (../shared/DESIGN.md):
//
//   snapshot <- disk, image <- disk    (the disk's key)
//   disk <- snapshot, disk <- image    (the snapshot's or image's key)
//
// The header and the ciphertext are copied as they are: the copy keeps the
// source's DEK and KMS key, and no data is decrypted. The copy gets a LUKS2
// UUID of its own and its keyslot secret is re-wrapped under its own id and
// type (the key's current version), so the source's id does not unwrap it;
// `disk.origin` records the source (kind, id, LUKS2 UUID) and `disk.lineage`
// carries the source's lineage on.
//
// The source is copied detached: a block device is opened with O_EXCL for
// the whole copy, so a source attached on this host is refused (Error(busy))
// and cannot be attached while it is copied. (Suspending a mapping would
// stop the VM's I/O for the whole copy; a point-in-time copy of a disk in use
// belongs to the storage's copy-on-write snapshots, not to the host.)
//
// Order of work:
//   1. arguments; the access checks (the source's service account needs
//      kms.keys.decrypt on the key; the user and the copy's service account
//      as for format); one lock per disk id (in name order);
//   2. the source: header read, the claim checked, the secret unwrapped;
//   3. the copy's header, built in memory (the source's, with a new UUID and
//      the re-wrapped token marked `incomplete`), written to the target in
//      one crypt_header_restore() (the target must be empty, as for format,
//      unless --force, or an interrupted copy of this very source to this id);
//   4. the data area in 4 MiB chunks (O_DIRECT where the device allows),
//      progress to the caller; every kCheckpointBytes the target is flushed
//      and `incomplete.done` advanced; all-zero chunks of a block device are
//      written with BLKZEROOUT;
//   5. a target larger than the source: the rest zeroed (it reads as zeros
//      with the profile's zero_unwritten, as noise without it, as on a new
//      disk); flushed; the mark removed; the header read back and its
//      keyslot opened with the secret.
// A failure or cancellation (Error(cancelled)) from step 3 on leaves the
// target marked incomplete: attach and verify refuse it (Error(incomplete),
// exit 19) and the message says to run the copy again. Re-running resumes
// from `incomplete.done` when the source is a snapshot or an image (they do
// not change), and restarts when it is a disk (it may have been written
// since).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/config.hpp"
#include "agent/disk/token.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ops/channel.hpp"

namespace diskcrypt {

struct CopyResult {
    std::string source_device;
    std::string source_id;
    ResourceKind source_kind = ResourceKind::disk;
    std::string source_luks_uuid;
    std::string target_device;
    std::string target_id;
    ResourceKind target_kind = ResourceKind::disk;
    std::string target_type;
    std::string target_luks_uuid;
    std::string service_account;
    std::string user;
    std::string policy_revision;
    KeyRef key;
    std::uint64_t data_bytes = 0;    // the source's data area
    std::uint64_t copied_bytes = 0;  // written by this run
    std::uint64_t resumed_from = 0;  // bytes already copied by an interrupted run
    std::uint64_t zeroed_bytes = 0;  // the target's tail beyond the source
    long long copy_ms = 0;           // the data phase (stream_data: the data area, flushed)
    long long elapsed_ms = 0;
};

CopyResult copy_disk(const AgentConfig& cfg, const proto::CopyArgs& args, OpChannel& channel);
nlohmann::json to_json(const CopyResult& r);

}  // namespace diskcrypt
