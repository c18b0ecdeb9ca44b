#include "agent/error.hpp"

#include <array>
#include <cstring>
#include <utility>

namespace diskcrypt {

namespace {

constexpr std::array<ErrcInfo, 21> kTable{{
    {Errc::internal, "internal", 1, "unexpected failure (a bug, or an unclassified system error)"},
    {Errc::usage, "usage", 2, "bad arguments"},
    {Errc::agent_unavailable, "agent-unavailable", 3, "the agent is not running or does not answer"},
    {Errc::permission_denied, "permission-denied", 4, "the caller may not do this"},
    {Errc::device, "device", 5, "device missing, of the wrong kind, too small, or failing"},
    {Errc::device_not_empty, "device-not-empty", 6, "device holds a LUKS header or a filesystem"},
    {Errc::header, "header", 7, "no diskcrypt LUKS2 header, or a corrupt token"},
    {Errc::kms_unavailable, "kms-unavailable", 8, "KMS module or token cannot be reached"},
    {Errc::kms_auth, "kms-auth", 9, "KMS credentials rejected, locked, missing or insecure"},
    {Errc::kms_key, "kms-key", 10, "KMS key missing, ambiguous, of the wrong kind or not allowed"},
    {Errc::binding, "binding", 11, "header or wrapped secret belongs to another disk or key"},
    {Errc::config, "config", 12, "agent configuration invalid"},
    {Errc::protocol, "protocol", 13, "malformed message or unsupported protocol version"},
    {Errc::not_attached, "not-attached", 14, "the disk is not attached on this host"},
    {Errc::busy, "busy", 15, "the mapping is in use, or another operation on the disk is running"},
    {Errc::conflict, "conflict", 16, "disk id or device already used by another mapping"},
    {Errc::kernel, "kernel", 17, "device-mapper, the diskcrypt target or the kernel keyring refused"},
    {Errc::access_denied, "access-denied", 18,
     "the access policy denies a subject a permission on a KMS key or a service account"},
    {Errc::incomplete, "incomplete", 19, "the disk is an interrupted copy or import; run the operation again"},
    {Errc::cancelled, "cancelled", 20, "the operation was cancelled (by the caller or an agent stop)"},
    {Errc::not_supported, "not-supported", 21,
     "refused by design or by the host (decrypting in place; recovery disabled)"},
}};

}  // namespace

std::span<const ErrcInfo> errc_table() { return kTable; }

const ErrcInfo& errc_info(Errc code)
{
    for (const auto& info : kTable) {
        if (info.code == code) {
            return info;
        }
    }
    return kTable.front();
}

std::string_view errc_name(Errc code) { return errc_info(code).name; }

int exit_status(Errc code) { return errc_info(code).exit_status; }

std::optional<Errc> errc_from_name(std::string_view name)
{
    for (const auto& info : kTable) {
        if (info.name == name) {
            return info.code;
        }
    }
    return std::nullopt;
}

Error::Error(Errc code, const std::string& message, std::string hint)
    : std::runtime_error(message), code_(code), hint_(std::move(hint))
{
}

std::string errno_text(std::string_view what, int errnum)
{
    std::array<char, 128> buf{};
    // GNU strerror_r returns the message (which may or may not live in buf).
    const char* text = strerror_r(errnum, buf.data(), buf.size());
    return std::string(what) + ": " + text;
}

}  // namespace diskcrypt
