#include "agent/ops/format.hpp"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/token.hpp"
#include "agent/disk_lock.hpp"
#include "agent/log.hpp"
#include "agent/raii.hpp"
#include "agent/secure_buffer.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

struct Device {
    FileDescriptor fd;
    FileDescriptor exclusive;  // held open with O_EXCL (block devices) for the whole format
    std::string path;          // as the caller named it, made printable (for messages)
    std::string fd_path;       // /proc/self/fd/N: what libcryptsetup opens, the very file checked here
    bool block = false;
    std::uint64_t size = 0;
    unsigned logical_block = 512;
};

std::string fd_path(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

// NOLINTBEGIN(cppcoreguidelines-pro-type-vararg): open and ioctl are C vararg APIs
Device open_device(const std::string& raw_path)
{
    const std::string path = printable(raw_path);
    if (raw_path.empty() || raw_path.front() != '/') {
        throw Error(Errc::usage, "device path '" + path + "' is not absolute");
    }
    Device d;
    d.path = path;
    d.fd.reset(::open(raw_path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (!d.fd) {
        const int e = errno;
        if (e == EISDIR) {
            throw Error(Errc::device, "device " + path +
                                          " is neither a block device nor a regular file (it is a "
                                          "directory)");
        }
        throw Error(Errc::device, errno_text("cannot open device " + path, e),
                    e == ENOENT ? "check the device path" : "");
    }
    struct stat st {};
    if (fstat(d.fd.get(), &st) != 0) {
        throw Error(Errc::device, errno_text("cannot stat device " + path, errno));
    }
    if (S_ISBLK(st.st_mode)) {
        d.block = true;
        // Exclusive open: fails if the device is mounted or held by another driver.
        d.exclusive.reset(::open(fd_path(d.fd.get()).c_str(), O_RDONLY | O_CLOEXEC | O_EXCL));
        if (!d.exclusive) {
            const int e = errno;
            throw Error(Errc::device,
                        errno_text("device " + path + " is in use (mounted, mapped or held by another driver)", e),
                        "unmount or detach it first");
        }
        std::uint64_t size = 0;
        if (::ioctl(d.fd.get(), BLKGETSIZE64, &size) != 0) {
            throw Error(Errc::device, errno_text("cannot read the size of " + path, errno));
        }
        d.size = size;
        int lbs = 0;
        if (::ioctl(d.fd.get(), BLKSSZGET, &lbs) == 0 && lbs > 0) {
            d.logical_block = static_cast<unsigned>(lbs);
        }
    } else if (S_ISREG(st.st_mode)) {
        d.size = static_cast<std::uint64_t>(st.st_size);
    } else {
        throw Error(Errc::device, "device " + path + " is neither a block device nor a regular file");
    }
    d.fd_path = fd_path(d.fd.get());
    return d;
}
// NOLINTEND(cppcoreguidelines-pro-type-vararg)

void check_geometry(const Device& d, unsigned sector_size)
{
    if (d.size < kHeaderBytes + kMinUsableBytes) {
        throw Error(Errc::device, "device " + d.path + " is " + std::to_string(d.size) +
                                      " bytes; format needs at least " +
                                      std::to_string(kHeaderBytes + kMinUsableBytes) + " (a " +
                                      std::to_string(kHeaderBytes) + "-byte header and 1 MiB of data)");
    }
    if (sector_size < d.logical_block) {
        throw Error(Errc::usage,
                    "device " + d.path + " has " + std::to_string(d.logical_block) +
                        "-byte logical blocks; the encryption sector size " + std::to_string(sector_size) +
                        " cannot be smaller",
                    "use --sector-size " + std::to_string(d.logical_block) + " or larger");
    }
    if ((d.size - kHeaderBytes) % sector_size != 0) {
        throw Error(Errc::device,
                    "device " + d.path + ": the data area (" + std::to_string(d.size - kHeaderBytes) +
                        " bytes) is not a multiple of the " + std::to_string(sector_size) + "-byte sector size",
                    "make the device size a multiple of " + std::to_string(sector_size) + " bytes");
    }
}

std::string lookup(blkid_probe pr, const char* name)
{
    const char* value = nullptr;
    std::size_t len = 0;
    if (blkid_probe_lookup_value(pr, name, &value, &len) != 0 || value == nullptr) {
        return {};
    }
    std::string s(value, len);
    while (!s.empty() && s.back() == '\0') {
        s.pop_back();
    }
    for (char& c : s) {
        if (c < 0x20 || c >= 0x7f) {
            c = '?';
        }
    }
    return s;
}

std::string describe_signature(blkid_probe pr)
{
    std::string type = lookup(pr, "TYPE");
    std::string what;
    std::string offset;
    if (!type.empty()) {
        const std::string usage = lookup(pr, "USAGE");
        if (usage == "filesystem") {
            what = type + " filesystem";
        } else if (usage == "crypto") {
            what = type + " encrypted volume";
        } else if (usage == "raid") {
            what = type + " RAID member";
        } else {
            what = type + " signature";
        }
        offset = lookup(pr, "SBMAGIC_OFFSET");
    } else {
        what = lookup(pr, "PTTYPE") + " partition table";
        offset = lookup(pr, "PTMAGIC_OFFSET");
    }
    std::string details;
    for (const char* key : {"SUBSYSTEM", "LABEL", "UUID"}) {
        const std::string v = lookup(pr, key);
        if (!v.empty()) {
            details += (details.empty() ? "" : ", ") + std::string(key) + " " + v;
        }
    }
    if (!offset.empty()) {
        what += " at offset " + offset;
    }
    if (!details.empty()) {
        what += " (" + details + ")";
    }
    return what;
}

// Lists (and with `wipe`, erases) every superblock and partition-table
// signature, the way wipefs does.
std::vector<std::string> scan_signatures(int fd, const std::string& device, bool wipe)
{
    BlkidProbe pr(blkid_new_probe());
    if (!pr || blkid_probe_set_device(pr.get(), fd, 0, 0) != 0) {
        throw Error(Errc::device, "cannot probe device " + device + " for existing signatures");
    }
    (void)blkid_probe_enable_superblocks(pr.get(), 1);
    (void)blkid_probe_set_superblocks_flags(pr.get(), BLKID_SUBLKS_TYPE | BLKID_SUBLKS_USAGE | BLKID_SUBLKS_LABEL |
                                                          BLKID_SUBLKS_UUID | BLKID_SUBLKS_MAGIC |
                                                          BLKID_SUBLKS_BADCSUM);
    (void)blkid_probe_enable_partitions(pr.get(), 1);
    (void)blkid_probe_set_partitions_flags(pr.get(), BLKID_PARTS_MAGIC);
    std::vector<std::string> found;
    constexpr int kMaxSignatures = 64;
    while (found.size() < kMaxSignatures && blkid_do_probe(pr.get()) == 0) {
        found.push_back(describe_signature(pr.get()));
        if (wipe && blkid_do_wipe(pr.get(), 0) != 0) {
            throw Error(Errc::device, errno_text("cannot wipe " + found.back() + " on " + device, errno));
        }
    }
    return found;
}

// The complete header, built in an anonymous memory file.
struct HeaderImage {
    FileDescriptor fd;
    std::string path;
    std::string uuid;
    int token_id = -1;
};

void check_cs(int r, const std::string& what)
{
    if (r < 0) {
        throw Error(Errc::internal, errno_text("libcryptsetup: " + what, -r));
    }
}

HeaderImage build_header(unsigned sector_size, const SecureBuffer& secret, const std::string& token_json)
{
    HeaderImage img;
    img.fd.reset(memfd_create("diskcrypt-header", MFD_CLOEXEC));
    if (!img.fd) {
        throw Error(Errc::internal, errno_text("memfd_create", errno));
    }
    if (ftruncate(img.fd.get(), static_cast<off_t>(kHeaderBytes + kMinUsableBytes)) != 0) {
        throw Error(Errc::internal, errno_text("ftruncate on the header image", errno));
    }
    img.path = fd_path(img.fd.get());

    crypt_device* raw = nullptr;
    check_cs(crypt_init(&raw, img.path.c_str()), "crypt_init on the header image");
    const CryptDevice cd(raw);
    check_cs(crypt_set_metadata_size(cd.get(), kMetadataBytes, kKeyslotsBytes), "crypt_set_metadata_size");
    crypt_pbkdf_type pbkdf{};
    pbkdf.type = CRYPT_KDF_PBKDF2;
    pbkdf.hash = "sha256";
    pbkdf.iterations = kPbkdfIterations;
    pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
    check_cs(crypt_set_pbkdf_type(cd.get(), &pbkdf), "crypt_set_pbkdf_type");
    crypt_params_luks2 params{};
    params.pbkdf = &pbkdf;
    params.data_alignment = kHeaderBytes / 512;
    params.sector_size = sector_size;
    params.subsystem = kSubsystem.data();
    // The volume key (the DEK) is generated by libcryptsetup inside its own
    // locked memory; it never passes through the agent's buffers.
    check_cs(crypt_format(cd.get(), CRYPT_LUKS2, "aes", "xts-plain64", nullptr, nullptr, kVolumeKeyBytes, &params),
             "crypt_format");
    check_cs(crypt_keyslot_add_by_volume_key(cd.get(), 0, nullptr, 0, secret.chars(), secret.size()),
             "crypt_keyslot_add_by_volume_key");
    const int token = crypt_token_json_set(cd.get(), CRYPT_ANY_TOKEN, token_json.c_str());
    check_cs(token, "crypt_token_json_set");
    img.token_id = token;
    // The keyslot opens with the secret (check only, nothing is activated).
    check_cs(crypt_activate_by_passphrase(cd.get(), nullptr, 0, secret.chars(), secret.size(), 0),
             "opening the new keyslot");
    if (crypt_get_data_offset(cd.get()) * 512U != kHeaderBytes) {
        throw Error(Errc::internal, "libcryptsetup placed the data at an unexpected offset");
    }
    const char* uuid = crypt_get_uuid(cd.get());
    img.uuid = uuid != nullptr ? uuid : "";
    return img;
}

// After a failed write: zeroes the header area (as far as the device lets
// it), then probes again. Returns what the message should say.
std::string undo_partial_header(const Device& d)
{
    const std::vector<std::uint8_t> zeros(kHeaderBytes, 0);
    std::size_t done = 0;
    while (done < zeros.size()) {
        const ssize_t n = pwrite(d.fd.get(), zeros.data() + done, zeros.size() - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        done += static_cast<std::size_t>(n);
    }
    (void)fsync(d.fd.get());
    std::vector<std::string> left;
    try {
        left = scan_signatures(d.fd.get(), d.path, false);
    } catch (const Error&) {
        left.emplace_back("(the device could not be probed again)");
    }
    if (left.empty()) {
        return "the header area of " + d.path + " was zeroed: no partial header remains";
    }
    std::string list;
    for (const auto& l : left) {
        list += (list.empty() ? "" : "; ") + l;
    }
    log_error("format: a partial header may remain on " + d.path + ": " + list);
    return "WARNING: zeroing the header area of " + d.path + " failed after " + std::to_string(done) +
           " bytes and it still holds: " + list + "; erase it with wipefs -a before using the device";
}

void write_header(const Device& d, const HeaderImage& img)
{
    crypt_device* raw = nullptr;
    int r = crypt_init(&raw, d.fd_path.c_str());
    const CryptDevice cd(raw);
    if (r < 0) {
        throw Error(Errc::device, errno_text("libcryptsetup cannot open device " + d.path, -r));
    }
    r = crypt_header_restore(cd.get(), CRYPT_LUKS2, img.path.c_str());
    if (r < 0) {
        throw Error(Errc::device, errno_text("writing the LUKS2 header to " + d.path + " failed", -r));
    }
    if (fsync(d.fd.get()) != 0) {
        throw Error(Errc::device, errno_text("flushing " + d.path, errno));
    }
}

}  // namespace

std::vector<std::string> probe_signatures(int fd, const std::string& device)
{
    return scan_signatures(fd, device, false);
}

FormatResult format_disk(const AgentConfig& cfg, const proto::FormatArgs& args)
{
    const auto start = std::chrono::steady_clock::now();

    // 1. Arguments.
    validate_disk_id(args.disk_id);
    const DiskType& type = encryptable_disk_type(args.type);
    const unsigned sector_size = args.sector_size.value_or(cfg.profile(type.name).sector_size);
    validate_sector_size(sector_size);
    const std::string lineage = args.lineage.value_or(args.disk_id);
    validate_disk_id(lineage, "lineage id");
    validate_service_account(args.service_account);
    validate_user_account(args.user);
    KeyRef key;
    if (args.key) {
        key = parse_key_spec(*args.key);
    } else if (cfg.default_key) {
        key = *cfg.default_key;
    } else {
        throw Error(Errc::usage, "no key given and the agent has no default_key",
                    "pass --key PROVIDER:KEY_ID, or set default_key in the agent configuration");
    }
    kms::Provider* provider = &require_provider(cfg, key);
    if (audit::Context* ctx = audit::current()) {
        ctx->key = key;
    }
    // The access checks, before the device is opened or the KMS asked.
    const std::string policy_revision = authorize(cfg, format_checks(args.user, args.service_account, key));

    // One operation at a time on a disk, as attach, detach and verify.
    const FileLock lock = lock_disk(cfg.lock_dir, args.disk_id);

    // Device checks and the signature probe.
    const Device dev = open_device(args.device);
    check_geometry(dev, sector_size);
    const std::vector<std::string> signatures = scan_signatures(dev.fd.get(), dev.path, false);
    if (!signatures.empty() && !args.force) {
        std::string list;
        for (const auto& s : signatures) {
            list += (list.empty() ? "" : "; ") + s;
        }
        throw Error(Errc::device_not_empty, "device " + dev.path + " is not empty: it holds " + list,
                    "formatting destroys this; re-run with --force if that is intended");
    }

    // 2. KMS: the key's current version, the secret, the wrap, a round trip.
    const kms::KeyDescription desc = provider->describe(key.key_id);
    if (!desc.enabled || !desc.can_encrypt || !desc.can_decrypt) {
        throw Error(Errc::kms_key,
                    "key " + key.spec() + " cannot be used to wrap disk secrets (" +
                        (!desc.enabled       ? "disabled"
                         : !desc.can_encrypt ? "encrypt not allowed"
                                             : "decrypt not allowed") +
                        ")",
                    "use a key allowed to encrypt and decrypt");
    }
    key.version = desc.version;
    if (audit::Context* ctx = audit::current()) {
        ctx->key = key;
    }
    // The AD (version 2) binds the mapping this header will describe; the
    // header read back below must describe exactly that.
    MappingBinding mapping;
    mapping.cipher = std::string(kLuksCipher);
    mapping.disk_type = std::string(type.name);
    mapping.volume_key_bytes = kVolumeKeyBytes;
    mapping.sector_size = sector_size;
    mapping.data_offset = kHeaderBytes;
    mapping.iv_tweak = 0;
    const std::vector<std::uint8_t> ad = associated_data(args.disk_id, key, mapping);
    const SecureBuffer secret = SecureBuffer::random(kSecretBytes);
    Token token;
    token.keyslot = 0;
    token.ad_version = kAssociatedDataVersion;
    token.key = key;
    token.provider_type = std::string(provider->type());
    token.wrapped =
        audit::kms_call("wrap", key, [&] { return provider->wrap(key.key_id, key.version, secret.span(), ad); });
    {
        const SecureBuffer check = audit::kms_call(
            "unwrap", key, [&] { return provider->unwrap(key.key_id, key.version, token.wrapped, ad); });
        if (!check.equals(secret.span())) {
            throw Error(Errc::kms_unavailable,
                        "provider '" + key.provider +
                            "': unwrapping the fresh secret gave "
                            "different bytes; nothing was written",
                        "check the HSM");
        }
    }
    token.disk_id = args.disk_id;
    token.disk_type = std::string(type.name);
    token.lineage_id = lineage;
    token.service_account = args.service_account;
    token.created = utc_timestamp();
    const std::string token_json = encode_token(token);

    // 3. The header, in memory.
    const HeaderImage img = build_header(sector_size, secret, token_json);

    // 4-5. The device: wipe (with --force), write, read back.
    FormatResult res;
    try {
        if (args.force && !signatures.empty()) {
            res.destroyed = scan_signatures(dev.fd.get(), dev.path, true);
            for (const auto& s : res.destroyed) {
                log_warning("format " + args.disk_id + ": --force destroys " + s + " on " + dev.path);
            }
        }
        write_header(dev, img);
        CryptDevice cd = open_luks2(dev.fd_path);
        const DiskHeader h = read_header(cd.get(), dev.path);
        const int r =
            crypt_activate_by_passphrase(cd.get(), nullptr, h.token.keyslot, secret.chars(), secret.size(), 0);
        const bool as_bound = h.cipher == mapping.cipher && h.volume_key_bytes == kVolumeKeyBytes &&
                              h.sector_size == mapping.sector_size && h.data_offset == mapping.data_offset &&
                              h.iv_offset == mapping.iv_tweak && h.token.disk_type == mapping.disk_type;
        if (r < 0 || h.luks_uuid != img.uuid || h.token.disk_id != args.disk_id || !as_bound) {
            throw Error(Errc::device, "the header read back from " + dev.path + " does not match what was written");
        }
        res.luks_uuid = h.luks_uuid;
        res.data_offset = h.data_offset;
        res.token_id = h.token_id;
        res.keyslot = h.token.keyslot;
    } catch (const Error& e) {
        const std::string undone = undo_partial_header(dev);
        throw Error(e.code(),
                    std::string(e.what()) + "; " + undone +
                        (args.force && !signatures.empty() ? " (the old signatures were already wiped)" : ""),
                    e.hint());
    }

    res.device = dev.path;
    res.disk_id = args.disk_id;
    res.disk_type = std::string(type.name);
    res.lineage_id = lineage;
    res.service_account = args.service_account;
    res.user = args.user;
    res.policy_revision = policy_revision;
    res.key = key;
    res.provider_type = token.provider_type;
    res.sector_size = sector_size;
    res.device_size = dev.size;
    res.usable_size = dev.size - res.data_offset;
    res.elapsed_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    return res;
}

nlohmann::json to_json(const FormatResult& r)
{
    nlohmann::json j = {
        {"device", r.device},
        {"disk_id", r.disk_id},
        {"type", r.disk_type},
        {"lineage", r.lineage_id},
        {"luks_uuid", r.luks_uuid},
        {"key",
         {{"provider", r.key.provider},
          {"provider_type", r.provider_type},
          {"id", r.key.key_id},
          {"version", r.key.version}}},
        {"cipher", "aes-xts-plain64"},
        {"volume_key_bits", 512},
        {"sector_size", r.sector_size},
        {"device_size", r.device_size},
        {"data_offset", r.data_offset},
        {"overhead", r.data_offset},
        {"usable_size", r.usable_size},
        {"keyslot", r.keyslot},
        {"token_id", r.token_id},
        {"destroyed", r.destroyed},
        {"elapsed_ms", r.elapsed_ms},
    };
    j["service_account"] = r.service_account;
    j["user"] = r.user;
    j["policy_revision"] = r.policy_revision;
    return j;
}

}  // namespace diskcrypt
