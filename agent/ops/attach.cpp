#include "agent/ops/attach.hpp"
#include "agent/ops/revocation.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <keyutils.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/table.hpp"
#include "agent/disk_lock.hpp"
#include "agent/dm.hpp"
#include "agent/log.hpp"
#include "agent/ops/verify.hpp"
#include "agent/raii.hpp"
#include "agent/secure_buffer.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

long long ms_since(Clock::time_point t)
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// The first line of a /proc or /sys file, escaped (a process names itself).
std::string read_line(const std::string& path)
{
    std::ifstream in(path);
    std::string line;
    std::getline(in, line);
    return printable(line, 256);
}

// "/dev/vda" for 253:0, from /sys/dev/block/M:m/uevent; "" if unknown.
std::string device_path(const std::string& devno)
{
    std::ifstream in("/sys/dev/block/" + devno + "/uevent");
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with("DEVNAME=")) {
            return "/dev/" + line.substr(8);
        }
    }
    return {};
}

// "key:valid reads:1 ..." -> {"reads": 1, ...}; the key state apart.
json parse_status(const std::string& status, std::string& key_state)
{
    json counters = json::object();
    std::istringstream in(status);
    std::string word;
    while (in >> word) {
        const auto colon = word.find(':');
        if (colon == std::string::npos) {
            continue;
        }
        const std::string name = word.substr(0, colon);
        const std::string value = word.substr(colon + 1);
        if (name == "key") {
            key_state = value;
            continue;
        }
        try {
            counters[name] = std::stoull(value);
        } catch (const std::exception&) {
            counters[name] = value;
        }
    }
    return counters;
}

// The disk id a mapping of ours belongs to, or nothing.
DiskInfo describe(const dm::Mapping& m, const std::string& disk_id)
{
    DiskInfo d;
    d.disk_id = disk_id;
    d.mapping = m.name;
    d.dm_uuid = m.uuid;
    d.path = "/dev/mapper/" + m.name;
    d.dm_device = "dm-" + std::to_string(m.minor);
    d.devno = std::to_string(m.major) + ":" + std::to_string(m.minor);
    d.open_count = m.open_count;
    d.suspended = m.suspended;
    if (m.table.size() == 1) {
        const dm::Target& t = m.table.front();
        d.target = printable(t.type, 64);
        d.size = t.length * 512U;
        if (t.type == kTargetName) {
            if (const auto ct = parse_table_params(t.length, t.params)) {
                d.backing_devno = ct->backing_devno();
                d.backing_device = device_path(d.backing_devno);
                d.sector_size = ct->sector_size;
                d.iv_large_sectors = ct->iv_large_sectors;
                d.allow_discards = ct->allow_discards;
                d.zero_unwritten = ct->zero_unwritten;
                d.read_workqueue = ct->read_workqueue;
                d.write_workqueue = ct->write_workqueue;
                d.inline_depth = ct->inline_depth;
                d.luks_uuid = luks_uuid_from_key_description(ct->key_description).value_or("");
            }
        }
    } else if (m.table.empty()) {
        d.target = "none";
        d.state = kEmptyState;
    } else {
        d.target = "multiple";
    }
    if (m.status.size() == 1 && d.target == kTargetName) {
        d.counters = parse_status(m.status.front().params, d.key_state);
    }
    if (d.target == kTargetName && d.suspended && d.key_state == "wiped") {
        // Only the revocation check leaves a mapping so.
        const auto r = revoked_disk(disk_id);
        d.revoked = r ? to_json(*r)
                      : json{{"key", nullptr},
                             {"state",
                              "key wiped by a revocation; the next key check (within [revocation] interval) "
                              "names the key's state"},
                             {"since", nullptr},
                             {"found", true}};
    }
    if (d.open_count > 0) {
        d.holders = holders_of(m.major, m.minor, m.name);
    }
    return d;
}

