#include "agent/dm.hpp"

#include <fcntl.h>
#include <libdevmapper.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string_view>

#include "agent/error.hpp"
#include "agent/log.hpp"
#include "agent/raii.hpp"
#include "agent/text.hpp"

namespace diskcrypt::dm {

namespace {

std::mutex& dm_mutex() { return libdevmapper_mutex(); }

// libdevmapper's messages go to the agent's log at debug level: the agent
// reports failures in its own words, with the errno of the ioctl.
// NOLINTNEXTLINE(cert-dcl50-cpp): libdevmapper's log callback is a C vararg function
void dm_log(int /*level*/, const char* /*file*/, int /*line*/, int /*dm_errno_or_class*/, const char* f, ...)
{
    if (log_level() < LogLevel::debug) {
        return;
    }
    std::array<char, 512> buf{};
    va_list ap;       // NOLINT(cppcoreguidelines-pro-type-vararg)
    va_start(ap, f);  // NOLINT(cppcoreguidelines-pro-type-vararg,cppcoreguidelines-pro-bounds-array-to-pointer-decay)
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg,cppcoreguidelines-pro-bounds-array-to-pointer-decay)
    (void)std::vsnprintf(buf.data(), buf.size(), f, ap);
    va_end(ap);  // NOLINT(cppcoreguidelines-pro-type-vararg,cppcoreguidelines-pro-bounds-array-to-pointer-decay)
    // The message may quote names and tables from the kernel: escaped where it enters.
    log_debug("libdevmapper: " + printable(buf.data()));
}

// Once per process: the log, and udev synchronisation only if udev runs.
void init_once()
{
    static std::once_flag once;
    std::call_once(once, [] {
        // After libcryptsetup set its own log, which it then never resets.
        pin_cryptsetup_backend();
        dm_log_with_errno_init(dm_log);
        if (access("/run/udev/control", F_OK) != 0) {
            dm_udev_set_sync_support(0);
            log_debug("udev is not running: libdevmapper creates /dev/mapper nodes itself");
        }
    });
}

DmTask task(int type, const std::string& name = {})
{
    init_once();
    DmTask t(dm_task_create(type));
    if (!t) {
        throw Error(Errc::internal, "dm_task_create failed (out of memory)");
    }
    if (!name.empty() && dm_task_set_name(t.get(), name.c_str()) == 0) {
        throw Error(Errc::internal, "dm_task_set_name(" + name + ") failed");
    }
    return t;
}

// Runs a task; returns 0 or the ioctl's errno.
int run(const DmTask& t)
{
    if (dm_task_run(t.get()) != 0) {
        return 0;
    }
    const int e = dm_task_get_errno(t.get());
    return e != 0 ? e : EIO;
}

std::vector<Target> targets(const DmTask& t)
{
    std::vector<Target> out;
    void* next = nullptr;
    do {
        std::uint64_t start = 0;
        std::uint64_t length = 0;
        char* type = nullptr;
        char* params = nullptr;
        next = dm_get_next_target(t.get(), next, &start, &length, &type, &params);
        if (type != nullptr) {
            out.push_back({start, length, type, params != nullptr ? params : ""});
        }
    } while (next != nullptr);
    return out;
}

// Runs a task that carries udev flags, and waits for udev (or, without udev,
// lets libdevmapper update /dev/mapper itself).
int run_with_cookie(const DmTask& t)
{
    std::uint32_t cookie = 0;
    if (dm_task_set_cookie(t.get(), &cookie, kUdevFlags) == 0) {
        throw Error(Errc::kernel, "cannot set up udev synchronisation for device-mapper (dm_task_set_cookie)",
                    "check that udev is running, or stop it completely");
    }
    const int e = run(t);
    (void)dm_udev_wait(cookie);
    return e;
}

}  // namespace

bool available()
{
    // The node may exist on a kernel without device-mapper (made by a tool);
    // opening it works only with the driver (a modular one is loaded by the open).
    const FileDescriptor control(
        ::open("/dev/mapper/control", O_RDWR | O_CLOEXEC));  // NOLINT(cppcoreguidelines-pro-type-vararg)
    if (control) {
        return true;
    }
    std::ifstream misc("/proc/misc");
    std::string line;
    while (std::getline(misc, line)) {
        if (line.find("device-mapper") != std::string::npos) {
            return true;
        }
    }
    return false;
}

