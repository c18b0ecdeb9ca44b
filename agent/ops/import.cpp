#include "agent/ops/import.hpp"

#include <fcntl.h>
#include <libcryptsetup.h>

#include <chrono>

#include "agent/disk/header.hpp"
#include "agent/disk/table.hpp"
#include "agent/disk_lock.hpp"
#include "agent/dm.hpp"
#include "agent/log.hpp"
#include "agent/ops/attach.hpp"
#include "agent/ops/stream.hpp"
#include "agent/ops/verify.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

using Clock = std::chrono::steady_clock;

// Removes the import's mapping when the import leaves, however it leaves.
class StagingMapping {
public:
    explicit StagingMapping(std::string name) : name_(std::move(name)) {}
    StagingMapping(const StagingMapping&) = delete;
    StagingMapping& operator=(const StagingMapping&) = delete;
    StagingMapping(StagingMapping&&) = delete;
    StagingMapping& operator=(StagingMapping&&) = delete;
    ~StagingMapping()
    {
        if (name_.empty()) {
            return;
        }
        try {
            dm::remove(name_, false);
        } catch (const std::exception& e) {
            log_warning("import: removing " + name_ + " failed: " + printable(e.what()) + "; detach it with --force");
        }
    }
    // Removes it now; Error from dm::remove.
    void remove()
    {
        const std::string name = std::move(name_);
        name_.clear();
        dm::remove(name, false);
    }

private:
    std::string name_;
};

}  // namespace

ImportResult import_disk(const AgentConfig& cfg, const proto::ImportArgs& args, OpChannel& channel)
{
    // 1. The source, the lock.
    validate_disk_id(args.format.disk_id);
    const OpenedDevice src = open_device_once(args.source, true);
    if (src.size == 0 || src.size % 512 != 0) {
        throw Error(Errc::device,
                    "source " + src.shown + " is " + std::to_string(src.size) +
                        " bytes, not a whole number of 512-byte sectors",
                    "import a raw image (qemu-img convert -O raw converts other formats)");
    }
    dm::require_available();
    // The disk is mapped to be written: a block device (checked before
    // format writes anything to it; format opens it by its path again, and
    // the LUKS2 UUID read back below ties the two).
    const OpenedDevice dev = open_device_once(args.format.device, false);
    const FileLock lock = lock_disk(cfg.lock_dir, args.format.disk_id);
    if (dm::find(mapping_name(args.format.disk_id))) {
        throw Error(Errc::conflict, "disk " + args.format.disk_id + " is attached on this host",
                    "an import makes a new disk: detach it first, or choose another disk id");
    }

    // 2. format, marked incomplete (checks access and the usable size).
    FormatExtras extras;
    extras.incomplete = Incomplete{"import", 0, src.size};
    extras.min_usable = src.size;
    extras.source = "source " + src.shown;
    extras.redo_own_import = true;
    extras.lock_held = true;
    SecureBuffer secret;
    extras.secret_out = &secret;
    ImportResult res;
    res.format = format_disk(cfg, args.format, extras);
    res.source = src.shown;
    res.source_bytes = src.size;

    // 3. The mapping, the stream.
    const auto copy_start = Clock::now();
    DiskHeader header;
    try {
        const CryptDevice cd = open_luks2(dev.fd_path, dev.shown);
        header = read_header(cd.get(), dev.shown);
        if (header.luks_uuid != res.format.luks_uuid) {
            throw Error(Errc::device, "device " + dev.shown + " changed under the import");
        }
        map_disk(cd.get(), header, dev, args.format.disk_id, disk_table(cfg, header, dev, false), secret);
    } catch (const Error& e) {
        throw Error(e.code(),
                    std::string(e.what()) + "; disk " + args.format.disk_id + " on " + dev.shown +
                        " is marked incomplete and will not attach",
                    "run the import again: it starts over");
    }
    secret = SecureBuffer();
    StagingMapping staging(mapping_name(args.format.disk_id));
    const bool zero_unwritten = cfg.profile(header.token.disk_type).zero_unwritten;
    Token token = header.token;
    try {
        // The descriptors of the mapping closed before it is removed.
        {
            const std::string mapped = mapped_path(args.format.disk_id);
            const FileDescriptor in = reopen(src.fd_path, O_RDONLY, true);
            const FileDescriptor out = reopen(mapped, O_WRONLY, true);
            const FileDescriptor out_tail = reopen(mapped, O_WRONLY, false);
            const FileDescriptor backing = reopen(dev.fd_path, O_WRONLY, false);
            StreamJob job;
            job.operation = "import";
            job.source_id = src.shown;
            job.target_id = args.format.disk_id;
            job.in = in.get();
            job.in_tail = src.fd.get();
            job.in_name = "source " + src.shown;
            job.out = out.get();
            job.out_tail = out_tail.get();
            job.out_name = mapped;
            job.total = src.size;
            if (zero_unwritten) {
                job.zero = [&](std::uint64_t done, std::uint64_t len) {
                    zero_range(backing.get(), dev.block, dev.shown, header.data_offset + done, len);
                };
            }
            job.checkpoint = [&](std::uint64_t done) {
                token.incomplete->done = done;
                replace_token(dev.fd_path, dev.shown, header.token_id, token);
            };
            const StreamResult moved = stream_data(job, channel);
            res.encrypted_bytes = moved.moved - moved.zeroed;
            res.zeroed_bytes = moved.zeroed;
            res.copy_ms = moved.ms;
            if (zero_unwritten) {
                const std::uint64_t tail = dev.size - header.data_offset - src.size;
                zero_range(backing.get(), dev.block, dev.shown, header.data_offset + src.size, tail);
                flush_data(backing.get(), dev.shown);
                res.zeroed_bytes += tail;
            }
        }
        // 4. The mapping removed, the mark removed.
        staging.remove();
        token.incomplete.reset();
        replace_token(dev.fd_path, dev.shown, header.token_id, token);
    } catch (const Error& e) {
        throw Error(e.code(),
                    std::string(e.what()) + "; disk " + args.format.disk_id + " on " + dev.shown +
                        " is marked incomplete and will not attach",
                    "run the import again: it starts over");
    }
    const CryptDevice cd = open_luks2(dev.fd_path, dev.shown);
    const DiskHeader written = read_header(cd.get(), dev.shown);
    if (written.luks_uuid != res.format.luks_uuid || written.token.incomplete) {
        throw Error(Errc::device, "the header read back from " + dev.shown + " does not match what was written");
    }
    res.format.elapsed_ms += std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - copy_start).count();
    return res;
}

nlohmann::json to_json(const ImportResult& r)
{
    nlohmann::json j = to_json(r.format);
    j["source"] = {{"path", r.source}, {"bytes", r.source_bytes}};
    j["encrypted_bytes"] = r.encrypted_bytes;
    j["zeroed_bytes"] = r.zeroed_bytes;
    j["copy_ms"] = r.copy_ms;
    return j;
}

}  // namespace diskcrypt
