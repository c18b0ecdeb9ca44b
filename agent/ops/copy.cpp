#include "agent/ops/copy.hpp"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <vector>

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/wrap.hpp"
#include "agent/disk_lock.hpp"
#include "agent/log.hpp"
#include "agent/ops/device.hpp"
#include "agent/ops/stream.hpp"
#include "agent/ops/verify.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// The copy's header in an anonymous memory file: the source's first
// kHeaderBytes, loaded by libcryptsetup, given `uuid` (a fresh one if empty)
// and the copy's token, then read back with the checks of read_header().
struct CopyHeaderImage {
    FileDescriptor fd;
    std::string path;
    std::string uuid;
};

CopyHeaderImage build_copy_header(const std::vector<std::uint8_t>& source_header, int token_id, const Token& token,
                                  const std::string& uuid)
{
    CopyHeaderImage img;
    img.fd.reset(memfd_create("diskcrypt-copy-header", MFD_CLOEXEC));
    if (!img.fd) {
        throw Error(Errc::internal, errno_text("memfd_create", errno));
    }
    if (ftruncate(img.fd.get(), static_cast<off_t>(2 * kHeaderBytes)) != 0) {
        throw Error(Errc::internal, errno_text("ftruncate on the header image", errno));
    }
    write_exact(img.fd.get(), source_header.data(), source_header.size(), 0, "the header image");
    img.path = fd_path(img.fd.get());
    const CryptDevice cd = open_luks2(img.path, "the copy's header");
    if (const int r = crypt_set_uuid(cd.get(), uuid.empty() ? nullptr : uuid.c_str()); r < 0) {
        throw Error(Errc::internal, errno_text("libcryptsetup: setting the copy's UUID", -r));
    }
    if (const int r = crypt_token_json_set(cd.get(), token_id, encode_token(token).c_str()); r != token_id) {
        throw Error(Errc::internal, errno_text("libcryptsetup: the copy's token", r < 0 ? -r : EIO));
    }
    const CryptDevice check = open_luks2(img.path, "the copy's header");
    const DiskHeader h = read_header(check.get(), "the copy's header");
    img.uuid = h.luks_uuid;
    return img;
}

// Whether the target holds an interrupted copy of this source to this id.
std::optional<DiskHeader> interrupted_copy(const WritableDevice& target, const std::string& target_id,
                                           const DiskHeader& source)
{
    try {
        const CryptDevice cd = open_luks2(target.fd_path, target.path);
        DiskHeader h = read_header(cd.get(), target.path);
        const Token& t = h.token;
        if (t.incomplete && t.incomplete->operation == "copy" && t.disk_id == target_id && t.origin &&
            t.origin->id == source.token.disk_id && t.origin->luks_uuid == source.luks_uuid) {
            return h;
        }
    } catch (const Error&) {
        // not a diskcrypt header: the usual emptiness rules apply
    }
    return std::nullopt;
}

void check_pair(ResourceKind from, ResourceKind to, const std::string& device)
{
    const bool ok = (from == ResourceKind::disk && to != ResourceKind::disk) ||
                    (from != ResourceKind::disk && to == ResourceKind::disk);
    if (!ok) {
        throw Error(Errc::usage,
                    "device " + device + " holds an encrypted " + std::string(kind_name(from)) + "; an encrypted " +
                        std::string(kind_name(to)) + " is not made from it",
                    "the encrypted copies are: a snapshot or an image from a disk, a disk from a snapshot or an "
                    "image");
    }
}

std::string size_text(std::uint64_t bytes) { return std::to_string(bytes) + " bytes"; }

}  // namespace

