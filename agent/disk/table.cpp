#include "agent/disk/table.hpp"

#include <openssl/rand.h>

#include <array>
#include <charconv>
#include <sstream>
#include <vector>

#include "agent/error.hpp"
#include "agent/names.hpp"

namespace diskcrypt {

namespace {

std::vector<std::string_view> split_words(std::string_view text)
{
    std::vector<std::string_view> words;
    std::size_t i = 0;
    while (i < text.size()) {
        while (i < text.size() && text[i] == ' ') {
            ++i;
        }
        const std::size_t start = i;
        while (i < text.size() && text[i] != ' ') {
            ++i;
        }
        if (i > start) {
            words.push_back(text.substr(start, i - start));
        }
    }
    return words;
}

template <typename T>
bool parse_number(std::string_view word, T& out)
{
    if (word.empty()) {
        return false;
    }
    const auto* end = word.data() + word.size();
    const auto [ptr, ec] = std::from_chars(word.data(), end, out);
    return ec == std::errc() && ptr == end;
}

bool valid_disk_id(std::string_view id)
{
    try {
        validate_disk_id(id);
        return true;
    } catch (const Error&) {
        return false;
    }
}

}  // namespace

std::string mapping_name(std::string_view disk_id)
{
    validate_disk_id(disk_id);
    return std::string(kMappingPrefix) + std::string(disk_id);
}

std::string dm_uuid(std::string_view disk_id)
{
    validate_disk_id(disk_id);
    return std::string(kDmUuidPrefix) + std::string(disk_id);
}

std::optional<std::string> disk_id_from_dm_uuid(std::string_view uuid)
{
    if (!uuid.starts_with(kDmUuidPrefix)) {
        return std::nullopt;
    }
    const std::string_view id = uuid.substr(kDmUuidPrefix.size());
    if (!valid_disk_id(id)) {
        return std::nullopt;
    }
    return std::string(id);
}

std::string mapped_path(std::string_view disk_id) { return "/dev/mapper/" + mapping_name(disk_id); }

std::string new_key_description(std::string_view luks_uuid)
{
    validate_luks_uuid(luks_uuid, "key description");
    std::array<unsigned char, 8> random{};
    if (RAND_bytes(random.data(), static_cast<int>(random.size())) != 1) {
        throw Error(Errc::internal, "cannot draw random bytes for a key description");
    }
    static constexpr std::string_view kHex = "0123456789abcdef";
    std::string out = std::string(kKeyDescriptionPrefix) + std::string(luks_uuid) + ":";
    for (const unsigned char b : random) {
        out += kHex[b >> 4U];
        out += kHex[b & 0xFU];
    }
    return out;
}

std::optional<std::string> luks_uuid_from_key_description(std::string_view description)
{
    if (!description.starts_with(kKeyDescriptionPrefix)) {
        return std::nullopt;
    }
    const std::string_view rest = description.substr(kKeyDescriptionPrefix.size());
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos || !is_luks_uuid(rest.substr(0, colon))) {
        return std::nullopt;
    }
    return std::string(rest.substr(0, colon));
}

std::string CryptTable::params() const
{
    std::ostringstream s;
    s << kTableCipher << " :" << kDekBytes << ":logon:" << key_description << ' ' << iv_offset << ' ' << major << ':'
      << minor << ' ' << dev_offset;
    std::vector<std::string> opts;
    if (sector_size != 512) {
        opts.push_back("sector_size:" + std::to_string(sector_size));
    }
    if (iv_large_sectors) {
        opts.emplace_back("iv_large_sectors");
    }
    if (allow_discards) {
        opts.emplace_back("allow_discards");
    }
    if (zero_unwritten) {
        opts.emplace_back("zero_unwritten");
    }
    if (read_workqueue) {
        opts.emplace_back("read_workqueue");
    }
    if (write_workqueue) {
        opts.emplace_back("write_workqueue");
    }
    if (inline_depth) {
        opts.push_back("inline_depth:" + std::to_string(*inline_depth));
    }
    if (!opts.empty()) {
        s << ' ' << opts.size();
        for (const auto& o : opts) {
            s << ' ' << o;
        }
    }
    return s.str();
}