void require_available()
{
    if (!available()) {
        throw Error(Errc::kernel, "device-mapper is not available in this kernel (no /dev/mapper/control)",
                    "load it with 'modprobe dm-mod' (and 'modprobe dm-diskcrypt')");
    }
}

std::optional<Mapping> find(const std::string& name)
{
    require_available();
    const std::lock_guard lock(dm_mutex());
    Mapping m;
    m.name = name;
    {
        const DmTask t = task(DM_DEVICE_INFO, name);
        if (const int e = run(t); e != 0) {
            throw Error(Errc::kernel, errno_text("device-mapper: cannot read mapping " + name, e));
        }
        dm_info info{};
        if (dm_task_get_info(t.get(), &info) == 0 || info.exists == 0) {
            return std::nullopt;
        }
        m.major = info.major;
        m.minor = info.minor;
        m.open_count = info.open_count;
        m.suspended = info.suspended != 0;
    }
    for (const int type : {DM_DEVICE_TABLE, DM_DEVICE_STATUS}) {
        const DmTask t = task(type, name);
        if (const int e = run(t); e != 0) {
            if (e == ENXIO) {
                return std::nullopt;  // removed meanwhile
            }
            throw Error(Errc::kernel, errno_text("device-mapper: cannot read mapping " + name, e));
        }
        if (type == DM_DEVICE_TABLE) {
            const char* uuid = dm_task_get_uuid(t.get());
            m.uuid = uuid != nullptr ? uuid : "";
            m.table = targets(t);
        } else {
            m.status = targets(t);
        }
    }
    return m;
}

std::vector<std::string> list_names(const std::string& prefix)
{
    require_available();
    const std::lock_guard lock(dm_mutex());
    const DmTask t = task(DM_DEVICE_LIST);
    if (const int e = run(t); e != 0) {
        throw Error(Errc::kernel, errno_text("device-mapper: cannot list mappings", e));
    }
    std::vector<std::string> out;
    const dm_names* names = dm_task_get_names(t.get());
    if (names == nullptr || names->dev == 0) {
        return out;
    }
    unsigned next = 0;
    do {
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): libdevmapper's packed list
        names = reinterpret_cast<const dm_names*>(reinterpret_cast<const char*>(names) + next);
        const std::string_view name(&names->name[0]);
        if (name.starts_with(prefix)) {
            out.emplace_back(name);
        }
        next = names->next;
    } while (next != 0);
    return out;
}

bool has_target(const std::string& type)
{
    const std::lock_guard lock(dm_mutex());
    const DmTask t = task(DM_DEVICE_LIST_VERSIONS);
    if (run(t) != 0) {
        return false;
    }
    const dm_versions* v = dm_task_get_versions(t.get());
    if (v == nullptr) {
        return false;
    }
    unsigned next = 0;
    do {
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): libdevmapper's packed list
        v = reinterpret_cast<const dm_versions*>(reinterpret_cast<const char*>(v) + next);
        if (type == &v->name[0]) {
            return true;
        }
        next = v->next;
    } while (next != 0);
    return false;
}

