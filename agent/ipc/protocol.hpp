// The agent's protocol, version 1 (agent/README.md, "Protocol").
//
// Transport: a Unix SOCK_SEQPACKET socket; each message is one JSON object in
// one packet of at most kMaxMessage bytes. A client sends a request and reads
// one response; it may send further requests on the same connection.
//
//   request  {"protocol": 1, "op": "format", "args": {...}}
//   success  {"protocol": 1, "ok": true, "result": {...}}
//   failure  {"protocol": 1, "ok": false,
//             "error": {"code": "kms-key", "exit": 10, "message": "...", "hint": "..."}}
//
// A long operation (copy) may send progress messages before its response:
//
//   progress {"protocol": 1, "progress": {"operation": "copy", "done": ..., "total": ..., ...}}
//
// They are best effort (dropped when the client does not read). A client
// that closes its connection during an operation cancels it.
//
// Parsing is strict: unknown ops, unknown or duplicate arguments and wrong
// types are refused with Error(protocol); argument values are checked by the
// operation itself (Error(usage)). Every message this side writes is dumped
// with dump_json(), which cannot throw on bad text; messages that quote what a
// peer sent quote it through printable() (agent/text.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "agent/error.hpp"

namespace diskcrypt::proto {

inline constexpr int kVersion = 1;
inline constexpr std::size_t kMaxMessage = 65536;
// Where the agent listens unless its configuration says otherwise, and where
// the CLI and the cryptsetup token plugin look.
inline constexpr std::string_view kDefaultSocketPath = "/run/diskcrypt/agent.sock";
// What the disks of one `list` page may take at most (their JSON text): well
// under kMaxMessage, so a page and its envelope always fit in one message.
inline constexpr std::size_t kListPageBudget = std::size_t{48} * 1024;

// j as compact JSON text; invalid UTF-8 in a string becomes U+FFFD instead of
// an exception (every string should have gone through printable() already;
// this is the last line of defence).
std::string dump_json(const nlohmann::json& j, int indent = -1);

struct Request {
    std::string op;
    nlohmann::json args = nlohmann::json::object();
};

// Validates the envelope and the op's argument names and types.
Request parse_request(std::string_view text);
std::string encode_request(const std::string& op, const nlohmann::json& args);

// NOLINTNEXTLINE(bugprone-exception-escape): nlohmann::json's noexcept move is analysed as throwing
struct Response {
    bool ok = false;
    nlohmann::json result;  // when ok
    Errc code = Errc::internal;
    std::string message;
    std::string hint;
    std::optional<nlohmann::json> progress;  // a progress message: not the response yet
};

std::string encode_result(const nlohmann::json& result);
std::string encode_error(const Error& error);
std::string encode_progress(const nlohmann::json& progress);
// Validates a response; Error(protocol) if it is malformed.
Response parse_response(std::string_view text);

// The response to "recover": its JSON text, then (when ok) a NUL byte and
// the secret, as many bytes as the result's "passphrase_bytes" says (1 to
// 1024), which `secret` is set to (pointing into `message`). Error(protocol)
// if the parts do not agree.
Response parse_recover_response(std::span<const std::uint8_t> message, std::span<const std::uint8_t>& secret);

// Arguments of "format".
struct FormatArgs {
    std::string device;  // absolute path
    std::string disk_id;
    std::string type;
    std::optional<std::string> key;       // PROVIDER:KEY_ID; the configured default_key if absent
    std::string service_account;          // the disk's: it will need decrypt on the key to attach
    std::string user;                     // the acting user the control plane asserts
    std::optional<std::string> lineage;   // defaults to disk_id
    std::optional<unsigned> sector_size;  // defaults to the type's
    bool force = false;
};
FormatArgs format_args(const nlohmann::json& args);
nlohmann::json to_json(const FormatArgs& a);

// Arguments of "verify": attach's claims, the disk type optional (checked
// against the header when given).
struct VerifyArgs {
    std::string device;
    std::string disk_id;
    std::optional<std::string> type;  // the disk type the control plane records
    std::string key;                  // PROVIDER:KEY_ID the control plane records for the disk
    std::string service_account;      // the disk's
};
VerifyArgs verify_args(const nlohmann::json& args);
nlohmann::json to_json(const VerifyArgs& a);

// Arguments of "attach": the caller (the control plane) names the disk, its
// type, its key and its service account; none is taken from the header (the
// header must agree on the disk id, the type and the key). Discards are the
// caller's request (allowed only where the disk type's profile permits them),
// never the header's.
struct AttachArgs {
    std::string device;  // absolute path of a block device
    std::string disk_id;
    std::string type;
    std::string key;  // PROVIDER:KEY_ID
    std::string service_account;
    bool allow_discards = false;
};
AttachArgs attach_args(const nlohmann::json& args);
nlohmann::json to_json(const AttachArgs& a);

// Arguments of "copy": an encrypted disk, snapshot or image from an
// encrypted source (agent/ops/copy.hpp). The source's claims as attach takes
// them (device, disk id, key, its service account); the copy's device, id,
// kind ("disk", "snapshot", "image"), type (a disk's; a snapshot or image
// keeps the source's) and service account (the source's by default).
struct CopyArgs {
    std::string device;
    std::string disk_id;
    std::string key;
    std::string service_account;
    std::string user;
    std::string target_device;
    std::string target_id;
    std::string target_kind;
    std::optional<std::string> target_type;
    std::optional<std::string> target_service_account;
    bool force = false;
};
CopyArgs copy_args(const nlohmann::json& args);
nlohmann::json to_json(const CopyArgs& a);

// Arguments of "rewrap": the disk's claims (as verify), the acting user, and
// the key to move to (the same key's current version if absent).
struct RewrapArgs {
    std::string device;
    std::string disk_id;
    std::optional<std::string> type;
    std::string key;
    std::string service_account;
    std::string user;
    std::optional<std::string> to_key;
};
RewrapArgs rewrap_args(const nlohmann::json& args);
nlohmann::json to_json(const RewrapArgs& a);

// Arguments of "key": the action (create, list, rotate, disable, enable,
// destroy), the key (all but list), the acting user, a provider to list, and
// destroy's force.
struct KeyArgs {
    std::string action;
    std::optional<std::string> key;
    std::optional<std::string> provider;
    std::string user;
    bool force = false;
};
KeyArgs key_args(const nlohmann::json& args);
nlohmann::json to_json(const KeyArgs& a);

// Arguments of "audit": filters (disk id, key as PROVIDER:KEY_ID, since: a
// time as audit::parse_since reads it) and the cursor of the previous page.
struct AuditArgs {
    std::optional<std::string> disk_id;
    std::optional<std::string> key;
    std::optional<std::string> since;
    std::optional<std::string> after;
};
AuditArgs audit_args(const nlohmann::json& args);
nlohmann::json to_json(const AuditArgs& a);

// Arguments of "import": format's, and the unencrypted source (a raw image
// file or block device) streamed into the new disk.
struct ImportArgs {
    FormatArgs format;
    std::string source;
};
ImportArgs import_args(const nlohmann::json& args);
nlohmann::json to_json(const ImportArgs& a);

// Arguments of "decrypt", which is always refused (encryption cannot be
// disabled); it exists so that the refusal is explicit and audited.
struct DecryptArgs {
    std::optional<std::string> device;
    std::string disk_id;
};
DecryptArgs decrypt_args(const nlohmann::json& args);
nlohmann::json to_json(const DecryptArgs& a);

// Arguments of "recover" (the cryptsetup token plugin's request): the
// device whose keyslot secret is asked for. Its response carries the secret
// after the JSON text and a NUL byte (RecoverResult, agent/ops/recover.hpp).
struct RecoverArgs {
    std::string device;
};
RecoverArgs recover_args(const nlohmann::json& args);
nlohmann::json to_json(const RecoverArgs& a);

// Arguments of "auto-attach" and "auto-detach" (udev's
// diskcrypt-attach@MAJ:MIN.service): the block device by its number, as
// udev names it; the claims come from the host's provisioning entry
// (agent/ops/auto_attach.hpp), never from the caller or the header.
struct AutoDeviceArgs {
    std::string devno;  // "MAJOR:MINOR"
};
AutoDeviceArgs auto_device_args(const nlohmann::json& args);
nlohmann::json to_json(const AutoDeviceArgs& a);

// Arguments of "detach".
struct DetachArgs {
    std::string disk_id;
    bool force = false;
};
DetachArgs detach_args(const nlohmann::json& args);
nlohmann::json to_json(const DetachArgs& a);

// Arguments of "list": a page of the attached disks, by disk id, those after
// `after` (the `next` of the previous page); the first page without it.
struct ListArgs {
    std::optional<std::string> after;
};
ListArgs list_args(const nlohmann::json& args);
nlohmann::json to_json(const ListArgs& a);

// Arguments of "status": without a disk id, the agent; with one, that disk.
struct StatusArgs {
    std::optional<std::string> disk_id;
};
StatusArgs status_args(const nlohmann::json& args);
nlohmann::json to_json(const StatusArgs& a);

}  // namespace diskcrypt::proto
