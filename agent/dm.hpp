// All libdevmapper use of the agent, in one place (as cryptsetup keeps it in
// lib/libdevmapper.c). libdevmapper keeps global state (its node-operation
// queue, the log function), so every call here holds one process-wide mutex;
// the calls are short ioctls.
//
// udev: when udev is running, libdevmapper synchronises with it through a
// cookie and udev makes /dev/mapper/<name>; when it is not (containers, the
// test guest, early boot), synchronisation is switched off and libdevmapper
// makes the node itself. Either way our mappings carry the udev flags that keep
// the host from probing the VM's data: DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG,
// DM_UDEV_DISABLE_DISK_RULES_FLAG (no blkid, no by-uuid/by-label links) and
// DM_UDEV_DISABLE_OTHER_RULES_FLAG (no LVM auto-activation, no mounts). The
// device-mapper rules themselves stay on, so /dev/mapper/<name> exists.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace diskcrypt::dm {

inline constexpr std::uint16_t kUdevFlags = 0x0002U | 0x0004U | 0x0008U;  // SUBSYSTEM | DISK | OTHER rules off

// Whether this kernel has device-mapper at all (/dev/mapper/control opens, or
// "device-mapper" is in /proc/misc). Nothing else here is called without it.
bool available();

// Error(kernel) naming what is missing if device-mapper is not available.
void require_available();

struct Target {
    std::uint64_t start = 0;
    std::uint64_t length = 0;
    std::string type;
    std::string params;
};

struct Mapping {
    std::string name;
    std::string uuid;
    unsigned major = 0;
    unsigned minor = 0;
    int open_count = 0;
    bool suspended = false;
    std::vector<Target> table;   // DM_DEVICE_TABLE
    std::vector<Target> status;  // DM_DEVICE_STATUS (params = the status line)
};

// The mapping called `name`, or nothing if there is none.
std::optional<Mapping> find(const std::string& name);

// Names of every mapping whose name starts with `prefix`.
std::vector<std::string> list_names(const std::string& prefix);

// Creates, loads and resumes a mapping with one target (DM_DEVICE_CREATE with
// a table), udev flags as above, table buffers wiped by the kernel
// (DM_SECURE_DATA). Must run in the thread whose keyrings hold the key the
// table names. Throws Error(kernel / conflict / device) with the errno.
void create(const std::string& name, const std::string& uuid, const Target& target);

// Removes a mapping; with `deferred`, a mapping still open is removed when its
// last opener closes it. Throws Error(busy) on EBUSY, Error(kernel) otherwise.
void remove(const std::string& name, bool deferred);

// Replaces the live table with dm-error of the same length (so every further
// I/O fails and the target's key is destroyed with its table).
void replace_with_error(const std::string& name, std::uint64_t length);

// Suspends a mapping: in-flight I/O completes, new I/O waits in device-mapper
// until resume. Runs without the process-wide mutex (the ioctl waits for the
// backing device; other mappings' calls must not wait behind it).
// Error(not_attached) if there is no such mapping, Error(kernel) otherwise.
void suspend(const std::string& name);

// Resumes a suspended mapping (the target's preresume may refuse: ENOKEY
// for a wiped key). Error(kernel) with the errno.
void resume(const std::string& name);

// Sends a message to the mapping's target at sector 0 (DM_DEVICE_TARGET_MSG),
// e.g. "key wipe". Error(kernel) with the errno (EBUSY: not suspended).
void message(const std::string& name, const std::string& text);

// Whether the kernel knows the target type (DM_DEVICE_LIST_VERSIONS).
bool has_target(const std::string& type);

}  // namespace diskcrypt::dm
