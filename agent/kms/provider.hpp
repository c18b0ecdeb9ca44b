// The narrow interface every KMS backend implements, and the registry that
// creates providers from the agent's configuration.
//
// One file per backend (agent/kms/pkcs11.cpp, later kmip.cpp, ...) defines a
// Provider subclass and registers a factory for its `type` with
// register_provider_type() from a namespace-scope
// initialiser. The factory parses and validates the backend's
// options when the configuration is loaded (errors carry the config line) and
// must not contact the KMS: the agent starts even when a KMS is down.
//
// Providers convert their library's error codes into diskcrypt::Error once, at
// their boundary (kms_unavailable, kms_auth, kms_key, binding). Secrets cross
// the interface only in SecureBuffers. Access checks (service account roles)
// and audit events belong to the agent around these calls, not to providers.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/names.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {
class ConfigSection;
}

namespace diskcrypt::kms {

// A secret wrapped with AES-256-GCM under a KMS key.
struct WrappedSecret {
    std::string algorithm = "AES-256-GCM";
    std::vector<std::uint8_t> iv;          // 12 bytes
    std::vector<std::uint8_t> ciphertext;  // as long as the secret
    std::vector<std::uint8_t> tag;         // 16 bytes
};

struct KeyDescription {
    std::string provider_type;  // "pkcs11", "kmip"
    std::string key_id;
    std::string version;    // the version a wrap uses now
    std::string algorithm;  // "AES-256"
    bool enabled = false;   // the KMS lets the key be used at all (state "active")
    // The key's life-cycle state as the KMS reports it: "active", or
    // "pre-active", "deactivated", "compromised", "destroyed" (KMIP).
    std::string state = "active";
    bool can_encrypt = false;
    bool can_decrypt = false;
    bool extractable = true;  // the key's value can leave the KMS
    std::string label;        // informational (PKCS#11 CKA_LABEL)
};

// One version of a key, as the KMS reports it (key lifecycle, issue 15).
struct KeyVersion {
    std::string version;  // as written into disk headers
    // "active" (usable), "disabled" (PKCS#11: CKA_ENCRYPT and CKA_DECRYPT
    // false), "encrypt-only"/"decrypt-only" (PKCS#11, set by other tools), or
    // KMIP's "pre-active", "deactivated", "compromised", "destroyed".
    std::string state;
    bool primary = false;      // the version new wraps use
    std::int64_t created = 0;  // seconds since the epoch; 0 when the KMS does not say
};

// A key with all its versions (oldest first); the KMS holds all of it, the
// agent keeps none.
struct KeyInfo {
    std::string key_id;
    std::string algorithm;  // "AES-256", or what the KMS says when it is not
    std::vector<KeyVersion> versions;
};

// A version's state for the revocation check: "active", or why it is not
// (the KMS's state, "destroyed" for a version the KMS no longer has).
using VersionStates = std::map<std::string, std::string, std::less<>>;

class Provider {
public:
    Provider() = default;
    Provider(const Provider&) = delete;
    Provider& operator=(const Provider&) = delete;
    Provider(Provider&&) = delete;
    Provider& operator=(Provider&&) = delete;
    virtual ~Provider() = default;

    // The configured name (part of every key reference on disk) and the type.
    [[nodiscard]] virtual const std::string& name() const = 0;
    [[nodiscard]] virtual std::string_view type() const = 0;

    // Looks the key up and reports what the KMS says about it.
    virtual KeyDescription describe(std::string_view key_id) = 0;

    // Wraps `secret` under the given key version (the one describe() reported,
    // which is also part of `ad`) with AES-256-GCM and `ad` as associated data.
    virtual WrappedSecret wrap(std::string_view key_id, std::string_view version, std::span<const std::uint8_t> secret,
                               std::span<const std::uint8_t> ad) = 0;

    // Unwraps with the given key version and associated data. A failed tag
    // (wrong disk, wrong key, tampering) is Error(binding).
    virtual SecureBuffer unwrap(std::string_view key_id, std::string_view version, const WrappedSecret& wrapped,
                                std::span<const std::uint8_t> ad) = 0;

    // Key lifecycle. The KMS holds all key state; versions are KMS objects
    // found by the provider's documented naming scheme. A provider that cannot
    // do something throws Error(not_supported) saying so (the defaults here).
    //
    // Every key the agent's identity can see, with its versions.
    virtual std::vector<KeyInfo> list_keys();
    // One key with its versions; Error(kms_key) when there is none.
    virtual KeyInfo key_info(std::string_view key_id);
    // A new AES-256 key (version 1, active, not extractable where the KMS can
    // say so); Error(conflict) when the key id exists.
    virtual KeyInfo create_key(std::string_view key_id);
    // A new version that becomes the primary; older versions keep unwrapping.
    virtual KeyInfo rotate_key(std::string_view key_id);
    // Every version stops (disable) or resumes (enable) wrapping and unwrapping.
    virtual KeyInfo disable_key(std::string_view key_id);
    virtual KeyInfo enable_key(std::string_view key_id);
    // Every version, irreversibly.
    virtual void destroy_key(std::string_view key_id);
    // The state of each of `versions` now, with one KMS request per key where
    // the protocol allows (the revocation check). Throws (kms_unavailable,
    // kms_auth, ...) when the KMS cannot say: the caller must never read a
    // failure as a revocation.
    virtual VersionStates version_states(std::string_view key_id, const std::vector<std::string>& versions);
};

// Creates a provider named `name` from its configuration section. The section
// reports unknown or invalid options with their line (Error(config)).
using Factory = std::function<std::unique_ptr<Provider>(const std::string& name, ConfigSection& options)>;

// Registers a type; refuses (Error(internal)) an empty or duplicate type.
bool register_provider_type(const std::string& type, Factory factory);
// Registered type names, sorted.
std::vector<std::string> provider_types();
// Creates a provider; Error(config) if the type is unknown.
std::unique_ptr<Provider> create_provider(const std::string& type, const std::string& name, ConfigSection& options);

}  // namespace diskcrypt::kms
