// Error codes shared by the agent, the protocol and every CLI command.
//
// One table maps each code to its protocol name and its exit status; it is the
// only place these numbers exist (agent/README.md documents it). Code that
// talks to a C library converts that library's errors into an Error once, at
// the boundary, with the object it concerns and what to do about it.
#pragma once

#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

namespace diskcrypt {

enum class Errc {
    internal,           // 1: a bug or an OS failure that is not classified
    usage,              // 2: bad arguments (command line or request)
    agent_unavailable,  // 3: the agent cannot be reached
    permission_denied,  // 4: the caller may not do this
    device,             // 5: device missing, wrong kind, too small, I/O error
    device_not_empty,   // 6: device holds a LUKS header or a filesystem (see --force)
    header,             // 7: no diskcrypt LUKS2 header, or a corrupt token
    kms_unavailable,    // 8: KMS module or token cannot be reached (retry later)
    kms_auth,           // 9: KMS credentials: PIN wrong, locked, missing or insecure
    kms_key,            // 10: key missing, ambiguous, wrong kind or not allowed
    binding,            // 11: header or wrapped secret belongs to another disk or key
    config,             // 12: agent configuration invalid
    protocol,           // 13: malformed message or unsupported protocol version
    not_attached,       // 14: no diskcrypt mapping for this disk id
    busy,               // 15: mapping in use, or another operation on the disk is running
    conflict,           // 16: disk id or device already used by another mapping
    kernel,             // 17: device-mapper, the diskcrypt target or the keyring refused
    access_denied,      // 18: the access policy denies a subject a permission on a key or service account
    incomplete,         // 19: the disk is an interrupted copy or import (attach refuses it; re-run resumes)
    cancelled,          // 20: a copy was cancelled: the caller hung up, or the agent is stopping
    not_supported,      // 21: refused by design or by the host: decrypting in place; recovery disabled
};

struct ErrcInfo {
    Errc code;
    std::string_view name;  // protocol name, e.g. "kms-key"
    int exit_status;
    std::string_view summary;
};

// The table, in exit-status order.
std::span<const ErrcInfo> errc_table();
const ErrcInfo& errc_info(Errc code);
std::string_view errc_name(Errc code);
int exit_status(Errc code);
std::optional<Errc> errc_from_name(std::string_view name);

// Every failure that reaches a user: a code, a message that names the object
// concerned, and an optional hint saying what to do.
class Error : public std::runtime_error {
public:
    Error(Errc code, const std::string& message, std::string hint = {});

    [[nodiscard]] Errc code() const { return code_; }
    [[nodiscard]] const std::string& hint() const { return hint_; }

private:
    Errc code_;
    std::string hint_;
};

// "what: strerror(errnum)".
std::string errno_text(std::string_view what, int errnum);

}  // namespace diskcrypt
