#include "agent/ops/verify.hpp"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/error.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

std::string devno_text(dev_t d) { return std::to_string(major(d)) + ":" + std::to_string(minor(d)); }

std::string kind_of(mode_t mode)
{
    if (S_ISDIR(mode)) {
        return "a directory";
    }
    if (S_ISFIFO(mode)) {
        return "a FIFO";
    }
    if (S_ISCHR(mode)) {
        return "a character device";
    }
    if (S_ISSOCK(mode)) {
        return "a socket";
    }
    if (S_ISREG(mode)) {
        return "a regular file";
    }
    return "another kind of file";
}

// "cipher aes-xts-plain64, 512-bit key, sector size 4096, ..." (the header's
// values are printable already).
std::string mapping_text(const DiskHeader& h)
{
    std::string out = "cipher " + h.cipher;
    out += ", " + std::to_string(h.volume_key_bytes * 8) + "-bit key";
    out += ", sector size " + std::to_string(h.sector_size);
    out += ", data offset " + std::to_string(h.data_offset);
    out += ", IV tweak " + std::to_string(h.iv_offset);
    out += ", disk type " + h.token.disk_type;
    return out;
}

}  // namespace

// NOLINTBEGIN(cppcoreguidelines-pro-type-vararg): open and ioctl are C vararg APIs
OpenedDevice open_device_once(const std::string& path, bool allow_regular)
{
    OpenedDevice d;
    d.shown = printable(path);
    if (path.empty() || path.front() != '/') {
        throw Error(Errc::usage, "device path '" + d.shown + "' is not absolute");
    }
    d.fd.reset(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
    if (!d.fd) {
        const int e = errno;
        throw Error(Errc::device, errno_text("cannot open device " + d.shown, e),
                    e == ENOENT ? "check the device path" : "");
    }
    struct stat st {};
    if (fstat(d.fd.get(), &st) != 0) {
        throw Error(Errc::device, errno_text("cannot stat device " + d.shown, errno));
    }
    d.fd_path = "/proc/self/fd/" + std::to_string(d.fd.get());
    if (S_ISBLK(st.st_mode)) {
        d.block = true;
        d.devno = st.st_rdev;
        if (::ioctl(d.fd.get(), BLKGETSIZE64, &d.size) != 0) {
            throw Error(Errc::device, errno_text("cannot read the size of " + d.shown, errno));
        }
        return d;
    }
    if (allow_regular && S_ISREG(st.st_mode)) {
        d.size = static_cast<std::uint64_t>(st.st_size);
        return d;
    }
    if (allow_regular) {
        throw Error(Errc::device, "device " + d.shown + " is neither a block device nor a regular file (it is " +
                                      kind_of(st.st_mode) + ")");
    }
    throw Error(Errc::device,
                "device " + d.shown + " is not a block device (it is " + kind_of(st.st_mode) +
                    "); device-mapper maps only block devices",
                S_ISREG(st.st_mode) ? "attach a loop device over the file: losetup --find --show " + d.shown : "");
}
// NOLINTEND(cppcoreguidelines-pro-type-vararg)

void recheck_device(const OpenedDevice& dev)
{
    struct stat st {};
    if (fstat(dev.fd.get(), &st) != 0) {
        throw Error(Errc::device, errno_text("cannot stat device " + dev.shown + " again", errno));
    }
    if (!S_ISBLK(st.st_mode) || st.st_rdev != dev.devno) {
        throw Error(Errc::device,
                    "device " + dev.shown + " changed during the operation (it was " + devno_text(dev.devno) +
                        ", it is now " + (S_ISBLK(st.st_mode) ? devno_text(st.st_rdev) : kind_of(st.st_mode)) + ")",
                    "nothing was attached; check what replaced the device and retry");
    }
}

DiskClaim make_claim(const AgentConfig& cfg, const std::string& disk_id, const std::optional<std::string>& disk_type,
                     const std::string& key)
{
    validate_disk_id(disk_id);
    DiskClaim c{disk_id, disk_type ? std::string(encryptable_disk_type(*disk_type).name) : "", parse_key_spec(key)};
    require_provider(cfg, c.key);
    return c;
}

void check_claim(const DiskHeader& header, const DiskClaim& claim)
{
    const Token& t = header.token;
    if (t.disk_id != claim.disk_id) {
        throw Error(Errc::binding,
                    "device " + header.device + ": this header belongs to disk " + t.disk_id + ", not " + claim.disk_id,
                    "check that the device path and the disk id refer to the same disk");
    }
    if (t.incomplete) {
        throw Error(Errc::incomplete,
                    "device " + header.device + ": " + std::string(kind_name(t.kind)) + " " + claim.disk_id +
                        " is an interrupted " + t.incomplete->operation + " (" + std::to_string(t.incomplete->done) +
                        " of " + std::to_string(t.incomplete->total) + " bytes written); it is not usable",
                    "run the " + t.incomplete->operation + " that makes it again: it resumes or restarts");
    }
    if (t.key.provider != claim.key.provider || t.key.key_id != claim.key.key_id) {
        throw Error(Errc::binding,
                    "device " + header.device + ": the header of disk " + claim.disk_id + " is wrapped under key " +
                        t.key.spec() + ", not under the disk's key " + claim.key.spec() + "; the KMS was not asked",
                    "the control plane's record of the disk names its key; a header under another key (an older "
                    "copy written back by the storage, or another disk's) is never opened");
    }
    if (!claim.disk_type.empty() && t.disk_type != claim.disk_type) {
        throw Error(Errc::binding,
                    "device " + header.device + ": the header of disk " + claim.disk_id + " binds disk type " +
                        t.disk_type + ", not " + claim.disk_type + "; the KMS was not asked",
                    "a disk's type is fixed when it is formatted; check the control plane's record of the disk");
    }
}

SecureBuffer unwrap_secret(const AgentConfig& cfg, const DiskHeader& header, const std::string& disk_id)
{
    validate_disk_id(disk_id);
    const Token& t = header.token;
    if (t.disk_id != disk_id) {
        throw Error(Errc::binding,
                    "device " + header.device + ": this header belongs to disk " + t.disk_id + ", not " + disk_id,
                    "check that the device path and the disk id refer to the same disk");
    }
    kms::Provider* provider = cfg.provider(t.key.provider);
    if (provider == nullptr) {
        throw Error(Errc::config,
                    "device " + header.device + ": its key is on provider '" + t.key.provider +
                        "', which this agent does not configure",
                    "add [providers." + t.key.provider + "] (type " + t.provider_type + ") to the agent configuration");
    }
    if (provider->type() != t.provider_type) {
        throw Error(Errc::config,
                    "device " + header.device + ": provider '" + t.key.provider + "' is of type " +
                        std::string(provider->type()) + " here, but the header says " + t.provider_type,
                    "provider names must mean the same KMS on every host");
    }
    // The AD is built from the caller's disk id, never from the header alone;
    // version 2 adds the mapping parameters as libcryptsetup read them.
    std::vector<std::uint8_t> ad;
    if (t.ad_version == 2) {
        MappingBinding m;
        m.cipher = header.cipher;
        m.disk_type = t.disk_type;
        m.volume_key_bytes = static_cast<std::uint32_t>(header.volume_key_bytes);
        m.sector_size = header.sector_size;
        m.data_offset = header.data_offset;
        m.iv_tweak = header.iv_offset;
        try {
            ad = associated_data(disk_id, t.key, m);
        } catch (const Error& e) {
            throw Error(Errc::header, "device " + header.device + ": " + e.what(), "restore a header backup");
        }
    } else {
        ad = associated_data(disk_id, t.key);
    }
    SecureBuffer secret;
    try {
        secret = audit::kms_call("unwrap", t.key,
                                 [&] { return provider->unwrap(t.key.key_id, t.key.version, t.wrapped, ad); });
    } catch (const Error& e) {
        if (e.code() != Errc::binding || t.ad_version != 2) {
            throw;
        }
        throw Error(Errc::binding,
                    std::string(e.what()) +
                        "; the wrap (associated data version 2) also binds the header's mapping parameters and disk "
                        "type (" +
                        mapping_text(header) +
                        "): either the disk id is wrong or the header's mapping parameters or disk type do not "
                        "match what was wrapped",
                    "check the disk id; if it is right, the header was edited: restore a header backup");
    }
    if (secret.size() != kSecretBytes) {
        throw Error(Errc::header, "device " + header.device + ": the unwrapped secret has " +
                                      std::to_string(secret.size()) + " bytes, not " + std::to_string(kSecretBytes));
    }
    return secret;
}

VerifyResult verify_disk(const AgentConfig& cfg, const proto::VerifyArgs& args)
{
    const DiskClaim claim = make_claim(cfg, args.disk_id, args.type, args.key);
    validate_service_account(args.service_account);
    if (audit::Context* ctx = audit::current()) {
        ctx->key = claim.key;
    }
    const std::string policy_revision = authorize(cfg, unwrap_checks(args.service_account, claim.key));
    // Opened once: libcryptsetup reads the file checked here.
    const OpenedDevice dev = open_device_once(args.device, true);
    const CryptDevice cd = open_luks2(dev.fd_path, args.device);
    VerifyResult r{read_header(cd.get(), args.device), args.service_account, policy_revision};
    if (audit::Context* ctx = audit::current()) {
        ctx->key = r.header.token.key;
        ctx->luks_uuid = r.header.luks_uuid;
    }
    check_claim(r.header, claim);
    const SecureBuffer secret = unwrap_secret(cfg, r.header, args.disk_id);
    check_keyslot_secret(cd.get(), r.header, secret, dev.shown);
    return r;
}

void check_keyslot_secret(crypt_device* cd, const DiskHeader& header, const SecureBuffer& secret,
                          const std::string& shown)
{
    const int rc = crypt_activate_by_passphrase(cd, nullptr, header.token.keyslot, secret.chars(), secret.size(), 0);
    if (rc < 0) {
        throw Error(Errc::header,
                    "device " + shown + ": the unwrapped secret does not open keyslot " +
                        std::to_string(header.token.keyslot) + (rc == -EPERM ? "" : errno_text("", -rc)),
                    "the token and the keyslot do not belong together; restore a header backup");
    }
}

nlohmann::json to_json(const VerifyResult& r)
{
    const DiskHeader& h = r.header;
    nlohmann::json j = {
        {"device", h.device},
        {"disk_id", h.token.disk_id},
        {"type", h.token.disk_type},
        {"lineage", h.token.lineage_id},
        {"luks_uuid", h.luks_uuid},
        {"key",
         {{"provider", h.token.key.provider},
          {"provider_type", h.token.provider_type},
          {"id", h.token.key.key_id},
          {"version", h.token.key.version}}},
        {"cipher", h.cipher},
        {"volume_key_bits", h.volume_key_bytes * 8},
        {"sector_size", h.sector_size},
        {"data_offset", h.data_offset},
        {"keyslot", h.token.keyslot},
        {"token_id", h.token_id},
        {"created", h.token.created},
    };
    j["service_account"] = r.service_account;
    // What format recorded (informational: the header is not trusted).
    j["recorded_service_account"] =
        h.token.service_account ? nlohmann::json(*h.token.service_account) : nlohmann::json(nullptr);
    j["policy_revision"] = r.policy_revision;
    return j;
}

}  // namespace diskcrypt
