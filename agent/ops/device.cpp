#include "agent/ops/device.hpp"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "agent/disk/header.hpp"
#include "agent/error.hpp"
#include "agent/log.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

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

}  // namespace

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

std::string fd_path(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

// NOLINTBEGIN(cppcoreguidelines-pro-type-vararg): open and ioctl are C vararg APIs
WritableDevice open_writable(const std::string& raw_path)
{
    const std::string path = printable(raw_path);
    if (raw_path.empty() || raw_path.front() != '/') {
        throw Error(Errc::usage, "device path '" + path + "' is not absolute");
    }
    WritableDevice d;
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

// After a failed write: zeroes the header area (as far as the device lets
// it), then probes again. Returns what the message should say.
std::string undo_partial_header(const WritableDevice& d)
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

void write_header_image(const WritableDevice& d, const std::string& image_path)
{
    crypt_device* raw = nullptr;
    int r = crypt_init_shared(&raw, d.fd_path.c_str());
    const CryptDevice cd(raw);
    if (r < 0) {
        throw Error(Errc::device, errno_text("libcryptsetup cannot open device " + d.path, -r));
    }
    r = crypt_header_restore(cd.get(), CRYPT_LUKS2, image_path.c_str());
    if (r < 0) {
        throw Error(Errc::device, errno_text("writing the LUKS2 header to " + d.path + " failed", -r));
    }
    if (fsync(d.fd.get()) != 0) {
        throw Error(Errc::device, errno_text("flushing " + d.path, errno));
    }
}

}  // namespace diskcrypt
