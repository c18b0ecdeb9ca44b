#include "agent/disk/associated_data.hpp"

#include "agent/error.hpp"

namespace diskcrypt {

namespace {

constexpr std::string_view kMagic = "diskcrypt-kms-ad";
constexpr std::size_t kMaxMappingText = 64;

void append_field(std::vector<std::uint8_t>& out, std::string_view field)
{
    // Callers validated lengths (all well under 65536).
    out.push_back(static_cast<std::uint8_t>((field.size() >> 8U) & 0xFFU));
    out.push_back(static_cast<std::uint8_t>(field.size() & 0xFFU));
    out.insert(out.end(), field.begin(), field.end());
}

template <typename T>
void append_number(std::vector<std::uint8_t>& out, T value)
{
    for (std::size_t i = sizeof(T); i > 0; --i) {
        out.push_back(static_cast<std::uint8_t>((value >> (8U * (i - 1))) & 0xFFU));
    }
}

std::vector<std::uint8_t> prefix(unsigned version, std::string_view disk_id, const KeyRef& key)
{
    validate_disk_id(disk_id);
    validate_provider_name(key.provider);
    validate_key_id(key.key_id);
    validate_key_version(key.version);

    std::vector<std::uint8_t> out(kMagic.begin(), kMagic.end());
    out.push_back(0x00);
    out.push_back(static_cast<std::uint8_t>(version));
    append_field(out, disk_id);
    append_field(out, key.provider);
    append_field(out, key.key_id);
    append_field(out, key.version);
    return out;
}

void validate_mapping_text(std::string_view value, std::string_view what)
{
    const bool ok = !value.empty() && value.size() <= kMaxMappingText &&
                    value.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-:") == std::string_view::npos;
    if (!ok) {
        throw Error(Errc::usage, "invalid " + std::string(what) + " for the associated data: 1-" +
                                     std::to_string(kMaxMappingText) + " characters from a-z 0-9 - :");
    }
}

}  // namespace

std::vector<std::uint8_t> associated_data(std::string_view disk_id, const KeyRef& key)
{
    return prefix(1, disk_id, key);
}

std::vector<std::uint8_t> associated_data(std::string_view disk_id, const KeyRef& key, const MappingBinding& mapping)
{
    validate_mapping_text(mapping.cipher, "cipher");
    validate_mapping_text(mapping.disk_type, "disk type");
    std::vector<std::uint8_t> out = prefix(2, disk_id, key);
    append_field(out, mapping.cipher);
    append_field(out, mapping.disk_type);
    append_number(out, mapping.volume_key_bytes);
    append_number(out, mapping.sector_size);
    append_number(out, mapping.data_offset);
    append_number(out, mapping.iv_tweak);
    return out;
}

}  // namespace diskcrypt