// Adds what the header says (key, disk type).
void add_header_info(DiskInfo& d, const DiskHeader& h)
{
    d.key = h.token.key;
    d.disk_type = h.token.disk_type;
    d.header_error.clear();
}

// A device of ours without a table: an attach was interrupted between
// creating diskcrypt-ID and loading its table.
bool is_empty_leftover(const DiskInfo& d) { return d.target == "none" && d.open_count == 0; }

std::optional<DiskInfo> find_disk(const std::string& disk_id)
{
    const std::string name = mapping_name(disk_id);
    const auto m = dm::find(name);
    if (!m) {
        return std::nullopt;
    }
    if (disk_id_from_dm_uuid(m->uuid) != disk_id) {
        throw Error(Errc::conflict,
                    "a device-mapper device named " + name + " exists but was not made by diskcrypt (uuid '" +
                        printable(m->uuid, 200) + "', expected '" + dm_uuid(disk_id) + "')",
                    "see 'dmsetup info " + name + "'; diskcrypt does not touch it");
    }
    return describe(*m, disk_id);
}

std::string holders_text(const DiskInfo& d)
{
    std::string s;
    for (const auto& h : d.holders) {
        s += (s.empty() ? "" : "; ") + h;
    }
    return s.empty() ? "held open by a process that could not be identified (a VM, or another namespace)" : s;
}

// The disk type's discards policy (its profile, names.hpp, with the host's
// overrides) and the caller's request; the header's persistent flag is never
// asked. Error(usage) if the caller asks and the type does not permit it.
bool discards_allowed(const AgentConfig& cfg, const proto::AttachArgs& args, const DiskHeader& header)
{
    if (!args.allow_discards || cfg.profile(header.token.disk_type).discards) {
        return args.allow_discards;
    }
    throw Error(Errc::usage,
                "disk " + args.disk_id + " is of type " + header.token.disk_type +
                    ", whose profile does not allow discards (they would tell the storage the guest's free-space map)",
                "attach it without --allow-discards; only the SSD disk types allow them");
}

// Removes an empty device left by an interrupted attach, as its own audit event.
void remove_empty_leftover(const DiskInfo& d)
{
    audit::Event ev;
    ev.event = "remove-empty";
    ev.context = audit::current() != nullptr ? *audit::current() : audit::Context{};
    try {
        dm::remove(d.mapping, false);
    } catch (const Error& e) {
        ev.result = audit::is_refusal(e.code()) ? "refused" : "failed";
        ev.reason = std::string(errc_name(e.code()));
        ev.message = e.what();
        audit::emit(ev);
        throw;
    }
    ev.result = "ok";
    ev.message = "removed " + d.mapping + ", an empty device left by an interrupted attach";
    audit::emit(ev);
    log_warning("attach " + d.disk_id + ": " + ev.message);
}

// Runs fn in a new thread and waits for it, rethrowing its exception: the
// thread's keyring (created by the first key added to it) ends with it.
template <typename F>
void run_in_own_thread(F fn)
{
    std::exception_ptr error;
    std::thread worker([&fn, &error] {
        try {
            fn();
        } catch (...) {
            error = std::current_exception();
        }
    });
    worker.join();
    if (error) {
        std::rethrow_exception(error);
    }
}

// In the calling thread: the DEK as a possessor-only logon key in the thread
// keyring; invalidated when the returned handle goes.
KernelKey add_disk_key(const std::string& description, const SecureBuffer& dek)
{
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): keyutils
    const key_serial_t serial = add_key("logon", description.c_str(), dek.data(), dek.size(), KEY_SPEC_THREAD_KEYRING);
    if (serial < 0) {
        throw Error(Errc::kernel, errno_text("cannot add the disk's key to the kernel keyring", errno),
                    "check the kernel's key quota (/proc/sys/kernel/keys/root_maxbytes)");
    }
    KernelKey key(serial);
    if (keyctl_setperm(serial, KEY_POS_VIEW | KEY_POS_SEARCH) != 0) {
        throw Error(Errc::kernel, errno_text("cannot restrict the permissions of the disk's key", errno));
    }
    return key;
}

