// TTLV, the binary encoding of KMIP messages (KMIP 1.4 specification, 9.1):
// every item is a 3-byte tag, a 1-byte type, a 4-byte big-endian length and
// the value, padded with zero bytes to a multiple of 8.
//
// The codec knows nothing of KMIP operations (messages.hpp) or of the
// connection (transport.hpp). Decoding is strict, because the bytes come from
// a server across a network: every length must fit the bytes left and its
// type's fixed size, padding must be zero, booleans 0 or 1, nesting at most
// Limits::max_depth deep, at most Limits::max_items items, and the first item
// must fill the message exactly. A violation is a DecodeError whose message
// names the offset and the tag in hex (never the value's bytes).
//
// Items do not own text or byte values: an encoded request refers to the
// caller's strings and secrets, a decoded one to the message buffer (a
// SecureBuffer when it may carry a secret). Keep those alive while the items
// are used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "agent/secure_buffer.hpp"

namespace diskcrypt::kms::kmip {

enum class Type : std::uint8_t {
    structure = 0x01,
    integer = 0x02,
    long_integer = 0x03,
    big_integer = 0x04,
    enumeration = 0x05,
    boolean = 0x06,
    text = 0x07,
    bytes = 0x08,
    date_time = 0x09,
    interval = 0x0a,
};

std::string_view type_name(Type type);

// The tags diskcrypt sends or reads (KMIP 1.4, 9.1.3.1).
namespace tag {
inline constexpr std::uint32_t attribute = 0x420008;
inline constexpr std::uint32_t attribute_index = 0x420009;
inline constexpr std::uint32_t attribute_name = 0x42000A;
inline constexpr std::uint32_t attribute_value = 0x42000B;
inline constexpr std::uint32_t batch_count = 0x42000D;
inline constexpr std::uint32_t batch_item = 0x42000F;
inline constexpr std::uint32_t block_cipher_mode = 0x420011;
inline constexpr std::uint32_t cryptographic_algorithm = 0x420028;
inline constexpr std::uint32_t cryptographic_length = 0x42002A;
inline constexpr std::uint32_t cryptographic_parameters = 0x42002B;
inline constexpr std::uint32_t cryptographic_usage_mask = 0x42002C;
inline constexpr std::uint32_t iv_counter_nonce = 0x42003D;
inline constexpr std::uint32_t maximum_items = 0x42004F;
inline constexpr std::uint32_t maximum_response_size = 0x420050;
inline constexpr std::uint32_t name = 0x420053;
inline constexpr std::uint32_t name_type = 0x420054;
inline constexpr std::uint32_t name_value = 0x420055;
inline constexpr std::uint32_t object_type = 0x420057;
inline constexpr std::uint32_t operation = 0x42005C;
inline constexpr std::uint32_t protocol_version = 0x420069;
inline constexpr std::uint32_t protocol_version_major = 0x42006A;
inline constexpr std::uint32_t protocol_version_minor = 0x42006B;
inline constexpr std::uint32_t request_header = 0x420077;
inline constexpr std::uint32_t request_message = 0x420078;
inline constexpr std::uint32_t request_payload = 0x420079;
inline constexpr std::uint32_t response_header = 0x42007A;
inline constexpr std::uint32_t response_message = 0x42007B;
inline constexpr std::uint32_t response_payload = 0x42007C;
inline constexpr std::uint32_t result_message = 0x42007D;
inline constexpr std::uint32_t result_reason = 0x42007E;
inline constexpr std::uint32_t result_status = 0x42007F;
inline constexpr std::uint32_t revocation_reason = 0x420081;
inline constexpr std::uint32_t revocation_reason_code = 0x420082;
inline constexpr std::uint32_t state = 0x42008D;
inline constexpr std::uint32_t template_attribute = 0x420091;
inline constexpr std::uint32_t time_stamp = 0x420092;
inline constexpr std::uint32_t unique_identifier = 0x420094;
inline constexpr std::uint32_t data = 0x4200C2;
inline constexpr std::uint32_t tag_length = 0x4200CE;
inline constexpr std::uint32_t offset_items = 0x4200D4;
inline constexpr std::uint32_t authenticated_encryption_additional_data = 0x4200FE;
inline constexpr std::uint32_t authenticated_encryption_tag = 0x4200FF;
}  // namespace tag

// Bytes of an item's tag, type and length.
inline constexpr std::size_t kItemHeader = 8;

class DecodeError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct Limits {
    std::size_t max_message = std::size_t{64} * 1024;  // bytes of one whole message
    std::size_t max_depth = 12;                        // structures inside structures
    std::size_t max_items = 512;                       // items in one message
};

// A tree: copying or destroying one recurses into its children (as deep as
// decoding allows, Limits::max_depth).
struct Item {  // NOLINT(misc-no-recursion)
    std::uint32_t tag = 0;
    Type type = Type::structure;
    std::int64_t number = 0;              // integer, long, enumeration, boolean, date-time, interval
    std::span<const std::uint8_t> value;  // text, bytes, big integer (not owned)
    std::vector<Item> children;           // structure

    static Item structure(std::uint32_t tag, std::vector<Item> children);
    static Item integer(std::uint32_t tag, std::int32_t v);
    static Item long_integer(std::uint32_t tag, std::int64_t v);
    static Item enumeration(std::uint32_t tag, std::uint32_t v);
    static Item boolean(std::uint32_t tag, bool v);
    static Item date_time(std::uint32_t tag, std::int64_t seconds);
    static Item text(std::uint32_t tag, std::string_view v);
    static Item bytes(std::uint32_t tag, std::span<const std::uint8_t> v);

    // The first child with this tag, or nullptr.
    [[nodiscard]] const Item* find(std::uint32_t child_tag) const;
    // Every child with this tag.
    [[nodiscard]] std::vector<const Item*> find_all(std::uint32_t child_tag) const;
    // The first child with this tag, which must exist and have this type
    // (DecodeError otherwise, naming both tags).
    [[nodiscard]] const Item& get(std::uint32_t child_tag, Type child_type) const;
    // Same, but nullptr when absent (DecodeError when present with another type).
    [[nodiscard]] const Item* get_optional(std::uint32_t child_tag, Type child_type) const;

    [[nodiscard]] std::string_view as_text() const;
    [[nodiscard]] std::uint32_t as_enum() const { return static_cast<std::uint32_t>(number); }
};

// Bytes the item takes encoded, padding included.
std::size_t encoded_size(const Item& item);
// Encodes into locked memory (requests carry secrets: the Encrypt data).
SecureBuffer encode(const Item& item);
// Decodes one message; the items refer to `message`.
Item decode(std::span<const std::uint8_t> message, const Limits& limits = {});

// The length announced by a message's first 8 bytes (tag, type, length):
// the transport reads this header, checks it, then reads the rest.
std::size_t announced_length(std::span<const std::uint8_t, 8> header);

std::string tag_hex(std::uint32_t tag);

}  // namespace diskcrypt::kms::kmip
