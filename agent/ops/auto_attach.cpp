#include "agent/ops/auto_attach.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <fstream>

#include "agent/audit.hpp"
#include "agent/error.hpp"
#include "agent/log.hpp"
#include "agent/names.hpp"
#include "agent/raii.hpp"
#include "agent/text.hpp"
#include "agent/trusted_file.hpp"

namespace diskcrypt {

namespace {

using nlohmann::json;

// The first line of a sysfs attribute, at most `max` bytes; nullopt if absent.
std::optional<std::string> read_attribute(const std::string& path, std::size_t max)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return std::nullopt;
    }
    std::string text(max + 1, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    if (const auto nl = text.find('\n'); nl != std::string::npos) {
        text.resize(nl);
    }
    return text;
}

bool is_serial_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == ':' || c == '-';
}

std::string trim_blanks(std::string_view s)
{
    const auto first = s.find_first_not_of(" \t");
    if (first == std::string_view::npos) {
        return {};
    }
    const auto last = s.find_last_not_of(" \t");
    return std::string(s.substr(first, last - first + 1));
}

struct DirCloser {
    void operator()(DIR* d) const { (void)closedir(d); }
};

// The mapping whose backing device is `devno`, if any.
std::optional<DiskInfo> mapping_on(const std::string& devno)
{
    for (DiskInfo& d : list_disks(false)) {
        if (d.backing_devno == devno) {
            return std::move(d);
        }
    }
    return std::nullopt;
}

}  // namespace

std::string validate_serial(std::string_view raw)
{
    std::string s = trim_blanks(raw);
    if (s.empty()) {
        throw Error(Errc::device, "the device reports no serial");
    }
    if (s.size() > kMaxSerialBytes || !std::all_of(s.begin(), s.end(), is_serial_char)) {
        throw Error(Errc::device, "the device's serial '" + printable(s, kMaxSerialBytes) +
                                      "' is not 1 to 64 of [A-Za-z0-9._:-]; it cannot name a provisioning entry");
    }
    return s;
}

ProvisioningEntry parse_provisioning_entry(std::string_view text, const std::string& source)
{
    const toml::table table = parse_toml(text, source);
    ConfigSection s(table, source, "");
    ProvisioningEntry e;
    e.source = source;
    const std::string serial = s.required_string("serial");
    try {
        e.serial = validate_serial(serial);
        if (e.serial != serial) {
            throw Error(Errc::device, "'" + printable(serial, kMaxSerialBytes) + "' has blanks around it");
        }
    } catch (const Error& err) {
        throw s.error_at("serial", err.what());
    }
    auto checked = [&s](std::string_view key, auto&& validate) {
        std::string v = s.required_string(key);
        try {
            validate(v);
        } catch (const Error& err) {
            throw s.error_at(key, err.what());
        }
        return v;
    };
    e.claims.disk_id = checked("disk_id", [](const std::string& v) { validate_disk_id(v); });
    e.claims.type = checked("type", [](const std::string& v) { (void)encryptable_disk_type(v); });
    e.claims.key = checked("key", [](const std::string& v) { (void)parse_key_spec(v); });
    e.claims.service_account = checked("service_account", [](const std::string& v) { validate_service_account(v); });
    e.claims.allow_discards = s.optional_bool("allow_discards").value_or(false);
    s.finish();
    return e;
}

std::optional<ProvisioningEntry> find_provisioning_entry(const std::string& dir, const std::string& serial)
{
    const std::unique_ptr<DIR, DirCloser> d(opendir(dir.c_str()));
    if (!d) {
        if (errno == ENOENT) {
            return std::nullopt;
        }
        throw Error(Errc::config, errno_text("cannot read the provisioning folder " + dir, errno));
    }
    std::vector<std::string> names;
    errno = 0;
    while (const dirent* ent = readdir(d.get())) {
        const std::string_view name(static_cast<const char*>(ent->d_name));
        if (name.size() > 5 && name.substr(name.size() - 5) == ".toml" && name.front() != '.') {
            if (names.size() == kMaxProvisioningFiles) {
                throw Error(Errc::config, "the provisioning folder " + dir + " holds more than " +
                                              std::to_string(kMaxProvisioningFiles) + " entries");
            }
            names.emplace_back(name);
        }
    }
    std::sort(names.begin(), names.end());
    std::optional<ProvisioningEntry> found;
    for (const std::string& name : names) {
        if (printable(name, 255) != name) {
            continue;  // a name that is not text is nobody's entry
        }
        std::string path = dir;
        path += '/';
        path += name;
        const TrustedFile f = read_trusted_file(path, "provisioning entry", kMaxProvisioningBytes);
        ProvisioningEntry e = parse_provisioning_entry(f.text, path);
        if (e.serial != serial) {
            continue;
        }
        if (found) {
            std::string message = "provisioning entries ";
            message += found->source;
            message += " and ";
            message += path;
            message += " both claim serial ";
            message += serial;
            throw Error(Errc::config, message, "keep one entry per disk in " + dir);
        }
        found = std::move(e);
    }
    return found;
}

