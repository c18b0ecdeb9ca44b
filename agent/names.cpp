#include "agent/names.hpp"

#include <algorithm>
#include <array>

#include "agent/error.hpp"

namespace diskcrypt {

namespace {

// The profiles: what `make bench` measured best is the target's default
// queueing (inline crypto at depth 1, the workqueue above), for every type.
DiskProfile profile(unsigned sector_size, bool discards, bool zero_unwritten = true)
{
    DiskProfile p;
    p.sector_size = sector_size;
    p.discards = discards;
    p.zero_unwritten = zero_unwritten;
    return p;
}

const std::array<DiskType, 6> kDiskTypes{{
    {"network-hdd", true, "network HDD: 512-byte sectors, any guest boots; no discards", profile(512, false)},
    {"network-ssd", true, "network SSD: 512-byte sectors, any guest boots; discards on request", profile(512, true)},
    {"network-ssd-nonreplicated", true,
     "non-replicated SSD: 4096-byte sectors (guest must handle 4K); discards on request", profile(4096, true)},
    {"network-ssd-io-m3", true, "io-m3 SSD: 4096-byte sectors (guest must handle 4K); discards on request",
     profile(4096, true)},
    {"local-ssd", false, "local disk: cannot be encrypted", profile(0, false, false)},
    {"local-hdd", false, "local disk: cannot be encrypted", profile(0, false, false)},
}};

bool is_alnum(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool all_of(std::string_view s, std::string_view extra, bool lower_only = false)
{
    return std::ranges::all_of(s, [&](char c) {
        const bool ok = lower_only ? ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) : is_alnum(c);
        return ok || extra.find(c) != std::string_view::npos;
    });
}

// Quotes a user value for a message, cut to a sane length.
std::string quoted(std::string_view v)
{
    constexpr std::size_t kMax = 120;
    std::string out = "'";
    for (const char c : v.substr(0, kMax)) {
        out += (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    out += v.size() > kMax ? "...'" : "'";
    return out;
}

}  // namespace

void validate_disk_id(std::string_view id, std::string_view what)
{
    if (id.empty() || id.size() > 100 || !all_of(id, "._-")) {
        throw Error(Errc::usage, std::string("invalid ") + std::string(what) + " " + quoted(id) +
                                     ": it must be 1-100 characters from A-Z a-z 0-9 . _ -");
    }
}

void validate_service_account(std::string_view sa, std::string_view what)
{
    if (sa.empty() || sa.size() > 128 || !all_of(sa, "._@-")) {
        throw Error(Errc::usage, "invalid " + std::string(what) + " " + quoted(sa) +
                                     ": it must be 1-128 characters from A-Z a-z 0-9 . _ @ -");
    }
}

void validate_user_account(std::string_view user) { validate_service_account(user, "user account"); }

std::span<const DiskType> disk_types() { return kDiskTypes; }

const DiskType& encryptable_disk_type(std::string_view name)
{
    for (const auto& t : kDiskTypes) {
        if (t.name == name) {
            if (!t.encryptable) {
                throw Error(Errc::usage,
                            "disk type " + quoted(name) + " is a local disk, and local disks cannot be encrypted",
                            "only network-hdd, network-ssd, network-ssd-nonreplicated and network-ssd-io-m3 disks can "
                            "be encrypted");
            }
            return t;
        }
    }
    throw Error(Errc::usage, "unknown disk type " + quoted(name),
                "use one of network-hdd, network-ssd, network-ssd-nonreplicated, network-ssd-io-m3");
}

void validate_sector_size(unsigned sector_size)
{
    if (sector_size != 512 && sector_size != 1024 && sector_size != 2048 && sector_size != 4096) {
        throw Error(Errc::usage,
                    "invalid sector size " + std::to_string(sector_size) + ": use 512, 1024, 2048 or 4096");
    }
}

void validate_provider_name(std::string_view name)
{
    if (name.empty() || name.size() > 32 || !all_of(name, "_-", true) || name.front() == '_' || name.front() == '-') {
        throw Error(Errc::usage, "invalid provider name " + quoted(name) +
                                     ": it must be 1-32 characters from a-z 0-9 _ -, starting with a letter or digit");
    }
}

void validate_key_id(std::string_view id)
{
    if (id.empty() || id.size() > 128 || !all_of(id, "._:/-")) {
        throw Error(Errc::usage,
                    "invalid key id " + quoted(id) + ": it must be 1-128 characters from A-Z a-z 0-9 . _ : / -");
    }
}

void validate_key_version(std::string_view version)
{
    if (version.empty() || version.size() > 64 || !all_of(version, "._-")) {
        throw Error(Errc::usage,
                    "invalid key version " + quoted(version) + ": it must be 1-64 characters from A-Z a-z 0-9 . _ -");
    }
}

KeyRef parse_key_spec(std::string_view spec)
{
    const auto colon = spec.find(':');
    if (colon == std::string_view::npos) {
        throw Error(Errc::usage,
                    "invalid key " + quoted(spec) + ": write it as PROVIDER:KEY_ID (for example hsm:disk-key-01)");
    }
    KeyRef ref;
    ref.provider = spec.substr(0, colon);
    ref.key_id = spec.substr(colon + 1);
    validate_provider_name(ref.provider);
    validate_key_id(ref.key_id);
    return ref;
}

}  // namespace diskcrypt