// In the calling thread: the key added, the mapping created from `table`,
// the key invalidated.
void load_mapping(const std::string& disk_id, const CryptTable& table, const SecureBuffer& dek)
{
    const KernelKey key = add_disk_key(table.key_description, dek);
    dm::create(mapping_name(disk_id), dm_uuid(disk_id),
               dm::Target{0, table.length, std::string(kTargetName), table.params()});
}

}  // namespace

CryptTable disk_table(const AgentConfig& cfg, const DiskHeader& header, const OpenedDevice& dev, bool allow_discards)
{
    CryptTable table = table_from_header(header, major(dev.devno), minor(dev.devno), dev.size, "", allow_discards);
    apply_profile(table, cfg.profile(header.token.disk_type));
    return table;
}

namespace {

// The DEK from the keyslot the secret opens, in locked memory.
SecureBuffer volume_key(crypt_device* cd, const DiskHeader& header, const OpenedDevice& dev, const SecureBuffer& secret)
{
    SecureBuffer dek(kDekBytes);
    std::size_t dek_size = dek.size();
    const int rc =
        crypt_volume_key_get(cd, header.token.keyslot, dek.chars(), &dek_size, secret.chars(), secret.size());
    if (rc < 0 || dek_size != static_cast<std::size_t>(kDekBytes)) {
        throw Error(Errc::header,
                    "device " + dev.shown + ": the unwrapped secret does not open keyslot " +
                        std::to_string(header.token.keyslot),
                    "the token and the keyslot do not belong together; restore a header backup");
    }
    return dek;
}

}  // namespace

void map_disk(crypt_device* cd, const DiskHeader& header, const OpenedDevice& dev, const std::string& disk_id,
              CryptTable table, const SecureBuffer& secret)
{
    const SecureBuffer dek = volume_key(cd, header, dev, secret);
    table.key_description = new_key_description(header.luks_uuid);
    // The device the table names is still the one opened and checked.
    recheck_device(dev);
    run_in_own_thread([&] { load_mapping(disk_id, table, dek); });
}

void add_header_info(DiskInfo& d)
{
    if (d.backing_device.empty()) {
        return;
    }
    try {
        const CryptDevice cd = open_luks2(d.backing_device);
        add_header_info(d, read_header(cd.get(), d.backing_device));
    } catch (const std::exception& e) {
        // Shown for this disk only; one odd header never fails a whole list.
        // Our errors quote outside text escaped already (sanitize() keeps
        // that as it is); any other byte is escaped here.
        d.header_error = sanitize(e.what());
        log_debug("status of " + d.disk_id + ": header of " + d.backing_device + " not readable: " + d.header_error);
    }
}

std::vector<std::string> holders_of(unsigned major, unsigned minor, const std::string& mapping)
{
    std::vector<std::string> out;
    const std::string devno = std::to_string(major) + ":" + std::to_string(minor);
    // Mounts: field 3 of mountinfo is major:minor, field 5 the mount point.
    {
        std::ifstream in("/proc/self/mountinfo");
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream f(line);
            std::string id;
            std::string parent;
            std::string mm;
            std::string root;
            std::string point;
            f >> id >> parent >> mm >> root >> point;
            if (mm == devno) {
                out.push_back("mounted on " + printable(point, 256));
            }
        }
    }
    // Stacked devices (LVM, another mapping, md).
    std::error_code ec;
    const std::string dm_dev = "dm-" + std::to_string(minor);
    for (const auto& h : std::filesystem::directory_iterator("/sys/block/" + dm_dev + "/holders", ec)) {
        const std::string name = printable(h.path().filename().string(), 64);
        const std::string dm_name = read_line("/sys/block/" + name + "/dm/name");
        out.push_back("held by " + name + (dm_name.empty() ? "" : " (" + dm_name + ")"));
    }
    // Processes with the device open.
    const std::string by_name = "/dev/mapper/" + mapping;
    const std::string by_dm = "/dev/" + dm_dev;
    for (const auto& p : std::filesystem::directory_iterator("/proc", ec)) {
        const std::string pid = p.path().filename();
        if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos ||
            pid == std::to_string(getpid())) {
            continue;
        }
        std::error_code fd_ec;
        for (const auto& fd : std::filesystem::directory_iterator(p.path() / "fd", fd_ec)) {
            std::error_code link_ec;
            const std::string target = std::filesystem::read_symlink(fd.path(), link_ec);
            if (!link_ec && (target == by_name || target == by_dm)) {
                out.push_back("open by pid " + pid + " (" + read_line("/proc/" + pid + "/comm") + ")");
                break;
            }
        }
    }
    return out;
}

