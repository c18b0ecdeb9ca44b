// The KMIP 1.4 messages diskcrypt uses, built on the TTLV codec: one
// operation per request (batch count 1).
//
//   Encrypt / Decrypt   AES-GCM with a client-chosen 12-byte IV, the binding
//                       associated data and a 16-byte tag (fields that exist
//                       only from KMIP 1.4 on: every request says 1.4)
//   Get Attributes      State, Cryptographic Algorithm, Cryptographic Length,
//                       Cryptographic Usage Mask, Initial Date (or the names
//                       the caller lists, e.g. Name)
//   Locate              Symmetric Keys by Name and/or State, a page at a time
//                       (Maximum Items, Offset Items)
//   Create              an AES-256 Symmetric Key (usage Encrypt|Decrypt) with
//                       a Name
//   Activate            Pre-Active to Active
//   Revoke              reason Cessation of Operation: Active to Deactivated
//   Destroy             by Unique Identifier
//
// Response parsing checks the message shape (the protocol version, one batch
// item, the operation asked for) and types of every field read, and returns
// the result status, reason and message (made printable) without judging
// them: kmip.cpp maps them to errors once.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/kms/kmip/ttlv.hpp"

namespace diskcrypt::kms::kmip {

enum class Operation : std::uint32_t {
    create = 0x01,
    locate = 0x08,
    get_attributes = 0x0B,
    activate = 0x12,
    revoke = 0x13,
    destroy = 0x14,
    encrypt = 0x1F,
    decrypt = 0x20,
};
std::string_view operation_name(Operation op);

enum class ResultStatus : std::uint32_t {
    success = 0,
    operation_failed = 1,
    operation_pending = 2,
    operation_undone = 3,
};

// KMIP 1.4 Result Reason values diskcrypt tells apart.
namespace reason {
inline constexpr std::uint32_t item_not_found = 0x01;
inline constexpr std::uint32_t response_too_large = 0x02;
inline constexpr std::uint32_t authentication_not_successful = 0x03;
inline constexpr std::uint32_t invalid_message = 0x04;
inline constexpr std::uint32_t operation_not_supported = 0x05;
inline constexpr std::uint32_t missing_data = 0x06;
inline constexpr std::uint32_t invalid_field = 0x07;
inline constexpr std::uint32_t feature_not_supported = 0x08;
inline constexpr std::uint32_t cryptographic_failure = 0x0A;
inline constexpr std::uint32_t illegal_operation = 0x0B;
inline constexpr std::uint32_t permission_denied = 0x0C;
inline constexpr std::uint32_t object_archived = 0x0D;
inline constexpr std::uint32_t general_failure = 0x100;
}  // namespace reason
// "Item Not Found (0x1)", or "reason 0x..." for values not named here.
std::string reason_name(std::uint32_t reason);

enum class KeyState : std::uint32_t {
    unknown = 0,
    pre_active = 1,
    active = 2,
    deactivated = 3,
    compromised = 4,
    destroyed = 5,
    destroyed_compromised = 6,
};
std::string_view state_name(KeyState state);

inline constexpr std::uint32_t kAlgorithmAes = 0x03;
inline constexpr std::uint32_t kModeGcm = 0x09;
inline constexpr std::uint32_t kUsageEncrypt = 0x04;
inline constexpr std::uint32_t kUsageDecrypt = 0x08;
inline constexpr std::uint32_t kObjectTypeSymmetricKey = 0x02;
inline constexpr std::uint32_t kNameTypeUninterpretedText = 0x01;
inline constexpr std::uint32_t kRevocationCessationOfOperation = 0x06;
inline constexpr std::int32_t kKeyBits = 256;

// Attribute names diskcrypt asks for (KMIP 1.4, section 3).
namespace attribute_name {
inline constexpr std::string_view state = "State";
inline constexpr std::string_view algorithm = "Cryptographic Algorithm";
inline constexpr std::string_view length = "Cryptographic Length";
inline constexpr std::string_view usage_mask = "Cryptographic Usage Mask";
inline constexpr std::string_view initial_date = "Initial Date";
inline constexpr std::string_view name = "Name";
inline constexpr std::string_view object_type = "Object Type";
}  // namespace attribute_name

// What a Locate matches: Symmetric Keys, with this Name and in this State
// when given (all conditions must hold).
struct LocateFilter {
    std::optional<std::string_view> name;
    std::optional<KeyState> state;
};

// Requests, encoded into locked memory.
SecureBuffer encrypt_request(std::string_view uid, std::span<const std::uint8_t> iv,
                             std::span<const std::uint8_t> plaintext, std::span<const std::uint8_t> ad);
SecureBuffer decrypt_request(std::string_view uid, std::span<const std::uint8_t> iv,
                             std::span<const std::uint8_t> ciphertext, std::span<const std::uint8_t> ad,
                             std::span<const std::uint8_t> tag);
// State, Cryptographic Algorithm, Length, Usage Mask and Initial Date.
SecureBuffer get_attributes_request(std::string_view uid);
// The attributes named (at least one).
SecureBuffer get_attributes_request(std::string_view uid, std::span<const std::string_view> names);
// At most `max_items` identifiers, after skipping `offset` (Offset Items is
// sent only when it is not 0).
SecureBuffer locate_request(const LocateFilter& filter, std::uint32_t max_items, std::uint32_t offset = 0);
// A Symmetric Key: AES, 256 bits, usage mask Encrypt|Decrypt, Name `name`
// (Uninterpreted Text String); the server makes it Pre-Active.
SecureBuffer create_request(std::string_view name);
SecureBuffer activate_request(std::string_view uid);
// Revocation Reason Code Cessation of Operation: Active becomes Deactivated.
SecureBuffer revoke_request(std::string_view uid);
SecureBuffer destroy_request(std::string_view uid);

// A decoded response: the items refer to the message buffer.
struct Response {
    Operation operation = Operation::locate;
    ResultStatus status = ResultStatus::success;
    std::optional<std::uint32_t> reason;
    std::string message;            // printable(); empty when the server sent none
    const Item* payload = nullptr;  // the Response Payload, when the server sent one
};

// Checks the message shape and the operation; DecodeError otherwise.
Response parse_response(const Item& root, Operation expected);

struct EncryptResult {
    std::span<const std::uint8_t> data;
    std::span<const std::uint8_t> iv;  // empty when the server did not return one
    std::span<const std::uint8_t> tag;
};
EncryptResult parse_encrypt(const Response& r);

struct DecryptResult {
    std::span<const std::uint8_t> data;
};
DecryptResult parse_decrypt(const Response& r);

struct Attributes {
    KeyState state = KeyState::unknown;        // also when the server sent none
    std::optional<std::int64_t> initial_date;  // seconds since the epoch
    std::optional<std::uint32_t> algorithm;
    std::optional<std::int32_t> length;
    std::optional<std::int32_t> usage_mask;
    std::vector<std::string> names;  // printable()
};
Attributes parse_get_attributes(const Response& r);

// Unique identifiers, printable(); DecodeError for one that is not a
// non-empty printable ASCII string of at most 128 bytes.
std::vector<std::string> parse_locate(const Response& r);

// Create's answer: exactly one Object Type, which must be Symmetric Key, and
// exactly one Unique Identifier (checked as parse_locate does); returns it.
std::string parse_create(const Response& r);

// The answer to Activate, Revoke or Destroy: exactly one Unique Identifier
// (checked as parse_locate does), which must be `uid`, the object asked about.
void parse_unique_identifier(const Response& r, std::string_view uid);

}  // namespace diskcrypt::kms::kmip
