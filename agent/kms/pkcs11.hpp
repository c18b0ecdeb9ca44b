// The PKCS#11 KMS provider (any HSM with a PKCS#11 module; SoftHSM2 in tests).
//
// Configuration ([providers.NAME] with type = "pkcs11"):
//   module       absolute path of the PKCS#11 module (dlopen'ed)       required
//   token_label  CKA_LABEL of the token (CK_TOKEN_INFO.label)          required
//   pin_file     root-only file holding the user PIN                    one of these
//   pin_credential  systemd credential name holding the user PIN        two
//   iv_source    "host" (default): the agent draws a fresh 12-byte IV;
//                "hsm": the HSM generates it and returns it in CK_GCM_PARAMS.pIv
//                (FIPS-mode HSMs that refuse caller IVs); an IV left all-zero is refused
//   allow_extractable_keys  false (default): refuse to wrap under a key whose
//                value can leave the HSM (CKA_EXTRACTABLE true or CKA_SENSITIVE false)
//   pool_size    sessions kept open to the token, 1-64 (default 4)
//   request_timeout  seconds a request waits for a free session, 1-600
//                (default 30); then Errc::kms_unavailable
//
// Sessions are pooled (agent/kms/pool.hpp): up to pool_size requests run
// their PKCS#11 calls in parallel (the module is initialised with
// CKF_OS_LOCKING_OK), and the token sees one login, not one per operation
// (the PIN is read when a session must log in). When the token drops the
// sessions (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED,
// CKR_USER_NOT_LOGGED_IN, CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT), the pool
// is reset, the slot looked up again and the operation retried once.
//
// Keys are secret key objects found by CKA_ID (exactly one must match), must
// be AES-256 with CKA_ENCRYPT and CKA_DECRYPT, and are used with CKM_AES_GCM
// (12-byte IV, 128-bit tag, the binding AD) via C_Encrypt/C_Decrypt.
//
// Key versions (agent/README.md, "PKCS#11"): version 1 of KEY_ID is the object
// with CKA_ID = KEY_ID (what keys made before versions were), version N >= 2
// the object with CKA_ID = KEY_ID#N (key ids never contain '#'). The primary
// version is the highest present. A key is disabled by setting CKA_ENCRYPT and
// CKA_DECRYPT false on every version, which the HSM enforces. Creating,
// rotating, disabling, enabling and destroying use a read-write session of
// their own; wrap and unwrap use the pooled read-only sessions.
#pragma once

#include <p11-kit/pkcs11.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "agent/error.hpp"

namespace diskcrypt::kms::pkcs11 {

inline constexpr std::string_view kType = "pkcs11";

// The highest key version (versions are canonical decimals, 1..999999).
inline constexpr std::uint32_t kMaxKeyVersion = 999999;
// Finding a key's versions (describe, key_info, create, rotate, ...) and
// list_keys scan the token's secret keys: at most this many.
inline constexpr std::size_t kMaxScannedKeys = 10000;

// The PKCS#11 calls whose failures are mapped.
enum class Call {
    load,
    initialize,
    slots,
    token_info,
    open_session,
    login,
    find_key,
    attributes,
    encrypt,
    decrypt,
    generate_key,    // C_GenerateKey (create, rotate)
    set_attributes,  // C_SetAttributeValue (disable, enable)
    destroy_object,  // C_DestroyObject (destroy)
};

// What a failure concerns, for the message.
struct Context {
    std::string provider;
    std::string module;
    std::string token;
    std::string key_id;
};

// "CKR_PIN_INCORRECT", or "CKR_0x..." for codes without a name here.
std::string ckr_name(CK_RV rv);

// The one place a CK_RV becomes an Error: the class depends on the code and,
// for the ambiguous CKR_GENERAL_ERROR / CKR_FUNCTION_FAILED, on the call
// (in C_Decrypt they mean a failed GCM tag: Errc::binding).
Error map_ck_rv(CK_RV rv, Call call, const Context& ctx);

// A key version as a PKCS#11 object (the naming scheme above).
struct KeyObjectId {
    std::string key_id;
    std::uint32_t version = 1;

    friend bool operator==(const KeyObjectId&, const KeyObjectId&) = default;
};

// The CKA_ID of a version: "KEY_ID" for 1, "KEY_ID#N" for N >= 2.
std::string object_id(std::string_view key_id, std::uint32_t version);

// A version string as headers carry it: a canonical decimal from 1 to
// kMaxKeyVersion (no sign, no leading zero), else nullopt.
std::optional<std::uint32_t> parse_key_version(std::string_view version);

// The key id and version a CKA_ID names, or nullopt for a CKA_ID outside the
// scheme: not a valid key id (validate_key_id), or a suffix that is not '#'
// and a canonical version from 2 up ("k#1", "k#01", "k#0", "k#", "k#2#3").
std::optional<KeyObjectId> parse_object_id(std::string_view cka_id);

// Counters over every PKCS#11 provider of the process, for tests and
// diagnostics (the Provider interface does not show sessions).
struct SessionStats {
    std::uint64_t opened = 0;       // sessions opened (C_OpenSession)
    std::uint64_t logins = 0;       // C_Login calls (sessions not yet in a user state)
    std::uint64_t retries = 0;      // operations retried after the token dropped their session
    std::uint64_t peak_in_use = 0;  // most sessions leased at once
};
// The counts since the previous call, which starts them again from zero
// (peak_in_use from the sessions in use now).
SessionStats take_session_stats();

}  // namespace diskcrypt::kms::pkcs11
