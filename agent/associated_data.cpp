#include "agent/associated_data.hpp"

namespace diskcrypt {

namespace {

constexpr std::string_view kMagic = "diskcrypt-kms-ad";

void append_field(std::vector<std::uint8_t>& out, std::string_view field)
{
    // Callers validated lengths (all well under 65536).
    out.push_back(static_cast<std::uint8_t>((field.size() >> 8U) & 0xFFU));
    out.push_back(static_cast<std::uint8_t>(field.size() & 0xFFU));
    out.insert(out.end(), field.begin(), field.end());
}

}  // namespace

std::vector<std::uint8_t> associated_data(std::string_view disk_id, const KeyRef& key)
{
    validate_disk_id(disk_id);
    validate_provider_name(key.provider);
    validate_key_id(key.key_id);
    validate_key_version(key.version);

    std::vector<std::uint8_t> out(kMagic.begin(), kMagic.end());
    out.push_back(0x00);
    out.push_back(static_cast<std::uint8_t>(kAssociatedDataVersion));
    append_field(out, disk_id);
    append_field(out, key.provider);
    append_field(out, key.key_id);
    append_field(out, key.version);
    return out;
}

}  // namespace diskcrypt