BlockDeviceId identify_block_device(std::string_view devno, const std::string& sysfs)
{
    const auto colon = devno.find(':');
    auto digits = [](std::string_view s) {
        return !s.empty() && s.size() <= 10 &&
               std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    if (colon == std::string_view::npos || !digits(devno.substr(0, colon)) || !digits(devno.substr(colon + 1))) {
        throw Error(Errc::usage, "'" + printable(devno, 32) + "' is not a device number MAJOR:MINOR");
    }
    BlockDeviceId id;
    id.devno = std::string(devno);
    const std::string base = sysfs + "/dev/block/" + id.devno;
    struct stat st {};
    if (stat(base.c_str(), &st) != 0) {
        throw Error(Errc::device, "no block device " + id.devno + " on this host (" + base + " is missing)");
    }
    std::ifstream uevent(base + "/uevent");
    std::string line;
    while (std::getline(uevent, line)) {
        if (line.rfind("DEVNAME=", 0) == 0) {
            const std::string name = line.substr(8);
            if (name.empty() || name.size() > 64 || name.find("..") != std::string::npos ||
                !std::all_of(name.begin(), name.end(), [](char c) { return is_serial_char(c) || c == '/'; })) {
                throw Error(Errc::device,
                            "block device " + id.devno + " has an unusable name '" + printable(name, 64) + "'");
            }
            id.path = "/dev/" + name;
        }
    }
    if (id.path.empty()) {
        throw Error(Errc::device, "block device " + id.devno + " has no DEVNAME in " + base + "/uevent");
    }
    // virtio-blk: <dev>/serial; NVMe and SCSI-like: <dev>/device/serial.
    for (const char* attr : {"/serial", "/device/serial"}) {
        if (auto raw = read_attribute(base + attr, 256)) {
            id.serial = *raw;
            break;
        }
    }
    return id;
}

AutoAttachResult auto_attach(const AgentConfig& cfg, const proto::AutoDeviceArgs& args)
{
    AutoAttachResult res;
    res.device = identify_block_device(args.devno);
    if (audit::Context* ctx = audit::current()) {
        ctx->device = res.device.path;
    }
    const std::string serial = validate_serial(res.device.serial);
    auto entry = find_provisioning_entry(cfg.auto_attach_dir, serial);
    if (!entry) {
        throw Error(Errc::not_supported,
                    "device " + res.device.path + " (" + res.device.devno + ", serial " + serial +
                        ") has a diskcrypt header but no provisioning entry in " + cfg.auto_attach_dir +
                        ": it is not attached",
                    "host provisioning writes " + cfg.auto_attach_dir +
                        "/NAME.toml (serial, disk_id, type, key, service_account) for each disk this host may "
                        "attach; diskcrypt-agent.toml(5)");
    }
    res.entry = entry->source;
    if (audit::Context* ctx = audit::current()) {
        ctx->disk_id = entry->claims.disk_id;
        ctx->service_account = entry->claims.service_account;
    }
    proto::AttachArgs claims = entry->claims;
    claims.device = res.device.path;
    res.attach = attach_disk(cfg, claims);
    // The path was resolved from the device number: a device replaced in
    // between is not what udev announced.
    if (res.attach.disk.backing_devno != res.device.devno) {
        if (!res.attach.already_attached) {
            (void)detach_disk(cfg, proto::DetachArgs{res.attach.disk.disk_id, true});
        }
        throw Error(Errc::device, res.device.path + " is now device " + res.attach.disk.backing_devno + ", not " +
                                      res.device.devno +
                                      ": it changed while it was being attached; nothing is attached");
    }
    return res;
}

AutoDetachResult auto_detach(const AgentConfig& cfg, const proto::AutoDeviceArgs& args)
{
    AutoDetachResult res;
    // The device may be gone: its number is checked, not its presence.
    try {
        res.devno = identify_block_device(args.devno).devno;
        res.device_present = true;
    } catch (const Error& e) {
        if (e.code() != Errc::device) {
            throw;
        }
        res.devno = args.devno;
    }
    auto disk = mapping_on(res.devno);
    if (!disk) {
        throw Error(Errc::not_attached, "no diskcrypt mapping is backed by device " + res.devno);
    }
    if (audit::Context* ctx = audit::current()) {
        ctx->disk_id = disk->disk_id;
        ctx->device = disk->backing_device;
    }
    res.detach = detach_disk(cfg, proto::DetachArgs{disk->disk_id, !res.device_present});
    return res;
}

json to_json(const AutoAttachResult& r)
{
    json j = to_json(r.attach);
    j["devno"] = r.device.devno;
    j["serial"] = r.device.serial;
    j["provisioning_entry"] = r.entry;
    return j;
}

json to_json(const AutoDetachResult& r)
{
    json j = to_json(r.detach);
    j["devno"] = r.devno;
    j["device_present"] = r.device_present;
    return j;
}

}  // namespace diskcrypt
