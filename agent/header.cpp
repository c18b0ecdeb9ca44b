#include "agent/header.hpp"

#include <libcryptsetup.h>

#include <cerrno>
#include <cstring>

#include "agent/error.hpp"

namespace diskcrypt {

namespace {

constexpr int kMaxTokens = 32;

}  // namespace

CryptDevice open_luks2(const std::string& device)
{
    crypt_device* raw = nullptr;
    int r = crypt_init(&raw, device.c_str());
    CryptDevice cd(raw);
    if (r < 0) {
        throw Error(Errc::device, errno_text("cannot open device " + device, -r));
    }
    r = crypt_load(cd.get(), CRYPT_LUKS2, nullptr);
    if (r < 0) {
        if (crypt_load(cd.get(), CRYPT_LUKS1, nullptr) == 0) {
            throw Error(Errc::header, "device " + device + " holds a LUKS1 header, not a diskcrypt LUKS2 header");
        }
        throw Error(Errc::header,
                    "device " + device + " holds no valid LUKS2 header" +
                        (r == -EINVAL ? std::string() : " (" + std::string(std::strerror(-r)) + ")"),
                    "check the device path; a damaged header can be restored from a header backup");
    }
    return cd;
}

DiskHeader read_header(crypt_device* cd, const std::string& device)
{
    DiskHeader h;
    h.device = device;
    const char* uuid = crypt_get_uuid(cd);
    h.luks_uuid = uuid != nullptr ? uuid : "";
    const char* subsystem = crypt_get_subsystem(cd);
    if (subsystem == nullptr || kSubsystem != subsystem) {
        throw Error(Errc::header,
                    "device " + device + " holds a LUKS2 volume (UUID " + h.luks_uuid +
                        ") that is not a diskcrypt disk (subsystem '" + (subsystem != nullptr ? subsystem : "") + "')",
                    "diskcrypt opens only volumes it formatted");
    }
    int found = 0;
    for (int id = 0; id < kMaxTokens; ++id) {
        const char* type = nullptr;
        const crypt_token_info info = crypt_token_status(cd, id, &type);
        if (info == CRYPT_TOKEN_INACTIVE || info == CRYPT_TOKEN_INVALID || type == nullptr || kTokenType != type) {
            continue;
        }
        ++found;
        h.token_id = id;
    }
    if (found == 0) {
        throw Error(Errc::header,
                    "device " + device + " (LUKS2 UUID " + h.luks_uuid +
                        ") has no diskcrypt-kms token: its format did not complete or the token was removed",
                    "if the disk holds no data, format it again with --force; otherwise restore a header backup");
    }
    if (found > 1) {
        throw Error(Errc::header,
                    "device " + device + " has " + std::to_string(found) +
                        " diskcrypt-kms tokens; exactly one is "
                        "expected",
                    "restore a header backup");
    }
    const char* json = nullptr;
    if (crypt_token_json_get(cd, h.token_id, &json) < 0 || json == nullptr) {
        throw Error(Errc::header, "device " + device + ": cannot read token " + std::to_string(h.token_id));
    }
    try {
        h.token = decode_token(json);
    } catch (const Error& e) {
        throw Error(Errc::header, "device " + device + ": token " + std::to_string(h.token_id) + ": " + e.what(),
                    e.hint());
    }
    const crypt_keyslot_info ks = crypt_keyslot_status(cd, h.token.keyslot);
    if (ks != CRYPT_SLOT_ACTIVE && ks != CRYPT_SLOT_ACTIVE_LAST) {
        throw Error(Errc::header,
                    "device " + device + ": the diskcrypt-kms token names keyslot " + std::to_string(h.token.keyslot) +
                        ", which is not in use",
                    "restore a header backup");
    }
    h.data_offset = crypt_get_data_offset(cd) * 512U;
    h.sector_size = static_cast<unsigned>(crypt_get_sector_size(cd));
    const char* cipher = crypt_get_cipher(cd);
    const char* mode = crypt_get_cipher_mode(cd);
    h.cipher = std::string(cipher != nullptr ? cipher : "") + "-" + (mode != nullptr ? mode : "");
    h.volume_key_bytes = crypt_get_volume_key_size(cd);
    h.iv_offset = crypt_get_iv_offset(cd);
    std::uint32_t flags = 0;
    if (crypt_persistent_flags_get(cd, CRYPT_FLAGS_ACTIVATION, &flags) == 0) {
        h.allow_discards = (flags & CRYPT_ACTIVATE_ALLOW_DISCARDS) != 0;
    }
    return h;
}

}  // namespace diskcrypt