CryptTable table_from_header(const DiskHeader& header, unsigned major, unsigned minor, std::uint64_t device_bytes,
                             std::string key_description, bool allow_discards)
{
    if (header.cipher != kTableCipher || header.volume_key_bytes != kDekBytes) {
        throw Error(Errc::header,
                    "device " + header.device + ": the LUKS2 segment uses " + header.cipher + " with a " +
                        std::to_string(header.volume_key_bytes * 8) + "-bit key; diskcrypt attaches only " +
                        std::string(kTableCipher) + " with a 512-bit key (AES-256-XTS)",
                    "this volume was not formatted by diskcrypt; open it with cryptsetup instead");
    }
    const unsigned ss = header.sector_size == 0 ? 512U : header.sector_size;
    validate_sector_size(ss);
    if (header.data_offset % ss != 0 || (header.iv_offset * 512U) % ss != 0) {
        throw Error(Errc::header, "device " + header.device + ": the data offset (" +
                                      std::to_string(header.data_offset) +
                                      " bytes) or IV offset is not a multiple of "
                                      "the sector size " +
                                      std::to_string(ss));
    }
    if (device_bytes < header.data_offset + ss) {
        throw Error(Errc::device, "device " + header.device + " (" + std::to_string(device_bytes) +
                                      " bytes) has no room for data after the header (data offset " +
                                      std::to_string(header.data_offset) + " bytes)");
    }
    const std::uint64_t data_bytes = device_bytes - header.data_offset;
    if (data_bytes % ss != 0) {
        throw Error(Errc::device,
                    "device " + header.device + ": its data area (" + std::to_string(data_bytes) +
                        " bytes) is not a multiple of the sector size " + std::to_string(ss),
                    "the device was resized after format; give it a size of the data offset plus a multiple of " +
                        std::to_string(ss) + " bytes");
    }
    CryptTable t;
    t.length = data_bytes / 512U;
    t.key_description = std::move(key_description);
    t.iv_offset = header.iv_offset;
    t.major = major;
    t.minor = minor;
    t.dev_offset = header.data_offset / 512U;
    t.sector_size = ss;
    // LUKS2 counts IVs in 512-byte sectors whatever the sector size (as
    // cryptsetup's own activation does): no iv_large_sectors.
    t.iv_large_sectors = false;
    t.allow_discards = allow_discards;  // never header.allow_discards
    return t;
}

void apply_profile(CryptTable& table, const DiskProfile& profile)
{
    table.zero_unwritten = profile.zero_unwritten;
    table.read_workqueue = profile.read_workqueue;
    table.write_workqueue = profile.write_workqueue;
    table.inline_depth = profile.inline_depth;
}

std::optional<CryptTable> parse_table_params(std::uint64_t length, std::string_view params)
{
    const auto w = split_words(params);
    if (w.size() < 5 || w[0] != kTableCipher) {
        return std::nullopt;
    }
    CryptTable t;
    t.length = length;
    // ":64:logon:", built by appending (g++ 12 -O2 warns -Wrestrict, a false
    // positive, on "literal" + std::to_string(...) here).
    std::string key_prefix(1, ':');
    key_prefix += std::to_string(kDekBytes);
    key_prefix += ":logon:";
    if (!w[1].starts_with(key_prefix)) {
        return std::nullopt;
    }
    t.key_description = std::string(w[1].substr(key_prefix.size()));
    const auto colon = w[3].find(':');
    if (!parse_number(w[2], t.iv_offset) || colon == std::string_view::npos ||
        !parse_number(w[3].substr(0, colon), t.major) || !parse_number(w[3].substr(colon + 1), t.minor) ||
        !parse_number(w[4], t.dev_offset)) {
        return std::nullopt;
    }
    if (w.size() == 5) {
        return t;
    }
    std::size_t n = 0;
    if (!parse_number(w[5], n) || w.size() != 6 + n) {
        return std::nullopt;
    }
    for (std::size_t i = 6; i < w.size(); ++i) {
        const std::string_view o = w[i];
        if (o.starts_with("sector_size:")) {
            if (!parse_number(o.substr(12), t.sector_size)) {
                return std::nullopt;
            }
        } else if (o == "iv_large_sectors") {
            t.iv_large_sectors = true;
        } else if (o == "allow_discards") {
            t.allow_discards = true;
        } else if (o == "zero_unwritten") {
            t.zero_unwritten = true;
        } else if (o == "read_workqueue") {
            t.read_workqueue = true;
        } else if (o == "write_workqueue") {
            t.write_workqueue = true;
        } else if (o.starts_with("inline_depth:")) {
            unsigned depth = 0;
            if (!parse_number(o.substr(13), depth)) {
                return std::nullopt;
            }
            t.inline_depth = depth;
        }
        // Other options (set by hand with dmsetup) are kept out of the view.
    }
    return t;
}

}  // namespace diskcrypt