void create(const std::string& name, const std::string& uuid, const Target& target)
{
    require_available();
    int e = 0;
    {
        const std::lock_guard lock(dm_mutex());
        const DmTask t = task(DM_DEVICE_CREATE, name);
        if (dm_task_set_uuid(t.get(), uuid.c_str()) == 0 ||
            dm_task_add_target(t.get(), target.start, target.length, target.type.c_str(), target.params.c_str()) == 0 ||
            dm_task_secure_data(t.get()) == 0) {
            throw Error(Errc::internal, "cannot prepare the device-mapper table for " + name);
        }
        e = run_with_cookie(t);
    }
    if (e == 0) {
        return;
    }
    switch (e) {
        case EEXIST:
            throw Error(Errc::conflict,
                        "a device-mapper device named " + name + " or with uuid " + uuid + " already exists",
                        "see 'dmsetup info " + name + "'");
        case EBUSY:
            throw Error(Errc::busy, "the backing device is in use (mounted, or claimed by another mapping)",
                        "check 'dmsetup ls --tree' and the mounts of the device");
        case ENOKEY:
            throw Error(Errc::kernel, "the diskcrypt target did not find the disk's key in the agent's keyring",
                        "a kernel without keyring support for device-mapper, or a bug; see the kernel log (dmesg)");
        case ENXIO:
        case ENODEV:
            throw Error(Errc::device, errno_text("the backing device is gone", e));
        case EINVAL:
            if (!has_target(target.type)) {
                throw Error(Errc::kernel, "the kernel has no '" + target.type + "' device-mapper target",
                            "load the module: modprobe dm-diskcrypt");
            }
            throw Error(Errc::kernel, "the " + target.type + " target refused the table of " + name,
                        "see the kernel log (dmesg) for the reason");
        default:
            throw Error(Errc::kernel, errno_text("device-mapper refused to create " + name, e));
    }
}

void remove(const std::string& name, bool deferred)
{
    require_available();
    int e = 0;
    {
        const std::lock_guard lock(dm_mutex());
        const DmTask t = task(DM_DEVICE_REMOVE, name);
        if (deferred) {
            (void)dm_task_deferred_remove(t.get());
        } else {
            (void)dm_task_retry_remove(t.get());
        }
        e = run_with_cookie(t);
    }
    if (e == 0) {
        return;
    }
    if (e == EBUSY) {
        throw Error(Errc::busy, "mapping " + name + " is in use");
    }
    if (e == ENXIO) {
        throw Error(Errc::not_attached, "mapping " + name + " does not exist");
    }
    throw Error(Errc::kernel, errno_text("device-mapper refused to remove " + name, e));
}

void replace_with_error(const std::string& name, std::uint64_t length)
{
    require_available();
    const std::lock_guard lock(dm_mutex());
    {
        const DmTask t = task(DM_DEVICE_RELOAD, name);
        if (dm_task_add_target(t.get(), 0, length, "error", "") == 0) {
            throw Error(Errc::internal, "cannot prepare the dm-error table for " + name);
        }
        if (const int e = run(t); e != 0) {
            throw Error(Errc::kernel, errno_text("device-mapper refused to load dm-error into " + name, e));
        }
    }
    const DmTask t = task(DM_DEVICE_RESUME, name);
    if (const int e = run_with_cookie(t); e != 0) {
        throw Error(Errc::kernel, errno_text("device-mapper refused to switch " + name + " to dm-error", e));
    }
}

void suspend(const std::string& name)
{
    require_available();
    DmTask t;
    {
        const std::lock_guard lock(dm_mutex());
        t = task(DM_DEVICE_SUSPEND, name);
        (void)dm_task_skip_lockfs(t.get());  // the VM's filesystem is not the host's to freeze
    }
    if (const int e = run(t); e != 0) {
        if (e == ENXIO) {
            throw Error(Errc::not_attached, "mapping " + name + " does not exist");
        }
        throw Error(Errc::kernel, errno_text("device-mapper refused to suspend " + name, e));
    }
}

void resume(const std::string& name)
{
    require_available();
    const std::lock_guard lock(dm_mutex());
    const DmTask t = task(DM_DEVICE_RESUME, name);
    if (const int e = run_with_cookie(t); e != 0) {
        throw Error(Errc::kernel, errno_text("device-mapper refused to resume " + name, e),
                    e == ENOKEY ? "the target has no valid key: set one first" : "see the kernel log (dmesg)");
    }
}

void message(const std::string& name, const std::string& text)
{
    require_available();
    const std::lock_guard lock(dm_mutex());
    const DmTask t = task(DM_DEVICE_TARGET_MSG, name);
    if (dm_task_set_sector(t.get(), 0) == 0 || dm_task_set_message(t.get(), text.c_str()) == 0) {
        throw Error(Errc::internal, "cannot prepare the message '" + text + "' for " + name);
    }
    if (const int e = run(t); e != 0) {
        throw Error(Errc::kernel, errno_text("the target of " + name + " refused the message '" + text + "'", e));
    }
}

}  // namespace diskcrypt::dm