AttachResult attach_disk(const AgentConfig& cfg, const proto::AttachArgs& args)
{
    const auto started = Clock::now();
    const DiskClaim claim = make_claim(cfg, args.disk_id, args.type, args.key);
    validate_service_account(args.service_account);
    if (audit::Context* ctx = audit::current()) {
        ctx->key = claim.key;
    }
    // Before anything is opened, locked or asked: nothing is left behind by a denial.
    const std::string policy_revision = authorize(cfg, unwrap_checks(args.service_account, claim.key));
    const FileLock lock = lock_disk(cfg.lock_dir, args.disk_id);
    dm::require_available();
    // The path is opened once, here, and never again: libcryptsetup reads
    // this descriptor (/proc/self/fd/N) and the table names its device number.
    const OpenedDevice dev = open_device_once(args.device, false);
    const std::string devno = std::to_string(major(dev.devno)) + ":" + std::to_string(minor(dev.devno));

    AttachResult res;
    res.service_account = args.service_account;
    res.policy_revision = policy_revision;
    res.device = dev.shown;

    auto existing = find_disk(args.disk_id);
    if (existing && is_empty_leftover(*existing)) {
        remove_empty_leftover(*existing);
        existing.reset();
    }
    // An existing mapping of this disk: the same device is the idempotent
    // answer (after the header's disk id is checked), another is refused.
    if (existing) {
        if (existing->backing_devno != devno) {
            throw Error(Errc::conflict,
                        "disk " + args.disk_id + " is already attached from device " +
                            (existing->backing_device.empty() ? existing->backing_devno : existing->backing_device) +
                            " (" + existing->backing_devno + "), not " + dev.shown + " (" + devno + ")",
                        "detach it first (diskcrypt detach " + args.disk_id + ") if the disk moved");
        }
        const CryptDevice cd = open_luks2(dev.fd_path, args.device);
        const DiskHeader header = read_header(cd.get(), args.device);
        check_claim(header, claim);
        (void)discards_allowed(cfg, args, header);
        if (audit::Context* ctx = audit::current()) {
            ctx->key = header.token.key;
            ctx->luks_uuid = header.luks_uuid;
        }
        add_header_info(*existing, header);
        res.disk = std::move(*existing);
        res.provider_type = header.token.provider_type;
        res.data_offset = header.data_offset;
        res.already_attached = true;
        res.elapsed_ms = ms_since(started);
        return res;
    }
    // The device must not be attached under another disk id.
    for (const auto& name : dm::list_names(std::string(kMappingPrefix))) {
        const auto m = dm::find(name);
        if (!m) {
            continue;
        }
        const auto other = disk_id_from_dm_uuid(m->uuid);
        if (!other || m->table.size() != 1) {
            continue;
        }
        const auto t = parse_table_params(m->table.front().length, m->table.front().params);
        if (t && t->backing_devno() == devno) {
            throw Error(Errc::conflict,
                        "device " + dev.shown + " (" + devno + ") is already attached as disk " + *other + " (" +
                            mapped_path(*other) + ")",
                        "one device carries one disk; check the disk id");
        }
    }

    const CryptDevice cd = open_luks2(dev.fd_path, args.device);
    const DiskHeader header = read_header(cd.get(), args.device);
    if (audit::Context* ctx = audit::current()) {
        ctx->key = header.token.key;
        ctx->luks_uuid = header.luks_uuid;
    }
    check_claim(header, claim);
    if (header.token.kind != ResourceKind::disk) {
        throw Error(Errc::usage,
                    "device " + dev.shown + " holds an encrypted " + std::string(kind_name(header.token.kind)) + " (" +
                        args.disk_id + "), and only disks are attached",
                    "make a disk from it: diskcrypt copy --to-kind disk");
    }
    // The table first (refuses foreign ciphers, bad sizes and discards the
    // disk type does not allow before the KMS is asked).
    CryptTable table = disk_table(cfg, header, dev, discards_allowed(cfg, args, header));
    {
        const SecureBuffer secret = unwrap_secret(cfg, header, args.disk_id);
        map_disk(cd.get(), header, dev, args.disk_id, table, secret);
    }

    auto attached = find_disk(args.disk_id);
    if (!attached) {
        throw Error(Errc::kernel, "mapping " + mapping_name(args.disk_id) + " vanished right after it was created");
    }
    add_header_info(*attached, header);
    res.disk = std::move(*attached);
    res.provider_type = header.token.provider_type;
    res.data_offset = header.data_offset;
    res.elapsed_ms = ms_since(started);
    if (const audit::Context* ctx = audit::current()) {
        res.kms_ms = ctx->kms_us / 1000;
    }
    return res;
}