CopyResult copy_disk(const AgentConfig& cfg, const proto::CopyArgs& args, OpChannel& channel)
{
    const auto start = Clock::now();

    // 1. Arguments, access, locks.
    const DiskClaim claim = make_claim(cfg, args.disk_id, std::nullopt, args.key);
    validate_service_account(args.service_account);
    validate_user_account(args.user);
    validate_disk_id(args.target_id, "target id");
    if (args.target_id == args.disk_id) {
        throw Error(Errc::usage, "the copy's id " + args.target_id + " is the source's id",
                    "a copy is bound to an id of its own: give --to-id a new id");
    }
    const auto kind = kind_from_name(args.target_kind);
    if (!kind) {
        throw Error(Errc::usage, "unknown target kind '" + printable(args.target_kind, 40) + "'",
                    "use disk, snapshot or image");
    }
    std::string target_type;
    if (args.target_type) {
        if (*kind != ResourceKind::disk) {
            throw Error(Errc::usage,
                        "an encrypted " + std::string(kind_name(*kind)) +
                            " keeps its source's disk type; --type applies to a disk made from a snapshot or image");
        }
        target_type = std::string(encryptable_disk_type(*args.target_type).name);
    } else if (*kind == ResourceKind::disk) {
        throw Error(Errc::usage, "a disk made from a snapshot or an image needs its disk type",
                    "pass --type (network-ssd, network-hdd, network-ssd-nonreplicated or network-ssd-io-m3)");
    }
    const std::string target_sa = args.target_service_account.value_or(args.service_account);
    validate_service_account(target_sa, "target service account");
    if (audit::Context* ctx = audit::current()) {
        ctx->key = claim.key;
    }
    std::vector<AccessCheck> checks = unwrap_checks(args.service_account, claim.key);
    for (auto& c : format_checks(args.user, target_sa, claim.key)) {
        checks.push_back(std::move(c));
    }
    const std::string policy_revision = authorize(cfg, checks);
    const bool source_first = args.disk_id < args.target_id;
    const FileLock lock1 = lock_disk(cfg.lock_dir, source_first ? args.disk_id : args.target_id);
    const FileLock lock2 = lock_disk(cfg.lock_dir, source_first ? args.target_id : args.disk_id);

    // 2. The source: detached (O_EXCL), its header, the claim, the secret.
    const OpenedDevice src = open_device_once(args.device, true);
    FileDescriptor src_claim;
    if (src.block) {
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
        src_claim.reset(::open(src.fd_path.c_str(), O_RDONLY | O_CLOEXEC | O_EXCL));
        if (!src_claim) {
            throw Error(Errc::busy,
                        errno_text("source device " + src.shown + " is in use (attached, mounted or held)", errno),
                        "a copy is made of a detached disk: detach " + args.disk_id + " first");
        }
    }
    DiskHeader source;
    {
        const CryptDevice cd = open_luks2(src.fd_path, args.device);
        source = read_header(cd.get(), args.device);
    }
    if (audit::Context* ctx = audit::current()) {
        ctx->luks_uuid = source.luks_uuid;
    }
    check_claim(source, claim);
    check_pair(source.token.kind, *kind, src.shown);
    if (*kind != ResourceKind::disk) {
        target_type = source.token.disk_type;
    }
    const SecureBuffer secret = unwrap_secret(cfg, source, args.disk_id);
    const std::uint64_t total = src.size - source.data_offset;

    // 3. The target, and the copy's header.
    const WritableDevice dst = open_writable(args.target_device);
    if (dst.size < src.size) {
        throw Error(Errc::device,
                    "target " + dst.path + " is " + size_text(dst.size) + "; the copy needs at least " +
                        size_text(src.size) + " (the size of " + src.shown + ")",
                    "use a target at least as large as the source");
    }
    std::uint64_t resumed_from = 0;
    std::string uuid;
    if (const auto previous = interrupted_copy(dst, args.target_id, source)) {
        uuid = previous->luks_uuid;
        if (source.token.kind != ResourceKind::disk && previous->token.incomplete->total == total) {
            resumed_from = previous->token.incomplete->done / kStreamChunkBytes * kStreamChunkBytes;
        }
        log_info("copy " + args.disk_id + " -> " + args.target_id + ": " +
                 (resumed_from > 0 ? "resuming at byte " + std::to_string(resumed_from)
                                   : std::string("restarting an interrupted copy")));
    } else {
        const std::vector<std::string> signatures = scan_signatures(dst.fd.get(), dst.path, false);
        if (!signatures.empty() && !args.force) {
            std::string list;
            for (const auto& s : signatures) {
                list += (list.empty() ? "" : "; ") + s;
            }
            throw Error(Errc::device_not_empty, "target " + dst.path + " is not empty: it holds " + list,
                        "the copy destroys this; re-run with --force if that is intended");
        }
    }

    Token token = source.token;
    token.disk_id = args.target_id;
    token.kind = *kind;
    token.disk_type = target_type;
    token.service_account = target_sa;
    token.origin = Origin{source.token.kind, source.token.disk_id, source.luks_uuid};
    token.created = utc_timestamp();
    token.incomplete = Incomplete{"copy", resumed_from, total};
    wrap_secret(cfg, claim.key, args.target_id, mapping_of(source, target_type), secret, token);

    std::vector<std::uint8_t> header_bytes(kHeaderBytes);
    read_exact(src.fd.get(), header_bytes.data(), header_bytes.size(), 0, "source " + src.shown);
    const CopyHeaderImage img = build_copy_header(header_bytes, source.token_id, token, uuid);
    if (args.force && resumed_from == 0 && uuid.empty()) {
        for (const auto& s : scan_signatures(dst.fd.get(), dst.path, true)) {
            log_warning("copy to " + args.target_id + ": --force destroys " + s + " on " + dst.path);
        }
    }
    write_header_image(dst, img.path);

    // 4. The data area (whole chunks with O_DIRECT, an unaligned tail
    // buffered), then 5. the rest of a larger target, the mark removed.
    const FileDescriptor in = reopen(src.fd_path, O_RDONLY, true);
    const FileDescriptor out = reopen(dst.fd_path, O_WRONLY, true);
    const FileDescriptor out_tail = reopen(dst.fd_path, O_WRONLY, false);
    StreamJob job;
    job.operation = "copy";
    job.source_id = args.disk_id;
    job.target_id = args.target_id;
    job.in = in.get();
    job.in_tail = src.fd.get();
    job.in_name = "source " + src.shown;
    job.in_offset = source.data_offset;
    job.out = out.get();
    job.out_tail = out_tail.get();
    job.out_name = "target " + dst.path;
    job.out_offset = source.data_offset;
    job.total = total;
    job.start = resumed_from;
    job.zero = [&](std::uint64_t done, std::uint64_t len) {
        zero_range(dst.fd.get(), dst.block, job.out_name, source.data_offset + done, len);
    };
    job.checkpoint = [&](std::uint64_t done) {
        token.incomplete->done = done;
        replace_token(dst.fd_path, dst.path, source.token_id, token);
    };
    StreamResult moved;
    try {
        moved = stream_data(job, channel);
        zero_range(dst.fd.get(), dst.block, job.out_name, src.size, dst.size - src.size);
        flush_data(dst.fd.get(), dst.path);
        token.incomplete.reset();
        replace_token(dst.fd_path, dst.path, source.token_id, token);
    } catch (const Error& e) {
        throw Error(e.code(),
                    std::string(e.what()) + "; target " + dst.path + " (" + args.target_id +
                        ") is marked incomplete and will not attach",
                    "run the same copy again: it resumes (a snapshot or image source) or restarts (a disk source)");
    }

    const CryptDevice cd = open_luks2(dst.fd_path, dst.path);
    const DiskHeader written = read_header(cd.get(), dst.path);
    if (written.luks_uuid != img.uuid || written.token.disk_id != args.target_id || written.token.incomplete ||
        written.token.kind != *kind ||
        crypt_activate_by_passphrase(cd.get(), nullptr, written.token.keyslot, secret.chars(), secret.size(), 0) < 0) {
        throw Error(Errc::device, "the header read back from " + dst.path + " does not match what was written");
    }

    CopyResult r;
    r.source_device = src.shown;
    r.source_id = args.disk_id;
    r.source_kind = source.token.kind;
    r.source_luks_uuid = source.luks_uuid;
    r.target_device = dst.path;
    r.target_id = args.target_id;
    r.target_kind = *kind;
    r.target_type = target_type;
    r.target_luks_uuid = written.luks_uuid;
    r.service_account = target_sa;
    r.user = args.user;
    r.policy_revision = policy_revision;
    r.key = written.token.key;
    r.data_bytes = total;
    r.copied_bytes = total - resumed_from;
    r.resumed_from = resumed_from;
    r.zeroed_bytes = dst.size - src.size;
    r.copy_ms = moved.ms;
    r.elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
    return r;
}

json to_json(const CopyResult& r)
{
    json j = {
        {"source",
         {{"device", r.source_device},
          {"id", r.source_id},
          {"kind", kind_name(r.source_kind)},
          {"luks_uuid", r.source_luks_uuid}}},
        {"target",
         {{"device", r.target_device},
          {"id", r.target_id},
          {"kind", kind_name(r.target_kind)},
          {"type", r.target_type},
          {"luks_uuid", r.target_luks_uuid},
          {"service_account", r.service_account}}},
        {"key", {{"provider", r.key.provider}, {"id", r.key.key_id}, {"version", r.key.version}}},
        {"data_bytes", r.data_bytes},
        {"copied_bytes", r.copied_bytes},
        {"resumed_from", r.resumed_from},
        {"zeroed_bytes", r.zeroed_bytes},
        {"copy_ms", r.copy_ms},
        {"elapsed_ms", r.elapsed_ms},
    };
    j["user"] = r.user;
    j["policy_revision"] = r.policy_revision;
    return j;
}

}  // namespace diskcrypt
