// The LUKS2 token of type "diskcrypt-kms", schema version 1.
//
// It holds the keyslot secret wrapped by a KMS key, the key reference, and
// metadata (agent/README.md, "Token schema", describes every field and says
// which are authoritative). decode_token() is strict: every required field,
// exact types, sizes, canonical base64, known version, no unknown or
// duplicate fields, at most kMaxTokenBytes of JSON. Failures are
// Error(header) naming the field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "agent/kms/provider.hpp"
#include "agent/names.hpp"

namespace diskcrypt {

inline constexpr std::string_view kTokenType = "diskcrypt-kms";
inline constexpr int kTokenVersion = 1;
inline constexpr std::size_t kMaxTokenBytes = 4096;
inline constexpr std::size_t kSecretBytes = 32;

// What a header describes (`disk.kind`; absent in the JSON means a disk).
// Only a disk is ever attached; snapshots and images are sources of copies.
enum class ResourceKind { disk, snapshot, image };
std::string_view kind_name(ResourceKind kind);
std::optional<ResourceKind> kind_from_name(std::string_view name);

// Where a copy came from (`disk.origin`): the source's kind, id and LUKS2
// UUID. Informational (lineage, audit), and the key of a resumed copy.
struct Origin {
    ResourceKind kind = ResourceKind::disk;
    std::string id;
    std::string luks_uuid;
};

// A copy that has not finished (`incomplete`): which operation, how many
// bytes of the data area are known to be written (and flushed), of how many.
// attach and verify refuse such a header; re-running the operation resumes.
struct Incomplete {
    std::string operation;  // "copy" or "import"
    std::uint64_t done = 0;
    std::uint64_t total = 0;
};

struct Token {
    int keyslot = 0;
    KeyRef key;                  // authoritative (with the caller's disk id, it forms the AD)
    std::string provider_type;   // authoritative: must match the configured provider's type
    unsigned ad_version = 1;     // authoritative
    kms::WrappedSecret wrapped;  // authoritative
    std::string disk_id;         // checked against the caller's disk id (clear message); never used for the AD
    std::string disk_type;       // informational
    std::string lineage_id;      // informational (audit)
    std::optional<std::string> service_account;  // informational: the disk's at format; attach takes the caller's
    std::string created;                         // informational, RFC 3339 UTC
    ResourceKind kind = ResourceKind::disk;      // checked: attach takes only a disk
    std::optional<Origin> origin;                // informational (lineage)
    std::optional<Incomplete> incomplete;        // checked: attach and verify refuse it
};

std::string encode_token(const Token& token);
Token decode_token(std::string_view text);

// JSON from a header may hold any bytes (libcryptsetup does not check UTF-8).
// ascii_json() writes every byte >= 0x80 as the escape \u00XX, so the text
// parses whatever it holds (inside strings; elsewhere it is a syntax error in
// either form), and raw_bytes() turns a string parsed from it back into the
// header's bytes (code points below 0x100 to one byte each), for printable().
std::string ascii_json(std::string_view text);
std::string raw_bytes(std::string_view utf8);

// Current UTC time as "YYYY-MM-DDTHH:MM:SSZ".
std::string utc_timestamp();

}  // namespace diskcrypt