DetachResult detach_disk(const AgentConfig& cfg, const proto::DetachArgs& args)
{
    const auto started = Clock::now();
    validate_disk_id(args.disk_id);
    const FileLock lock = lock_disk(cfg.lock_dir, args.disk_id);
    dm::require_available();
    auto disk = find_disk(args.disk_id);
    if (!disk) {
        throw Error(
            Errc::not_attached,
            "disk " + args.disk_id + " is not attached on this host (no mapping " + mapping_name(args.disk_id) + ")",
            "'diskcrypt list' shows the attached disks");
    }
    add_header_info(*disk);
    if (audit::Context* ctx = audit::current()) {
        ctx->key = disk->key;
        ctx->luks_uuid = disk->luks_uuid;
        ctx->device = disk->backing_device;
    }
    DetachResult res;
    res.forced = args.force;
    const std::string name = disk->mapping;
    if (disk->open_count > 0 && !args.force) {
        throw Error(Errc::busy,
                    "disk " + args.disk_id + " (" + disk->path + ") is in use (open count " +
                        std::to_string(disk->open_count) + "): " + holders_text(*disk),
                    "stop what uses it (unmount, stop the VM) and detach again; 'detach --force' makes all "
                    "further I/O fail and removes the mapping when the last user closes it");
    }
    if (args.force) {
        // dm-error first: outstanding and further I/O fail, and the target's
        // key is destroyed with the old table at once.
        dm::replace_with_error(name, disk->size / 512U);
        log_warning("detach --force " + args.disk_id + ": " + name + " now fails all I/O" +
                    (disk->open_count > 0 ? " (" + holders_text(*disk) + ")" : ""));
        dm::remove(name, true);
        res.deferred = dm::find(name).has_value();
    } else {
        try {
            dm::remove(name, false);
        } catch (const Error& e) {
            if (e.code() != Errc::busy) {
                throw;
            }
            auto now = find_disk(args.disk_id);
            throw Error(Errc::busy,
                        "disk " + args.disk_id + " (" + disk->path +
                            ") is in use: " + (now ? holders_text(*now) : std::string("it was opened meanwhile")),
                        "stop what uses it and detach again, or use 'detach --force'");
        }
    }
    res.disk = std::move(*disk);
    res.elapsed_ms = ms_since(started);
    return res;
}

