#include "agent/kms/kmip/messages.hpp"

#include <array>
#include <utility>

#include "agent/text.hpp"

namespace diskcrypt::kms::kmip {

namespace {

constexpr std::int32_t kMajor = 1;
constexpr std::int32_t kMinor = 4;
constexpr std::int32_t kGcmTagLength = 16;  // bytes (KMIP Tag Length)
constexpr std::size_t kMaxUid = 128;
constexpr std::size_t kMaxMessageText = 512;

constexpr std::array<std::string_view, 5> kKeyAttributes{attribute_name::state, attribute_name::algorithm,
                                                         attribute_name::length, attribute_name::usage_mask,
                                                         attribute_name::initial_date};

SecureBuffer request(Operation op, std::vector<Item> payload)
{
    std::vector<Item> header;
    header.push_back(Item::structure(tag::protocol_version, {Item::integer(tag::protocol_version_major, kMajor),
                                                             Item::integer(tag::protocol_version_minor, kMinor)}));
    header.push_back(Item::integer(tag::batch_count, 1));
    std::vector<Item> batch;
    batch.push_back(Item::enumeration(tag::operation, static_cast<std::uint32_t>(op)));
    batch.push_back(Item::structure(tag::request_payload, std::move(payload)));
    std::vector<Item> msg;
    msg.push_back(Item::structure(tag::request_header, std::move(header)));
    msg.push_back(Item::structure(tag::batch_item, std::move(batch)));
    return encode(Item::structure(tag::request_message, std::move(msg)));
}

Item gcm_parameters()
{
    return Item::structure(tag::cryptographic_parameters,
                           {Item::enumeration(tag::block_cipher_mode, kModeGcm),
                            Item::enumeration(tag::cryptographic_algorithm, kAlgorithmAes),
                            Item::integer(tag::tag_length, kGcmTagLength)});
}

// An Attribute as requests carry it: its name and value (the value's tag is
// Attribute Value whatever its type).
Item attribute(std::string_view name, Item value)
{
    value.tag = tag::attribute_value;
    return Item::structure(tag::attribute, {Item::text(tag::attribute_name, name), std::move(value)});
}

Item name_attribute(std::string_view name)
{
    return attribute(
        attribute_name::name,
        Item::structure(tag::attribute_value, {Item::text(tag::name_value, name),
                                               Item::enumeration(tag::name_type, kNameTypeUninterpretedText)}));
}

std::string printable_text(const Item& item, std::size_t max) { return printable(item.as_text(), max); }

[[noreturn]] void shape(const std::string& why) { throw DecodeError("unexpected KMIP response: " + why); }

// A Unique Identifier a server sent: a non-empty printable ASCII string of at
// most kMaxUid bytes.
std::string unique_identifier(const Item& uid)
{
    if (uid.type != Type::text) {
        shape("a Unique Identifier that is not a text string");
    }
    const std::string_view text = uid.as_text();
    if (text.empty() || text.size() > kMaxUid || !is_printable(text)) {
        shape("a Unique Identifier that is empty, longer than " + std::to_string(kMaxUid) +
              " bytes or not printable ASCII");
    }
    return std::string(text);
}

// The payload's one item with this tag and type (DecodeError when there is
// none, or more than one).
const Item& only(const Response& r, std::uint32_t t, std::string_view what)
{
    const auto all = r.payload->find_all(t);
    if (all.size() != 1) {
        shape(std::to_string(all.size()) + " " + std::string(what) + " items in the answer to " +
              std::string(operation_name(r.operation)) + "; one was expected");
    }
    return *all.front();
}

SecureBuffer uid_request(Operation op, std::string_view uid)
{
    std::vector<Item> p;
    p.push_back(Item::text(tag::unique_identifier, uid));
    return request(op, std::move(p));
}

}  // namespace

std::string_view operation_name(Operation op)
{
    switch (op) {
        case Operation::create:
            return "Create";
        case Operation::locate:
            return "Locate";
        case Operation::get_attributes:
            return "Get Attributes";
        case Operation::activate:
            return "Activate";
        case Operation::revoke:
            return "Revoke";
        case Operation::destroy:
            return "Destroy";
        case Operation::encrypt:
            return "Encrypt";
        case Operation::decrypt:
            return "Decrypt";
    }
    return "unknown operation";
}

std::string reason_name(std::uint32_t r)
{
    struct Name {
        std::uint32_t value;
        std::string_view text;
    };
    static constexpr std::array<Name, 24> kNames{{
        {0x01, "Item Not Found"},
        {0x02, "Response Too Large"},
        {0x03, "Authentication Not Successful"},
        {0x04, "Invalid Message"},
        {0x05, "Operation Not Supported"},
        {0x06, "Missing Data"},
        {0x07, "Invalid Field"},
        {0x08, "Feature Not Supported"},
        {0x09, "Operation Canceled By Requester"},
        {0x0A, "Cryptographic Failure"},
        {0x0B, "Illegal Operation"},
        {0x0C, "Permission Denied"},
        {0x0D, "Object Archived"},
        {0x0E, "Index Out Of Bounds"},
        {0x0F, "Application Namespace Not Supported"},
        {0x10, "Key Format Type Not Supported"},
        {0x11, "Key Compression Type Not Supported"},
        {0x12, "Encoding Option Error"},
        {0x13, "Key Value Not Present"},
        {0x14, "Attestation Required"},
        {0x15, "Attestation Failed"},
        {0x16, "Sensitive"},
        {0x17, "Not Extractable"},
        {0x100, "General Failure"},
    }};
    std::string hex;
    for (std::uint32_t v = r; v != 0 || hex.empty(); v >>= 4U) {
        hex.insert(hex.begin(), "0123456789ABCDEF"[v & 0x0fU]);
    }
    for (const Name& n : kNames) {
        if (n.value == r) {
            return std::string(n.text) + " (0x" + hex + ")";
        }
    }
    return "reason 0x" + hex;
}

std::string_view state_name(KeyState s)
{
    switch (s) {
        case KeyState::pre_active:
            return "pre-active";
        case KeyState::active:
            return "active";
        case KeyState::deactivated:
            return "deactivated";
        case KeyState::compromised:
            return "compromised";
        case KeyState::destroyed:
            return "destroyed";
        case KeyState::destroyed_compromised:
            return "destroyed (compromised)";
        case KeyState::unknown:
            break;
    }
    return "unknown";
}

SecureBuffer encrypt_request(std::string_view uid, std::span<const std::uint8_t> iv,
                             std::span<const std::uint8_t> plaintext, std::span<const std::uint8_t> ad)
{
    std::vector<Item> p;
    p.push_back(Item::text(tag::unique_identifier, uid));
    p.push_back(gcm_parameters());
    p.push_back(Item::bytes(tag::data, plaintext));
    p.push_back(Item::bytes(tag::iv_counter_nonce, iv));
    p.push_back(Item::bytes(tag::authenticated_encryption_additional_data, ad));
    return request(Operation::encrypt, std::move(p));
}

SecureBuffer decrypt_request(std::string_view uid, std::span<const std::uint8_t> iv,
                             std::span<const std::uint8_t> ciphertext, std::span<const std::uint8_t> ad,
                             std::span<const std::uint8_t> tag)
{
    std::vector<Item> p;
    p.push_back(Item::text(tag::unique_identifier, uid));
    p.push_back(gcm_parameters());
    p.push_back(Item::bytes(tag::data, ciphertext));
    p.push_back(Item::bytes(tag::iv_counter_nonce, iv));
    p.push_back(Item::bytes(tag::authenticated_encryption_additional_data, ad));
    p.push_back(Item::bytes(tag::authenticated_encryption_tag, tag));
    return request(Operation::decrypt, std::move(p));
}

SecureBuffer get_attributes_request(std::string_view uid) { return get_attributes_request(uid, kKeyAttributes); }

SecureBuffer get_attributes_request(std::string_view uid, std::span<const std::string_view> names)
{
    std::vector<Item> p;
    p.push_back(Item::text(tag::unique_identifier, uid));
    for (const std::string_view name : names) {
        p.push_back(Item::text(tag::attribute_name, name));
    }
    return request(Operation::get_attributes, std::move(p));
}

SecureBuffer locate_request(const LocateFilter& filter, std::uint32_t max_items, std::uint32_t offset)
{
    std::vector<Item> p;
    p.push_back(Item::integer(tag::maximum_items, static_cast<std::int32_t>(max_items)));
    if (offset != 0) {
        p.push_back(Item::integer(tag::offset_items, static_cast<std::int32_t>(offset)));
    }
    p.push_back(attribute(attribute_name::object_type, Item::enumeration(0, kObjectTypeSymmetricKey)));
    if (filter.name) {
        p.push_back(name_attribute(*filter.name));
    }
    if (filter.state) {
        p.push_back(attribute(attribute_name::state, Item::enumeration(0, static_cast<std::uint32_t>(*filter.state))));
    }
    return request(Operation::locate, std::move(p));
}

SecureBuffer create_request(std::string_view name)
{
    std::vector<Item> attributes;
    attributes.push_back(attribute(attribute_name::algorithm, Item::enumeration(0, kAlgorithmAes)));
    attributes.push_back(attribute(attribute_name::length, Item::integer(0, kKeyBits)));
    attributes.push_back(attribute(attribute_name::usage_mask,
                                   Item::integer(0, static_cast<std::int32_t>(kUsageEncrypt | kUsageDecrypt))));
    attributes.push_back(name_attribute(name));
    std::vector<Item> p;
    p.push_back(Item::enumeration(tag::object_type, kObjectTypeSymmetricKey));
    p.push_back(Item::structure(tag::template_attribute, std::move(attributes)));
    return request(Operation::create, std::move(p));
}

SecureBuffer activate_request(std::string_view uid) { return uid_request(Operation::activate, uid); }

SecureBuffer revoke_request(std::string_view uid)
{
    std::vector<Item> p;
    p.push_back(Item::text(tag::unique_identifier, uid));
    p.push_back(Item::structure(tag::revocation_reason,
                                {Item::enumeration(tag::revocation_reason_code, kRevocationCessationOfOperation)}));
    return request(Operation::revoke, std::move(p));
}

SecureBuffer destroy_request(std::string_view uid) { return uid_request(Operation::destroy, uid); }

Response parse_response(const Item& root, Operation expected)
{
    if (root.tag != tag::response_message || root.type != Type::structure) {
        shape("the message is " + tag_hex(root.tag) + ", not a Response Message");
    }
    const Item& header = root.get(tag::response_header, Type::structure);
    const Item& version = header.get(tag::protocol_version, Type::structure);
    const std::int64_t major = version.get(tag::protocol_version_major, Type::integer).number;
    const std::int64_t minor = version.get(tag::protocol_version_minor, Type::integer).number;
    // Servers answer message-level errors (a refused client certificate, a
    // request they cannot parse) with version 1.0: any 1.x is read.
    if (major != kMajor || minor < 0) {
        shape("protocol version " + std::to_string(major) + "." + std::to_string(minor) +
              " (diskcrypt speaks KMIP 1.4)");
    }
    const std::int64_t count = header.get(tag::batch_count, Type::integer).number;
    const auto items = root.find_all(tag::batch_item);
    if (count != 1 || items.size() != 1) {
        shape(std::to_string(items.size()) + " batch items (batch count " + std::to_string(count) +
              "); one was asked for");
    }
    const Item& batch = *items.front();
    if (batch.type != Type::structure) {
        shape("the batch item is not a structure");
    }
    Response r;
    if (const Item* op = batch.get_optional(tag::operation, Type::enumeration)) {
        if (op->as_enum() != static_cast<std::uint32_t>(expected)) {
            shape("an answer to operation " + std::to_string(op->as_enum()) + ", not to " +
                  std::string(operation_name(expected)));
        }
    }
    r.operation = expected;
    const std::uint32_t status = batch.get(tag::result_status, Type::enumeration).as_enum();
    if (status > static_cast<std::uint32_t>(ResultStatus::operation_undone)) {
        shape("result status " + std::to_string(status));
    }
    r.status = static_cast<ResultStatus>(status);
    if (const Item* reason = batch.get_optional(tag::result_reason, Type::enumeration)) {
        r.reason = reason->as_enum();
    }
    if (const Item* message = batch.get_optional(tag::result_message, Type::text)) {
        r.message = printable_text(*message, kMaxMessageText);
    }
    r.payload = batch.get_optional(tag::response_payload, Type::structure);
    if (r.status == ResultStatus::success && r.payload == nullptr) {
        shape("a successful " + std::string(operation_name(expected)) + " without a payload");
    }
    return r;
}

EncryptResult parse_encrypt(const Response& r)
{
    EncryptResult out;
    out.data = r.payload->get(tag::data, Type::bytes).value;
    if (const Item* iv = r.payload->get_optional(tag::iv_counter_nonce, Type::bytes)) {
        out.iv = iv->value;
    }
    out.tag = r.payload->get(tag::authenticated_encryption_tag, Type::bytes).value;
    return out;
}

DecryptResult parse_decrypt(const Response& r) { return {r.payload->get(tag::data, Type::bytes).value}; }

Attributes parse_get_attributes(const Response& r)
{
    Attributes a;
    for (const Item* attr : r.payload->find_all(tag::attribute)) {
        if (attr->type != Type::structure) {
            shape("an Attribute that is not a structure");
        }
        const std::string_view name = attr->get(tag::attribute_name, Type::text).as_text();
        const Item* value = attr->find(tag::attribute_value);
        if (value == nullptr) {
            shape("attribute without a value");
        }
        const auto expect = [&](Type t) {
            if (value->type != t) {
                shape("attribute '" + printable(name, 64) + "' is a " + std::string(type_name(value->type)));
            }
        };
        if (name == "State") {
            expect(Type::enumeration);
            const std::uint32_t s = value->as_enum();
            a.state = (s >= 1 && s <= 6) ? static_cast<KeyState>(s) : KeyState::unknown;
        } else if (name == "Cryptographic Algorithm") {
            expect(Type::enumeration);
            a.algorithm = value->as_enum();
        } else if (name == "Cryptographic Length") {
            expect(Type::integer);
            a.length = static_cast<std::int32_t>(value->number);
        } else if (name == "Cryptographic Usage Mask") {
            expect(Type::integer);
            a.usage_mask = static_cast<std::int32_t>(value->number);
        } else if (name == "Initial Date") {
            expect(Type::date_time);
            a.initial_date = value->number;
        } else if (name == "Name") {
            expect(Type::structure);
            a.names.push_back(printable_text(value->get(tag::name_value, Type::text), kMaxUid));
        }
    }
    return a;
}

std::vector<std::string> parse_locate(const Response& r)
{
    std::vector<std::string> out;
    for (const Item* uid : r.payload->find_all(tag::unique_identifier)) {
        out.push_back(unique_identifier(*uid));
    }
    return out;
}

std::string parse_create(const Response& r)
{
    const Item& type = only(r, tag::object_type, "Object Type");
    if (type.type != Type::enumeration) {
        shape("an Object Type that is a " + std::string(type_name(type.type)));
    }
    if (type.as_enum() != kObjectTypeSymmetricKey) {
        shape("a created object of type " + std::to_string(type.as_enum()) + ", not a Symmetric Key");
    }
    return unique_identifier(only(r, tag::unique_identifier, "Unique Identifier"));
}

void parse_unique_identifier(const Response& r, std::string_view uid)
{
    const std::string got = unique_identifier(only(r, tag::unique_identifier, "Unique Identifier"));
    if (got != uid) {
        shape("the answer to " + std::string(operation_name(r.operation)) + " names object " + got + ", not " +
              printable(uid, kMaxUid));
    }
}

}  // namespace diskcrypt::kms::kmip
