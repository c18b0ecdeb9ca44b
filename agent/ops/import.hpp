// `import`: an encrypted disk from an unencrypted source, the seeds' rows
// "encrypted disk from an unencrypted image" and "from an unencrypted
// snapshot" (any key the user may use); also how an existing unencrypted disk
// or snapshot is encrypted (through an image of it). The source is a raw
// image: a regular file or a block device, a whole number of 512-byte
// sectors. (qcow2 and other formats: convert with `qemu-img convert -O raw`
// first; Debian has no library that reads qcow2 well enough to trust with
// hostile images.)
//
// Order of work:
//   1. arguments; the source opened read-only; the disk's lock; format's
//      access checks (the acting user, the disk's service account, the key);
//   2. the target formatted as `format` does it, with the token marked
//      `incomplete` (operation "import"); a source larger than the usable
//      size is refused before anything is written, with both sizes;
//   3. a mapping of the new disk through the kernel target (as attach makes
//      it, named diskcrypt-ID, the disk type's profile), and the source
//      streamed into it in 4 MiB chunks with O_DIRECT: the kernel target does
//      the crypto. With the profile's zero_unwritten, an all-zero chunk of
//      the source is not encrypted: its ciphertext range on the backing
//      device is zeroed (BLKZEROOUT), which the target reads as zeros; so is
//      the rest of the disk beyond the source. Without it every sector is
//      written, zeros included, and the rest of the disk is left as format
//      leaves it. Every kCheckpointBytes the mapping is flushed and
//      `incomplete.done` advanced;
//   4. the mapping removed, the mark removed, the header read back.
// A failure or a cancellation after step 2 removes the mapping and leaves
// the target marked incomplete (attach refuses it, exit 19). Running the
// import again restarts it (a new DEK: the interrupted import's data is not
// kept); its own interrupted import is overwritten without --force.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/config.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ops/channel.hpp"
#include "agent/ops/format.hpp"

namespace diskcrypt {

struct ImportResult {
    FormatResult format;
    std::string source;
    std::uint64_t source_bytes = 0;
    std::uint64_t encrypted_bytes = 0;  // written through the target
    std::uint64_t zeroed_bytes = 0;     // all-zero chunks and the tail, zeroed on the backing device
    long long copy_ms = 0;              // the data phase (stream_data: through the target, flushed)
};

ImportResult import_disk(const AgentConfig& cfg, const proto::ImportArgs& args, OpChannel& channel);
nlohmann::json to_json(const ImportResult& r);

}  // namespace diskcrypt