std::vector<DiskInfo> list_disks(bool headers)
{
    std::vector<DiskInfo> out;
    for (const auto& name : dm::list_names(std::string(kMappingPrefix))) {
        const auto m = dm::find(name);
        if (!m) {
            continue;
        }
        const auto id = disk_id_from_dm_uuid(m->uuid);
        if (!id || mapping_name(*id) != name) {
            continue;  // a foreign device whose name happens to start with diskcrypt-
        }
        out.push_back(describe(*m, *id));
        if (headers) {
            add_header_info(out.back());  // no KMS: the key column
        }
    }
    std::sort(out.begin(), out.end(), [](const DiskInfo& a, const DiskInfo& b) { return a.disk_id < b.disk_id; });
    return out;
}

DiskInfo disk_status(const std::string& disk_id)
{
    validate_disk_id(disk_id);
    dm::require_available();
    auto d = find_disk(disk_id);
    if (!d) {
        throw Error(Errc::not_attached, "disk " + disk_id + " is not attached on this host",
                    "'diskcrypt list' shows the attached disks");
    }
    add_header_info(*d);
    return std::move(*d);
}

json to_json(const DiskInfo& d)
{
    auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
    json j = {
        {"disk_id", d.disk_id},
        {"mapping", d.mapping},
        {"dm_uuid", d.dm_uuid},
        {"path", d.path},
        {"dm_device", d.dm_device},
        {"devno", d.devno},
        {"backing_devno", or_null(d.backing_devno)},
        {"backing_device", or_null(d.backing_device)},
        {"size", d.size},
        {"sector_size", d.sector_size},
        {"iv_large_sectors", d.iv_large_sectors},
        {"allow_discards", d.allow_discards},
        {"zero_unwritten", d.zero_unwritten},
        {"read_workqueue", d.read_workqueue},
        {"write_workqueue", d.write_workqueue},
        {"inline_depth", d.inline_depth ? nlohmann::json(*d.inline_depth) : nlohmann::json(nullptr)},
        {"luks_uuid", or_null(d.luks_uuid)},
        {"target", d.target},
        {"key_state", or_null(d.key_state)},
        {"open_count", d.open_count},
        {"suspended", d.suspended},
        {"holders", d.holders},
        {"counters", d.counters},
        {"disk_type", or_null(d.disk_type)},
        {"state", or_null(d.state)},
        {"header_error", or_null(d.header_error)},
    };
    j["key"] =
        d.key ? json{{"provider", d.key->provider}, {"id", d.key->key_id}, {"version", d.key->version}} : json(nullptr);
    j["revoked"] = d.revoked;
    return j;
}

json to_json(const AttachResult& r)
{
    json j = to_json(r.disk);
    j["device"] = r.device;
    j["service_account"] = r.service_account;
    j["policy_revision"] = r.policy_revision;
    j["data_offset"] = r.data_offset;
    j["already_attached"] = r.already_attached;
    j["elapsed_ms"] = r.elapsed_ms;
    j["kms_ms"] = r.kms_ms;
    if (j["key"].is_object()) {
        j["key"]["provider_type"] = r.provider_type;
    }
    return j;
}

json to_json(const DetachResult& r)
{
    json j = to_json(r.disk);
    j["forced"] = r.forced;
    j["deferred"] = r.deferred;
    j["elapsed_ms"] = r.elapsed_ms;
    return j;
}

void wipe_disk_key(const AgentConfig& cfg, const std::string& disk_id)
{
    const FileLock lock = lock_disk(cfg.lock_dir, disk_id);
    dm::require_available();
    const auto d = find_disk(disk_id);
    if (!d) {
        throw Error(Errc::not_attached, "disk " + disk_id + " is not attached on this host");
    }
    if (d->target != kTargetName) {
        throw Error(Errc::conflict, "mapping " + d->mapping + " has no diskcrypt table (target " + d->target + ")",
                    "a forced detach left it on dm-error; detach it");
    }
    if (!d->suspended) {
        dm::suspend(d->mapping);
    }
    // Suspended: the target accepts key messages, and no bio runs while the
    // key schedule is overwritten.
    dm::message(d->mapping, "key wipe");
}

void rekey_disk(const AgentConfig& cfg, const std::string& disk_id)
{
    const FileLock lock = lock_disk(cfg.lock_dir, disk_id);
    dm::require_available();
    const std::string name = mapping_name(disk_id);
    const auto m = dm::find(name);
    const auto d = find_disk(disk_id);
    if (!m || !d) {
        throw Error(Errc::not_attached, "disk " + disk_id + " is not attached on this host");
    }
    const auto live = d->target == kTargetName && m->table.size() == 1
                          ? parse_table_params(m->table.front().length, m->table.front().params)
                          : std::nullopt;
    if (!live || !d->suspended || d->key_state != "wiped") {
        throw Error(Errc::conflict,
                    "disk " + disk_id + " is not a suspended diskcrypt mapping whose key was wiped (" + d->mapping +
                        ": target " + d->target + ", key " + (d->key_state.empty() ? "unknown" : d->key_state) +
                        (d->suspended ? ", suspended" : ", live") + ")",
                    "only a disk whose key the revocation check wiped is re-keyed");
    }
    // The backing device the live table names, opened once and checked by number.
    const OpenedDevice dev = open_device_once(device_path(live->backing_devno()), false);
    const std::string devno = std::to_string(major(dev.devno)) + ":" + std::to_string(minor(dev.devno));
    if (devno != live->backing_devno()) {
        throw Error(Errc::device, "disk " + disk_id + ": the backing device " + dev.shown + " is " + devno +
                                      ", not the " + live->backing_devno() + " its mapping names");
    }
    const CryptDevice cd = open_luks2(dev.fd_path, dev.shown);
    const DiskHeader header = read_header(cd.get(), dev.shown);
    if (audit::Context* ctx = audit::current()) {
        ctx->key = header.token.key;
        ctx->luks_uuid = header.luks_uuid;
        ctx->device = dev.shown;
    }
    if (header.token.disk_id != disk_id) {
        throw Error(Errc::binding,
                    "device " + dev.shown + ": this header belongs to disk " + header.token.disk_id + ", not " +
                        disk_id + ", whose mapping it backs",
                    "the storage changed under an attached disk; detach it");
    }
    // The header must still describe the live mapping: the key it opens is
    // set into a table that already runs.
    const CryptTable expected = disk_table(cfg, header, dev, live->allow_discards);
    if (expected.length != live->length || expected.iv_offset != live->iv_offset ||
        expected.dev_offset != live->dev_offset || expected.sector_size != live->sector_size ||
        expected.iv_large_sectors != live->iv_large_sectors ||
        luks_uuid_from_key_description(live->key_description) != header.luks_uuid) {
        throw Error(Errc::header,
                    "device " + dev.shown + ": the header of disk " + disk_id +
                        " no longer describes its live mapping (size, offsets, sector size or LUKS2 UUID differ)",
                    "the storage changed under an attached disk; detach it and attach it again");
    }
    const SecureBuffer secret = unwrap_secret(cfg, header, disk_id);
    const SecureBuffer dek = volume_key(cd.get(), header, dev, secret);
    const std::string description = new_key_description(header.luks_uuid);
    recheck_device(dev);
    run_in_own_thread([&] {
        const KernelKey key = add_disk_key(description, dek);
        dm::message(name, "key set :64:logon:" + description);
    });
    dm::resume(name);
}

}  // namespace diskcrypt
