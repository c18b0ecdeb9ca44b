#include "agent/kms/pkcs11.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "agent/config.hpp"
#include "agent/credentials.hpp"
#include "agent/encoding.hpp"
#include "agent/kms/pool.hpp"
#include "agent/kms/provider.hpp"
#include "agent/log.hpp"
#include "agent/names.hpp"
#include "agent/raii.hpp"
#include "agent/text.hpp"

namespace diskcrypt::kms::pkcs11 {

namespace {

constexpr std::size_t kIvBytes = 12;
constexpr std::size_t kTagBytes = 16;
constexpr std::size_t kKeyBytes = 32;
constexpr std::size_t kMaxPin = 256;
constexpr unsigned kDefaultPoolSize = 4;
constexpr unsigned kMaxPoolSize = 64;
constexpr unsigned kDefaultRequestTimeout = 30;  // seconds
constexpr unsigned kMaxRequestTimeout = 600;

struct CkrName {
    CK_RV rv;
    std::string_view name;
};

constexpr std::array<CkrName, 48> kCkrNames{{
    {CKR_OK, "CKR_OK"},
    {CKR_HOST_MEMORY, "CKR_HOST_MEMORY"},
    {CKR_SLOT_ID_INVALID, "CKR_SLOT_ID_INVALID"},
    {CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR"},
    {CKR_FUNCTION_FAILED, "CKR_FUNCTION_FAILED"},
    {CKR_ARGUMENTS_BAD, "CKR_ARGUMENTS_BAD"},
    {CKR_CANT_LOCK, "CKR_CANT_LOCK"},
    {CKR_ATTRIBUTE_SENSITIVE, "CKR_ATTRIBUTE_SENSITIVE"},
    {CKR_ATTRIBUTE_TYPE_INVALID, "CKR_ATTRIBUTE_TYPE_INVALID"},
    {CKR_DEVICE_ERROR, "CKR_DEVICE_ERROR"},
    {CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY"},
    {CKR_DEVICE_REMOVED, "CKR_DEVICE_REMOVED"},
    {CKR_ENCRYPTED_DATA_INVALID, "CKR_ENCRYPTED_DATA_INVALID"},
    {CKR_ENCRYPTED_DATA_LEN_RANGE, "CKR_ENCRYPTED_DATA_LEN_RANGE"},
    {CKR_FUNCTION_NOT_SUPPORTED, "CKR_FUNCTION_NOT_SUPPORTED"},
    {CKR_KEY_HANDLE_INVALID, "CKR_KEY_HANDLE_INVALID"},
    {CKR_KEY_SIZE_RANGE, "CKR_KEY_SIZE_RANGE"},
    {CKR_KEY_TYPE_INCONSISTENT, "CKR_KEY_TYPE_INCONSISTENT"},
    {CKR_KEY_FUNCTION_NOT_PERMITTED, "CKR_KEY_FUNCTION_NOT_PERMITTED"},
    {CKR_KEY_UNEXTRACTABLE, "CKR_KEY_UNEXTRACTABLE"},
    {CKR_MECHANISM_INVALID, "CKR_MECHANISM_INVALID"},
    {CKR_MECHANISM_PARAM_INVALID, "CKR_MECHANISM_PARAM_INVALID"},
    {CKR_OPERATION_ACTIVE, "CKR_OPERATION_ACTIVE"},
    {CKR_PIN_INCORRECT, "CKR_PIN_INCORRECT"},
    {CKR_PIN_INVALID, "CKR_PIN_INVALID"},
    {CKR_PIN_LEN_RANGE, "CKR_PIN_LEN_RANGE"},
    {CKR_PIN_EXPIRED, "CKR_PIN_EXPIRED"},
    {CKR_PIN_LOCKED, "CKR_PIN_LOCKED"},
    {CKR_SESSION_CLOSED, "CKR_SESSION_CLOSED"},
    {CKR_SESSION_COUNT, "CKR_SESSION_COUNT"},
    {CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID"},
    {CKR_TOKEN_NOT_PRESENT, "CKR_TOKEN_NOT_PRESENT"},
    {CKR_TOKEN_NOT_RECOGNIZED, "CKR_TOKEN_NOT_RECOGNIZED"},
    {CKR_USER_NOT_LOGGED_IN, "CKR_USER_NOT_LOGGED_IN"},
    {CKR_USER_PIN_NOT_INITIALIZED, "CKR_USER_PIN_NOT_INITIALIZED"},
    {CKR_USER_TYPE_INVALID, "CKR_USER_TYPE_INVALID"},
    {CKR_BUFFER_TOO_SMALL, "CKR_BUFFER_TOO_SMALL"},
    {CKR_CRYPTOKI_NOT_INITIALIZED, "CKR_CRYPTOKI_NOT_INITIALIZED"},
    {CKR_CRYPTOKI_ALREADY_INITIALIZED, "CKR_CRYPTOKI_ALREADY_INITIALIZED"},
    {CKR_DATA_LEN_RANGE, "CKR_DATA_LEN_RANGE"},
    {CKR_ATTRIBUTE_READ_ONLY, "CKR_ATTRIBUTE_READ_ONLY"},
    {CKR_ATTRIBUTE_VALUE_INVALID, "CKR_ATTRIBUTE_VALUE_INVALID"},
    {CKR_ACTION_PROHIBITED, "CKR_ACTION_PROHIBITED"},
    {CKR_OBJECT_HANDLE_INVALID, "CKR_OBJECT_HANDLE_INVALID"},
    {CKR_SESSION_READ_ONLY, "CKR_SESSION_READ_ONLY"},
    {CKR_TEMPLATE_INCOMPLETE, "CKR_TEMPLATE_INCOMPLETE"},
    {CKR_TEMPLATE_INCONSISTENT, "CKR_TEMPLATE_INCONSISTENT"},
    {CKR_TOKEN_WRITE_PROTECTED, "CKR_TOKEN_WRITE_PROTECTED"},
}};

std::string where(const Context& ctx) { return "provider '" + ctx.provider + "'"; }

}  // namespace

std::string ckr_name(CK_RV rv)
{
    for (const auto& n : kCkrNames) {
        if (n.rv == rv) {
            return std::string(n.name);
        }
    }
    return "CKR_0x" + hex_ulong(rv);
}

std::string object_id(std::string_view key_id, std::uint32_t version)
{
    std::string id(key_id);
    if (version != 1) {
        id += '#';
        id += std::to_string(version);
    }
    return id;
}

std::optional<std::uint32_t> parse_key_version(std::string_view version)
{
    constexpr std::size_t kMaxDigits = 6;  // kMaxKeyVersion
    if (version.empty() || version.size() > kMaxDigits || version.front() == '0') {
        return std::nullopt;
    }
    std::uint32_t n = 0;
    for (const char c : version) {
        if (c < '0' || c > '9') {
            return std::nullopt;
        }
        n = n * 10 + static_cast<std::uint32_t>(c - '0');
    }
    return n;
}

std::optional<KeyObjectId> parse_object_id(std::string_view cka_id)
{
    KeyObjectId out;
    const std::size_t hash = cka_id.find('#');
    if (hash == std::string_view::npos) {
        out.key_id = std::string(cka_id);
    } else {
        const std::optional<std::uint32_t> version = parse_key_version(cka_id.substr(hash + 1));
        if (!version || *version < 2) {
            return std::nullopt;  // "k#1" is not version 1 (that is "k"), "k#01", "k#2#3" nothing
        }
        out.key_id = std::string(cka_id.substr(0, hash));
        out.version = *version;
    }
    try {
        validate_key_id(out.key_id);  // printable ASCII from its alphabet, 1-128 bytes
    } catch (const Error&) {
        return std::nullopt;
    }
    return out;
}

namespace {

// The failures of the calls that change keys (create, rotate, disable,
// enable, destroy) that mean something else there than in wrap and unwrap.
std::optional<Error> change_error(CK_RV rv, Call call, const Context& ctx)
{
    if (call != Call::generate_key && call != Call::set_attributes && call != Call::destroy_object) {
        return std::nullopt;
    }
    const std::string code = " (" + ckr_name(rv) + ")";
    const std::string token = "token '" + ctx.token + "'";
    const std::string key = "key '" + ctx.key_id + "'";
    switch (rv) {
        case CKR_TOKEN_WRITE_PROTECTED:
        case CKR_SESSION_READ_ONLY:
            return Error(
                Errc::not_supported,
                where(ctx) + ": " + token + " is write-protected: keys cannot be created, changed or destroyed" + code,
                "use a writable token, or change keys with the HSM's own tools");
        case CKR_FUNCTION_NOT_SUPPORTED:
            return Error(Errc::not_supported,
                         where(ctx) + ": the PKCS#11 module cannot " +
                             (call == Call::generate_key     ? "generate keys (C_GenerateKey)"
                              : call == Call::set_attributes ? "change key attributes (C_SetAttributeValue)"
                                                             : "destroy keys (C_DestroyObject)") +
                             code,
                         "change keys with the HSM's own tools");
        case CKR_ATTRIBUTE_READ_ONLY:
        case CKR_ACTION_PROHIBITED:
        case CKR_ATTRIBUTE_TYPE_INVALID:
        case CKR_ATTRIBUTE_VALUE_INVALID:
        case CKR_TEMPLATE_INCOMPLETE:
        case CKR_TEMPLATE_INCONSISTENT:
        case CKR_MECHANISM_INVALID:
        case CKR_MECHANISM_PARAM_INVALID:
        case CKR_KEY_SIZE_RANGE:
            break;
        default:
            return std::nullopt;
    }
    if (call == Call::set_attributes) {
        return Error(
            Errc::kms_key,
            where(ctx) + ": " + token + " refuses to change CKA_ENCRYPT and CKA_DECRYPT of " + key + code,
            "the key is not modifiable (CKA_MODIFIABLE false) or the HSM's policy forbids the change: change it "
            "with the HSM's own tools");
    }
    if (call == Call::destroy_object) {
        return Error(Errc::kms_key, where(ctx) + ": " + token + " refuses to destroy " + key + code,
                     "the key is not destroyable (CKA_DESTROYABLE false) or the HSM's policy forbids it: destroy it "
                     "with the HSM's own tools");
    }
    return Error(Errc::not_supported,
                 where(ctx) + ": " + token + " refuses to generate " + key +
                     " as diskcrypt makes keys (AES-256 with CKM_AES_KEY_GEN, a private token object, sensitive, not "
                     "extractable, encrypt and decrypt only, modifiable)" +
                     code,
                 "create the key with the HSM's own tools (agent/README.md, \"PKCS#11\")");
}

}  // namespace

Error map_ck_rv(CK_RV rv, Call call, const Context& ctx)
{
    if (std::optional<Error> e = change_error(rv, call, ctx)) {
        return *e;
    }
    const std::string code = " (" + ckr_name(rv) + ")";
    const std::string token = "token '" + ctx.token + "'";
    const std::string key = "key '" + ctx.key_id + "' on " + token;
    switch (rv) {
        case CKR_PIN_INCORRECT:
        case CKR_PIN_INVALID:
        case CKR_PIN_LEN_RANGE:
            return {Errc::kms_auth, where(ctx) + ": " + token + " rejected the PIN" + code,
                    "check the configured PIN file or credential; repeated failures can lock the token"};
        case CKR_PIN_LOCKED:
            return {Errc::kms_auth, where(ctx) + ": the user PIN of " + token + " is locked" + code,
                    "the token's security officer must unlock or reset the user PIN"};
        case CKR_PIN_EXPIRED:
            return {Errc::kms_auth, where(ctx) + ": the user PIN of " + token + " has expired" + code,
                    "set a new user PIN on the token and in the PIN file"};
        case CKR_USER_PIN_NOT_INITIALIZED:
        case CKR_USER_NOT_LOGGED_IN:
        case CKR_USER_TYPE_INVALID:
            return {Errc::kms_auth, where(ctx) + ": cannot log in to " + token + code,
                    "initialise the token's user PIN"};
        case CKR_KEY_FUNCTION_NOT_PERMITTED:
            return {Errc::kms_key,
                    where(ctx) + ": " + key + " is not allowed to " + (call == Call::decrypt ? "decrypt" : "encrypt") +
                        code,
                    "the key needs CKA_ENCRYPT and CKA_DECRYPT set to true"};
        case CKR_KEY_HANDLE_INVALID:
        case CKR_KEY_TYPE_INCONSISTENT:
        case CKR_KEY_SIZE_RANGE:
            return {Errc::kms_key, where(ctx) + ": " + key + " cannot be used for AES-256-GCM" + code,
                    "use an AES-256 secret key"};
        case CKR_MECHANISM_INVALID:
        case CKR_MECHANISM_PARAM_INVALID:
            return {Errc::kms_unavailable, where(ctx) + ": " + token + " does not support AES-GCM as used" + code,
                    "diskcrypt needs CKM_AES_GCM with a 12-byte IV and a 128-bit tag; with a FIPS HSM try "
                    "iv_source = \"hsm\""};
        case CKR_ENCRYPTED_DATA_INVALID:
        case CKR_ENCRYPTED_DATA_LEN_RANGE:
        case CKR_GENERAL_ERROR:
        case CKR_FUNCTION_FAILED:
            if (call == Call::decrypt) {
                // SoftHSM and others answer a failed GCM tag with CKR_GENERAL_ERROR.
                return {Errc::binding,
                        where(ctx) + ": " + key + " refused to unwrap the secret" + code +
                            ": the authentication tag does not match, so the wrapped secret was not made for this "
                            "disk id and key, or it was altered",
                        "check the disk id; a header copied from another disk cannot be unwrapped for this one"};
            }
            return {Errc::kms_unavailable, where(ctx) + ": the PKCS#11 module failed" + code,
                    "check the HSM and its logs, then retry"};
        case CKR_TOKEN_NOT_PRESENT:
        case CKR_TOKEN_NOT_RECOGNIZED:
        case CKR_SLOT_ID_INVALID:
        case CKR_DEVICE_REMOVED:
        case CKR_DEVICE_ERROR:
        case CKR_DEVICE_MEMORY:
        case CKR_SESSION_CLOSED:
        case CKR_SESSION_COUNT:
        case CKR_SESSION_HANDLE_INVALID:
        case CKR_CRYPTOKI_NOT_INITIALIZED:
        case CKR_CANT_LOCK:
            return {Errc::kms_unavailable, where(ctx) + ": " + token + " is not available" + code,
                    "check that the HSM is connected and reachable, then retry"};
        case CKR_HOST_MEMORY:
            return {Errc::internal, where(ctx) + ": the PKCS#11 module ran out of memory" + code,
                    "check the agent's memory limits"};
        default:
            return {Errc::kms_unavailable, where(ctx) + ": PKCS#11 call failed" + code,
                    "check the HSM and its logs, then retry"};
    }
}

namespace {

// A loaded and initialised module, shared by every provider that names the
// same file (C_Initialize may run only once per process and module).
class Module {
public:
    explicit Module(const Context& ctx) : path_(ctx.module)
    {
        // RTLD_NODELETE: modules often cannot be unloaded safely (atexit
        // handlers, thread-local state), so the code stays mapped.
        handle_.reset(dlopen(path_.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE));
        if (!handle_) {
            const char* why = dlerror();
            throw Error(
                Errc::kms_unavailable,
                where(ctx) + ": cannot load PKCS#11 module " + path_ + ": " + (why != nullptr ? why : "unknown error"),
                "install the HSM's PKCS#11 library, or fix 'module' in the agent configuration");
        }
        auto* get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle_.get(), "C_GetFunctionList"));  // NOLINT
        if (get_list == nullptr || get_list(&fns_) != CKR_OK || fns_ == nullptr) {
            throw Error(Errc::kms_unavailable,
                        where(ctx) + ": " + path_ + " is not a PKCS#11 module (no C_GetFunctionList)",
                        "fix 'module' in the agent configuration");
        }
        CK_C_INITIALIZE_ARGS args{};
        args.flags = CKF_OS_LOCKING_OK;
        const CK_RV rv = fns_->C_Initialize(&args);
        if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
            owns_init_ = false;
        } else if (rv != CKR_OK) {
            throw map_ck_rv(rv, Call::initialize, ctx);
        }
    }
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;
    Module(Module&&) = delete;
    Module& operator=(Module&&) = delete;
    ~Module()
    {
        if (owns_init_ && fns_ != nullptr) {
            (void)fns_->C_Finalize(nullptr);
        }
    }

    [[nodiscard]] CK_FUNCTION_LIST* fns() const { return fns_; }

private:
    std::string path_;
    DlHandle handle_;
    CK_FUNCTION_LIST* fns_ = nullptr;
    bool owns_init_ = true;
};

std::shared_ptr<Module> acquire_module(const Context& ctx)
{
    static std::mutex mutex;
    static std::map<std::string, std::weak_ptr<Module>> modules;
    const std::lock_guard lock(mutex);
    if (auto m = modules[ctx.module].lock()) {
        return m;
    }
    auto m = std::make_shared<Module>(ctx);
    modules[ctx.module] = m;
    return m;
}

// The counters behind take_session_stats().
struct Counters {
    std::atomic<std::uint64_t> opened{0};
    std::atomic<std::uint64_t> logins{0};
    std::atomic<std::uint64_t> retries{0};
    std::atomic<std::uint64_t> in_use{0};
    std::atomic<std::uint64_t> peak_in_use{0};
};

Counters& counters()
{
    static Counters c;
    return c;
}

// Counts a session as in use while it lives (for the peak statistic).
class InUse {
public:
    InUse()
    {
        Counters& c = counters();
        const std::uint64_t now = c.in_use.fetch_add(1) + 1;
        std::uint64_t peak = c.peak_in_use.load();
        while (now > peak && !c.peak_in_use.compare_exchange_weak(peak, now)) {
        }
    }
    InUse(const InUse&) = delete;
    InUse& operator=(const InUse&) = delete;
    InUse(InUse&&) = delete;
    InUse& operator=(InUse&&) = delete;
    ~InUse() { counters().in_use.fetch_sub(1); }
};

// The codes that say the session (or the whole token) went away: the session
// is dropped, the pool reset, and the operation retried once on a new one.
// CKR_SLOT_ID_INVALID: a cached slot id whose token went away.
bool session_gone(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_USER_NOT_LOGGED_IN ||
           rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_SLOT_ID_INVALID;
}

// The module no longer knows the handle itself (as opposed to a session that
// merely lost its login).
bool handle_gone(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv == CKR_DEVICE_REMOVED ||
           rv == CKR_TOKEN_NOT_PRESENT;
}

// A failed PKCS#11 call inside an operation; becomes map_ck_rv's Error unless
// the operation is retried.
struct CkFailure {
    CK_RV rv;
    Call call;
};

bool user_state(CK_STATE state) { return state == CKS_RO_USER_FUNCTIONS || state == CKS_RW_USER_FUNCTIONS; }

// A pooled session: closed (C_CloseSession) when destroyed, unless forget()
// said the module already dropped it. Modules reuse handle numbers (SoftHSM2
// does), so closing a handle that is gone could close a session opened since.
// operation_active() marks a C_EncryptInit/C_DecryptInit not yet finished by
// C_Encrypt/C_Decrypt: such a session must not go back to the pool.
class Session {
public:
    Session(CK_FUNCTION_LIST* fns, CK_SESSION_HANDLE handle) : fns_(fns), handle_(handle) {}
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    Session(Session&&) = delete;
    Session& operator=(Session&&) = delete;
    ~Session()
    {
        if (handle_ != CK_INVALID_HANDLE) {
            const CK_RV rv = fns_->C_CloseSession(handle_);
            if (rv != CKR_OK) {
                log_debug("C_CloseSession failed (" + ckr_name(rv) + "), ignoring");
            }
        }
    }

    [[nodiscard]] CK_SESSION_HANDLE get() const { return handle_; }
    [[nodiscard]] CK_FUNCTION_LIST* functions() const { return fns_; }
    void forget() { handle_ = CK_INVALID_HANDLE; }

    [[nodiscard]] bool operation_active() const { return operation_active_; }
    void set_operation_active(bool active) { operation_active_ = active; }

private:
    CK_FUNCTION_LIST* fns_;
    CK_SESSION_HANDLE handle_;
    bool operation_active_ = false;
};

// An active C_FindObjectsInit on a session, ended by C_FindObjectsFinal.
class FindOperation {
public:
    explicit FindOperation(const Session& session) : session_(session) {}
    FindOperation(const FindOperation&) = delete;
    FindOperation& operator=(const FindOperation&) = delete;
    FindOperation(FindOperation&&) = delete;
    FindOperation& operator=(FindOperation&&) = delete;
    ~FindOperation() { (void)session_.functions()->C_FindObjectsFinal(session_.get()); }

private:
    const Session& session_;
};

std::string trim_label(const unsigned char* label, std::size_t size)
{
    std::string s(reinterpret_cast<const char*>(label), size);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) {
        s.pop_back();
    }
    return s;
}

struct Settings {
    std::string module;
    std::string token_label;
    std::optional<std::string> pin_file;
    std::optional<std::string> pin_credential;
    bool hsm_iv = false;
    bool allow_extractable = false;
    unsigned pool_size = kDefaultPoolSize;
    unsigned request_timeout = kDefaultRequestTimeout;  // seconds
};

struct KeyAttributes {
    CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
    CK_KEY_TYPE key_type = CKK_GENERIC_SECRET;
    CK_ULONG value_len = 0;
    bool encrypt = false;
    bool decrypt = false;
    bool extractable = true;
    bool sensitive = false;
    std::string label;
};

// CKA_ENCRYPT and CKA_DECRYPT of a key object: its state.
struct UseFlags {
    bool encrypt = false;
    bool decrypt = false;

    friend bool operator==(const UseFlags&, const UseFlags&) = default;
};

constexpr std::string_view kStateActive = "active";
constexpr std::string_view kStateDisabled = "disabled";
constexpr std::string_view kStateDestroyed = "destroyed";
// Two objects with the version's CKA_ID (list_keys only; everything else
// refuses such a version).
constexpr std::string_view kStateAmbiguous = "ambiguous";

std::string p11_state_name(UseFlags flags)
{
    if (flags.encrypt && flags.decrypt) {
        return std::string(kStateActive);
    }
    if (!flags.encrypt && !flags.decrypt) {
        return std::string(kStateDisabled);
    }
    return flags.encrypt ? "encrypt-only" : "decrypt-only";
}

// A key's versions: version -> the objects carrying its CKA_ID (exactly one,
// except where a token holds duplicates).
using VersionObjects = std::map<std::uint32_t, std::vector<CK_OBJECT_HANDLE>>;

// A secret key object whose CKA_ID fits the naming scheme.
struct ScannedKey {
    CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
    KeyObjectId id;
};

// "version 2", "versions 1 and 2", "versions 1, 2 and 3".
std::string p11_versions_text(const std::vector<std::uint32_t>& versions)
{
    std::string out = versions.size() == 1 ? "version " : "versions ";
    for (std::size_t i = 0; i < versions.size(); ++i) {
        if (i > 0) {
            out += i + 1 == versions.size() ? " and " : ", ";
        }
        out += std::to_string(versions[i]);
    }
    return out;
}

// "CKA_ID 'disk-key-01#2' (hex ...)".
std::string p11_cka_id_text(std::string_view cka_id)
{
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(cka_id.data());
    return "CKA_ID '" + std::string(cka_id) + "' (hex " + hex_encode({bytes, cka_id.size()}) + ")";
}

class Pkcs11Provider final : public Provider {
public:
    Pkcs11Provider(std::string name, Settings settings)
        : name_(std::move(name)), settings_(std::move(settings)), pool_(settings_.pool_size)
    {
    }

    [[nodiscard]] const std::string& name() const override { return name_; }
    [[nodiscard]] std::string_view type() const override { return kType; }

    // The primary version (the highest present) and its attributes.
    KeyDescription describe(std::string_view key_id) override
    {
        const Context ctx = checked_context(key_id);
        return with_session(ctx, [&](const Session& session) {
            const VersionObjects versions = find_versions(session, ctx);
            const std::uint32_t primary = versions.rbegin()->first;
            const KeyAttributes a = read_attributes(session, versions.rbegin()->second.front());
            if (!a.encrypt && !a.decrypt) {
                throw disabled_error(ctx, primary);
            }
            KeyDescription d;
            d.provider_type = std::string(kType);
            d.key_id = std::string(key_id);
            d.version = std::to_string(primary);
            d.algorithm = algorithm_name(a);
            d.enabled = true;  // not disabled; may still be allowed only one of encrypt and decrypt
            d.state = p11_state_name({a.encrypt, a.decrypt});
            d.can_encrypt = a.encrypt;
            d.can_decrypt = a.decrypt;
            d.extractable = a.extractable || !a.sensitive;
            d.label = a.label;
            return d;
        });
    }

    WrappedSecret wrap(std::string_view key_id, std::string_view version, std::span<const std::uint8_t> secret,
                       std::span<const std::uint8_t> ad) override
    {
        const Context ctx = checked_context(key_id);
        const std::uint32_t n = require_version(ctx, version);
        return with_session(ctx, [&](Session& session) { return wrap_in(session, ctx, n, secret, ad); });
    }

    SecureBuffer unwrap(std::string_view key_id, std::string_view version, const WrappedSecret& wrapped,
                        std::span<const std::uint8_t> ad) override
    {
        const Context ctx = checked_context(key_id);
        const std::uint32_t n = require_version(ctx, version);
        if (wrapped.algorithm != "AES-256-GCM" || wrapped.iv.size() != kIvBytes || wrapped.tag.size() != kTagBytes ||
            wrapped.ciphertext.empty()) {
            throw Error(Errc::header, where(ctx) +
                                          ": the wrapped secret is not AES-256-GCM with a 12-byte IV and a "
                                          "16-byte tag");
        }
        return with_session(ctx, [&](Session& session) { return unwrap_in(session, ctx, n, wrapped, ad); });
    }

    std::vector<KeyInfo> list_keys() override
    {
        const Context ctx = context("");
        return with_session(ctx, [&](const Session& session) {
            std::map<std::string, VersionObjects> keys;
            for (ScannedKey& k : scan_secret_keys(session, ctx)) {
                keys[std::move(k.id.key_id)][k.id.version].push_back(k.handle);
            }
            std::vector<KeyInfo> out;
            out.reserve(keys.size());
            for (const auto& [key_id, versions] : keys) {
                out.push_back(info_of(session, key_id, versions));
            }
            return out;
        });
    }

    KeyInfo key_info(std::string_view key_id) override
    {
        const Context ctx = checked_context(key_id);
        return with_session(
            ctx, [&](const Session& session) { return info_of(session, ctx.key_id, find_versions(session, ctx)); });
    }

    KeyInfo create_key(std::string_view key_id) override
    {
        const Context ctx = checked_context(key_id);
        const std::lock_guard lock(lifecycle_mutex_);
        return with_rw_session(ctx, [&](const Session& session) {
            VersionObjects versions = scan_versions(session, ctx);
            if (!versions.empty()) {
                std::vector<std::uint32_t> numbers;
                for (const auto& v : versions) {
                    numbers.push_back(v.first);
                }
                throw Error(Errc::conflict,
                            where(ctx) + ": key '" + ctx.key_id + "' exists on token '" + ctx.token + "' (" +
                                p11_versions_text(numbers) + ")",
                            "choose another key id, or rotate this key (diskcrypt key rotate " + ctx.provider + ":" +
                                ctx.key_id + ")");
            }
            versions[1].push_back(generate(session, ctx, 1));
            return info_of(session, ctx.key_id, versions);
        });
    }

    KeyInfo rotate_key(std::string_view key_id) override
    {
        const Context ctx = checked_context(key_id);
        const std::lock_guard lock(lifecycle_mutex_);
        return with_rw_session(ctx, [&](const Session& session) {
            VersionObjects versions = find_versions(session, ctx);
            const bool usable = std::any_of(versions.begin(), versions.end(), [&](const auto& v) {
                const UseFlags flags = read_flags(session, v.second.front());
                return flags.encrypt || flags.decrypt;
            });
            if (!usable) {
                throw Error(
                    Errc::kms_key,
                    where(ctx) + ": key '" + ctx.key_id + "' on token '" + ctx.token + "' is disabled; enable it first",
                    "enable it (diskcrypt key enable " + ctx.provider + ":" + ctx.key_id + "), then rotate it");
            }
            const std::uint32_t next = versions.rbegin()->first + 1;
            if (next > kMaxKeyVersion) {
                throw Error(Errc::not_supported,
                            where(ctx) + ": key '" + ctx.key_id + "' has reached the highest version, " +
                                std::to_string(kMaxKeyVersion),
                            "create a new key and rewrap the disks under it");
            }
            versions[next].push_back(generate(session, ctx, next));
            return info_of(session, ctx.key_id, versions);
        });
    }

    KeyInfo disable_key(std::string_view key_id) override { return set_enabled(key_id, false); }
    KeyInfo enable_key(std::string_view key_id) override { return set_enabled(key_id, true); }

    // Newest version first: a destroy that stops part way leaves versions
    // 1..k, with no gap.
    void destroy_key(std::string_view key_id) override
    {
        const Context ctx = checked_context(key_id);
        const std::lock_guard lock(lifecycle_mutex_);
        with_rw_session(ctx, [&](Session& session) {
            const VersionObjects versions = find_versions(session, ctx);
            std::vector<std::uint32_t> destroyed;
            for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
                const CK_RV rv = session.functions()->C_DestroyObject(session.get(), it->second.front());
                if (rv == CKR_OK) {
                    destroyed.push_back(it->first);
                    continue;
                }
                if (handle_gone(rv)) {
                    session.forget();
                }
                if (destroyed.empty()) {
                    // Nothing happened yet: the failure as it is (a dropped
                    // session is retried).
                    throw CkFailure{rv, Call::destroy_object};
                }
                std::vector<std::uint32_t> remaining;
                for (auto left = it; left != versions.rend(); ++left) {
                    remaining.push_back(left->first);
                }
                std::sort(destroyed.begin(), destroyed.end());
                std::sort(remaining.begin(), remaining.end());
                const Error cause = map_ck_rv(rv, Call::destroy_object, ctx);
                throw Error(cause.code(),
                            std::string(cause.what()) + "; destroying key '" + ctx.key_id + "' stopped at version " +
                                std::to_string(it->first) + ": " + p11_versions_text(destroyed) +
                                (destroyed.size() == 1 ? " was" : " were") + " destroyed, " +
                                p11_versions_text(remaining) + (remaining.size() == 1 ? " remains" : " remain"),
                            cause.hint() + "; then destroy the key again");
            }
        });
    }

    // One session; each version looked up by its CKA_ID. A version without
    // an object is "destroyed"; every PKCS#11 failure throws.
    VersionStates version_states(std::string_view key_id, const std::vector<std::string>& versions) override
    {
        const Context ctx = checked_context(key_id);
        std::vector<std::pair<std::string, std::uint32_t>> asked;
        asked.reserve(versions.size());
        for (const std::string& v : versions) {
            asked.emplace_back(v, require_version(ctx, v));
        }
        if (asked.empty()) {
            return {};
        }
        return with_session(ctx, [&](const Session& session) {
            VersionStates out;
            for (const auto& [text, n] : asked) {
                const std::optional<CK_OBJECT_HANDLE> handle = find_object(session, ctx, n);
                out[text] = handle ? p11_state_name(read_flags(session, *handle)) : std::string(kStateDestroyed);
            }
            return out;
        });
    }

private:
    using SessionPool = Pool<Session>;

    [[nodiscard]] Context context(std::string_view key_id) const
    {
        return Context{name_, settings_.module, settings_.token_label, std::string(key_id)};
    }

    // The key id checked first: one with a '#' would name another key's
    // version.
    [[nodiscard]] Context checked_context(std::string_view key_id) const
    {
        validate_key_id(key_id);
        return context(key_id);
    }

    // A header's version string as a number (agent/README.md, "PKCS#11").
    static std::uint32_t require_version(const Context& ctx, std::string_view version)
    {
        const std::optional<std::uint32_t> n = parse_key_version(version);
        if (!n) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": key '" + ctx.key_id + "' has no version '" + printable(version, 64) +
                            "' (unknown key version: PKCS#11 key versions are 1, 2, 3, ... up to " +
                            std::to_string(kMaxKeyVersion) + ", without leading zeros)",
                        "check that the header names the right provider and key");
        }
        return *n;
    }

    static std::string algorithm_name(const KeyAttributes& a)
    {
        return a.key_type == CKK_AES ? "AES-" + std::to_string(a.value_len * 8) : "not AES";
    }

    static Error disabled_error(const Context& ctx, std::uint32_t version)
    {
        return {Errc::kms_key,
                where(ctx) + ": key '" + ctx.key_id + "' (version " + std::to_string(version) + ") on token '" +
                    ctx.token + "' is disabled (CKA_ENCRYPT and CKA_DECRYPT are false)",
                "enable it (diskcrypt key enable " + ctx.provider + ":" + ctx.key_id + ") or use another key"};
    }

    static CK_GCM_PARAMS gcm_params(std::uint8_t* iv, std::span<const std::uint8_t> ad)
    {
        CK_GCM_PARAMS p{};
        p.pIv = iv;
        p.ulIvLen = kIvBytes;
        p.ulIvBits = kIvBytes * 8;
        p.pAAD = const_cast<std::uint8_t*>(ad.data());  // NOLINT(cppcoreguidelines-pro-type-const-cast): read only
        p.ulAADLen = ad.size();
        p.ulTagBits = kTagBytes * 8;
        return p;
    }

    // Runs `op` on a pooled (read-only) session. A session that failed a
    // PKCS#11 call, or that still has an encryption or decryption operation
    // active, is not given back. When the token dropped the session, the pool
    // is reset (other sessions of the token are likely gone too) and `op`
    // runs once more on a new session; a second failure is reported.
    template <class Op>
    auto with_session(const Context& ctx, Op&& op) -> decltype(op(std::declval<Session&>()))
    {
        return run(ctx, false, std::forward<Op>(op));
    }

    // Runs `op` on a read-write session of its own, closed afterwards (key
    // changes; the pooled sessions stay read-only). Only a failure to open
    // or log in the session is retried: `op` changes the token.
    template <class Op>
    auto with_rw_session(const Context& ctx, Op&& op) -> decltype(op(std::declval<Session&>()))
    {
        return run(ctx, true, std::forward<Op>(op));
    }

    template <class Op>
    auto run(const Context& ctx, bool read_write, Op&& op) -> decltype(op(std::declval<Session&>()))
    {
        const Clock::time_point deadline = Clock::now() + std::chrono::seconds(settings_.request_timeout);
        for (int attempt = 1;; ++attempt) {
            try {
                if (read_write) {
                    const std::unique_ptr<Session> session = make_session(ctx, true);
                    try {
                        return op(*session);
                    } catch (const CkFailure& f) {
                        if (handle_gone(f.rv)) {
                            session->forget();
                        }
                        throw;
                    }
                }
                std::optional<SessionPool::Lease> lease =
                    pool_.take(deadline, [this, &ctx] { return make_session(ctx, false); });
                if (!lease) {
                    throw Error(Errc::kms_unavailable,
                                where(ctx) + ": no PKCS#11 session of token '" + ctx.token + "' came free within " +
                                    std::to_string(settings_.request_timeout) + " s (pool_size " +
                                    std::to_string(pool_.size()) + ", all in use)",
                                "the HSM answers slowly or too many requests run at once: raise pool_size or "
                                "request_timeout for this provider, or check the HSM");
                }
                const InUse in_use;
                try {
                    return op(**lease);
                } catch (const CkFailure& f) {
                    if (handle_gone(f.rv)) {
                        (*lease)->forget();
                    }
                    lease->discard();
                    throw;
                } catch (...) {
                    if ((*lease)->operation_active()) {
                        lease->discard();
                    }
                    throw;
                }
            } catch (const CkFailure& f) {
                const bool before_op = f.call == Call::open_session || f.call == Call::login;
                if (attempt == 1 && session_gone(f.rv) && (!read_write || before_op)) {
                    log_info(where(ctx) + ": token '" + ctx.token + "' dropped the PKCS#11 session (" + ckr_name(f.rv) +
                             "); opening a new one and retrying");
                    counters().retries.fetch_add(1);
                    reset();
                    continue;
                }
                throw map_ck_rv(f.rv, f.call, ctx);
            }
        }
    }

    // The token dropped the sessions: forget them and the slot.
    void reset()
    {
        {
            const std::lock_guard lock(slot_mutex_);
            slot_.reset();
            ++slot_epoch_;
        }
        pool_.reset();
    }

    CK_FUNCTION_LIST* functions(const Context& ctx)
    {
        const std::lock_guard lock(module_mutex_);
        if (!module_) {
            module_ = acquire_module(ctx);
        }
        return module_->fns();
    }

    // The token's slot, looked up on first use and again after a reset.
    CK_SLOT_ID slot(CK_FUNCTION_LIST* f, const Context& ctx)
    {
        std::uint64_t epoch = 0;
        {
            const std::lock_guard lock(slot_mutex_);
            if (slot_) {
                return *slot_;
            }
            epoch = slot_epoch_;
        }
        // Without the lock: concurrent first sessions may each look it up.
        const CK_SLOT_ID found = find_slot(f, ctx);
        const std::lock_guard lock(slot_mutex_);
        if (epoch == slot_epoch_) {
            slot_ = found;
        }
        return found;
    }

    CK_SLOT_ID find_slot(CK_FUNCTION_LIST* f, const Context& ctx) const
    {
        CK_ULONG count = 0;
        CK_RV rv = f->C_GetSlotList(CK_TRUE, nullptr, &count);
        if (rv != CKR_OK) {
            throw map_ck_rv(rv, Call::slots, ctx);
        }
        std::vector<CK_SLOT_ID> slots(count);
        rv = f->C_GetSlotList(CK_TRUE, slots.data(), &count);
        if (rv != CKR_OK) {
            throw map_ck_rv(rv, Call::slots, ctx);
        }
        slots.resize(count);
        std::vector<CK_SLOT_ID> matches;
        std::string seen;
        for (const CK_SLOT_ID slot : slots) {
            CK_TOKEN_INFO info{};
            if (f->C_GetTokenInfo(slot, &info) != CKR_OK) {
                continue;
            }
            const std::string label = trim_label(&info.label[0], sizeof(info.label));
            if ((info.flags & CKF_TOKEN_INITIALIZED) == 0) {
                continue;
            }
            seen += (seen.empty() ? "'" : ", '") + label + "'";
            if (label == settings_.token_label) {
                matches.push_back(slot);
                if ((info.flags & CKF_USER_PIN_LOCKED) != 0) {
                    throw map_ck_rv(CKR_PIN_LOCKED, Call::login, ctx);
                }
            }
        }
        if (matches.empty()) {
            throw Error(Errc::kms_unavailable,
                        where(ctx) + ": no token labelled '" + settings_.token_label + "' in PKCS#11 module " +
                            settings_.module + " (tokens present: " + (seen.empty() ? "none" : seen) + ")",
                        "check token_label in the agent configuration and that the HSM is connected");
        }
        if (matches.size() > 1) {
            throw Error(Errc::kms_unavailable,
                        where(ctx) + ": " + std::to_string(matches.size()) + " tokens are labelled '" +
                            settings_.token_label + "' in " + settings_.module,
                        "give each token a unique label");
        }
        return matches.front();
    }

    [[nodiscard]] SecureBuffer read_pin() const
    {
        if (settings_.pin_credential) {
            return read_credential_file(systemd_credential_path(*settings_.pin_credential), "PIN credential", kMaxPin);
        }
        return read_credential_file(*settings_.pin_file, "PIN file", kMaxPin);
    }

    // A new session, logged in (read-only for the pool, read-write for key
    // changes). Logins are per token and application: a session opened while
    // another one is logged in is in a user state already and needs neither
    // the PIN nor C_Login.
    std::unique_ptr<Session> make_session(const Context& ctx, bool read_write)
    {
        CK_FUNCTION_LIST* f = functions(ctx);
        const CK_SLOT_ID slot_id = slot(f, ctx);
        CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
        const CK_FLAGS flags = CKF_SERIAL_SESSION | (read_write ? CKF_RW_SESSION : 0);
        CK_RV rv = f->C_OpenSession(slot_id, flags, nullptr, nullptr, &h);
        if (rv != CKR_OK) {
            throw CkFailure{rv, Call::open_session};
        }
        auto session = std::make_unique<Session>(f, h);
        counters().opened.fetch_add(1);
        CK_SESSION_INFO info{};
        rv = f->C_GetSessionInfo(h, &info);
        if (rv != CKR_OK) {
            if (handle_gone(rv)) {
                session->forget();
            }
            throw CkFailure{rv, Call::open_session};
        }
        if (!user_state(info.state)) {
            SecureBuffer pin = read_pin();
            counters().logins.fetch_add(1);
            rv = f->C_Login(h, CKU_USER, pin.data(), static_cast<CK_ULONG>(pin.size()));
            if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
                if (handle_gone(rv)) {
                    session->forget();
                }
                throw CkFailure{rv, Call::login};
            }
        }
        return session;
    }

    // CKR_OK if the session exists and is logged in; otherwise why not
    // (CKR_USER_NOT_LOGGED_IN, or what C_GetSessionInfo answered).
    static CK_RV session_status(const Session& session)
    {
        CK_SESSION_INFO info{};
        const CK_RV rv = session.functions()->C_GetSessionInfo(session.get(), &info);
        if (rv != CKR_OK) {
            return rv;
        }
        return user_state(info.state) ? CKR_OK : CKR_USER_NOT_LOGGED_IN;
    }

    // C_EncryptInit/C_DecryptInit refused the key handle just found: if the
    // session itself is gone or logged out, that is the failure to report
    // (and retry); otherwise it is the key's.
    static CkFailure init_failure(const Session& session, CK_RV rv, Call call)
    {
        if (rv == CKR_KEY_HANDLE_INVALID) {
            const CK_RV status = session_status(session);
            if (status != CKR_OK) {
                return {status, call};
            }
        }
        return {rv, call};
    }

    WrappedSecret wrap_in(Session& session, const Context& ctx, std::uint32_t version,
                          std::span<const std::uint8_t> secret, std::span<const std::uint8_t> ad) const
    {
        const KeyAttributes a = find_key(session, ctx, version);
        require_usable(a, ctx, version, true);
        if ((a.extractable || !a.sensitive) && !settings_.allow_extractable) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": " + p11_key_text(ctx, version) +
                            " can leave the HSM (CKA_EXTRACTABLE true or CKA_SENSITIVE false); refusing to wrap "
                            "disk secrets under it",
                        "create the key with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false, or set "
                        "allow_extractable_keys = true for this provider");
        }

        WrappedSecret out;
        out.iv.assign(kIvBytes, 0);
        if (!settings_.hsm_iv && RAND_bytes(out.iv.data(), static_cast<int>(out.iv.size())) != 1) {
            throw Error(Errc::internal, "the random number generator failed (RAND_bytes)");
        }
        CK_GCM_PARAMS params = gcm_params(out.iv.data(), ad);
        CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
        std::vector<std::uint8_t> buf(secret.size() + kTagBytes);
        auto len = static_cast<CK_ULONG>(buf.size());
        CK_FUNCTION_LIST* f = session.functions();
        CK_RV rv = f->C_EncryptInit(session.get(), &mech, a.handle);
        if (rv != CKR_OK) {
            throw init_failure(session, rv, Call::encrypt);
        }
        session.set_operation_active(true);
        // The module reads the plaintext; it is not modified.
        rv = f->C_Encrypt(session.get(), const_cast<std::uint8_t*>(secret.data()),  // NOLINT
                          static_cast<CK_ULONG>(secret.size()), buf.data(), &len);
        if (rv != CKR_OK) {
            // The session is discarded (operation_active): whatever state
            // the module left it in does not go back to the pool.
            throw CkFailure{rv, Call::encrypt};
        }
        session.set_operation_active(false);
        if (len != secret.size() + kTagBytes) {
            throw Error(Errc::kms_unavailable, where(ctx) + ": AES-GCM returned " + std::to_string(len) +
                                                   " bytes, expected " + std::to_string(secret.size() + kTagBytes));
        }
        if (settings_.hsm_iv && std::all_of(out.iv.begin(), out.iv.end(), [](std::uint8_t b) { return b == 0; })) {
            throw Error(Errc::config,
                        where(ctx) + ": iv_source = \"hsm\" but token '" + ctx.token +
                            "' did not generate an IV (it left the IV all-zero); nothing was written",
                        "this HSM takes the IV from the caller: set iv_source = \"host\"");
        }
        out.ciphertext.assign(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(secret.size()));
        out.tag.assign(buf.begin() + static_cast<std::ptrdiff_t>(secret.size()), buf.end());
        return out;
    }

    static SecureBuffer unwrap_in(Session& session, const Context& ctx, std::uint32_t version,
                                  const WrappedSecret& wrapped, std::span<const std::uint8_t> ad)
    {
        const KeyAttributes a = find_key(session, ctx, version);
        require_usable(a, ctx, version, false);

        std::vector<std::uint8_t> iv = wrapped.iv;
        CK_GCM_PARAMS params = gcm_params(iv.data(), ad);
        CK_MECHANISM mech{CKM_AES_GCM, &params, sizeof(params)};
        std::vector<std::uint8_t> in = wrapped.ciphertext;
        in.insert(in.end(), wrapped.tag.begin(), wrapped.tag.end());
        // Some modules want room for the whole input, tag included.
        SecureBuffer out(in.size());
        auto len = static_cast<CK_ULONG>(out.size());
        CK_FUNCTION_LIST* f = session.functions();
        CK_RV rv = f->C_DecryptInit(session.get(), &mech, a.handle);
        if (rv != CKR_OK) {
            throw init_failure(session, rv, Call::decrypt);
        }
        session.set_operation_active(true);
        rv = f->C_Decrypt(session.get(), in.data(), static_cast<CK_ULONG>(in.size()), out.data(), &len);
        if (rv != CKR_OK) {
            // Also a failed tag (CKR_GENERAL_ERROR, Errc::binding): the
            // session is discarded and the operation not retried.
            throw CkFailure{rv, Call::decrypt};
        }
        session.set_operation_active(false);
        if (len != wrapped.ciphertext.size()) {
            throw Error(Errc::kms_unavailable, where(ctx) + ": AES-GCM returned " + std::to_string(len) +
                                                   " bytes, expected " + std::to_string(wrapped.ciphertext.size()));
        }
        out.truncate(len);
        return out;
    }

    // The object of one version, found by its CKA_ID; nullopt when there is
    // none (and the session is still logged in: a session that lost its
    // login sees no private keys).
    static std::optional<CK_OBJECT_HANDLE> find_object(const Session& session, const Context& ctx,
                                                       std::uint32_t version)
    {
        CK_FUNCTION_LIST* f = session.functions();
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        std::string id = object_id(ctx.key_id, version);
        std::array<CK_ATTRIBUTE, 2> tmpl{{
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_ID, id.data(), static_cast<CK_ULONG>(id.size())},
        }};
        std::array<CK_OBJECT_HANDLE, 2> found{};
        CK_ULONG count = 0;
        {
            CK_RV rv = f->C_FindObjectsInit(session.get(), tmpl.data(), static_cast<CK_ULONG>(tmpl.size()));
            if (rv != CKR_OK) {
                throw CkFailure{rv, Call::find_key};
            }
            const FindOperation op(session);
            rv = f->C_FindObjects(session.get(), found.data(), static_cast<CK_ULONG>(found.size()), &count);
            if (rv != CKR_OK) {
                throw CkFailure{rv, Call::find_key};
            }
        }
        if (count == 0) {
            const CK_RV status = session_status(session);
            if (status != CKR_OK) {
                throw CkFailure{status, Call::find_key};
            }
            return std::nullopt;
        }
        if (count > 1) {
            throw duplicate_error(ctx, id);
        }
        return found[0];
    }

    static Error duplicate_error(const Context& ctx, std::string_view cka_id)
    {
        return {Errc::kms_key,
                where(ctx) + ": more than one secret key with " + p11_cka_id_text(cka_id) + " on token '" + ctx.token +
                    "'; diskcrypt needs exactly one",
                "delete the duplicates or give them other CKA_IDs"};
    }

    // No object for the version.
    static Error missing_error(const Context& ctx, std::uint32_t version)
    {
        const std::string id = object_id(ctx.key_id, version);
        if (version == 1) {
            return {Errc::kms_key,
                    where(ctx) + ": no secret key with " + p11_cka_id_text(id) + " on token '" + ctx.token + "'",
                    "create the key (diskcrypt key create " + ctx.provider + ":" + ctx.key_id +
                        ") or on the HSM, or check the key id"};
        }
        return {Errc::kms_key,
                where(ctx) + ": key '" + ctx.key_id + "' has no version " + std::to_string(version) + " on token '" +
                    ctx.token + "' (no secret key with " + p11_cka_id_text(id) + ")",
                "the version was destroyed, or the header names a key of another token"};
    }

    // One version's object and its attributes.
    static KeyAttributes find_key(const Session& session, const Context& ctx, std::uint32_t version)
    {
        const std::optional<CK_OBJECT_HANDLE> handle = find_object(session, ctx, version);
        if (!handle) {
            throw missing_error(ctx, version);
        }
        return read_attributes(session, *handle);
    }

    // What describe and wrap need. CKA_ENCRYPT and CKA_DECRYPT must be read
    // (a failure throws: it must not read as a disabled key); the others one
    // at a time, so an attribute a module does not know keeps its
    // conservative default instead of failing the whole call.
    static KeyAttributes read_attributes(const Session& session, CK_OBJECT_HANDLE handle)
    {
        CK_FUNCTION_LIST* f = session.functions();
        KeyAttributes a;
        a.handle = handle;
        const UseFlags use = read_flags(session, handle);
        a.encrypt = use.encrypt;
        a.decrypt = use.decrypt;
        CK_BBOOL ext = CK_TRUE;
        CK_BBOOL sens = CK_FALSE;
        std::array<CK_ATTRIBUTE, 4> attrs{{
            {CKA_KEY_TYPE, &a.key_type, sizeof(a.key_type)},
            {CKA_VALUE_LEN, &a.value_len, sizeof(a.value_len)},
            {CKA_EXTRACTABLE, &ext, sizeof(ext)},
            {CKA_SENSITIVE, &sens, sizeof(sens)},
        }};
        for (auto& attr : attrs) {
            (void)f->C_GetAttributeValue(session.get(), a.handle, &attr, 1);
        }
        a.extractable = ext == CK_TRUE;
        a.sensitive = sens == CK_TRUE;
        CK_ATTRIBUTE label{CKA_LABEL, nullptr, 0};
        if (f->C_GetAttributeValue(session.get(), a.handle, &label, 1) == CKR_OK && label.ulValueLen > 0 &&
            label.ulValueLen < 256) {
            std::string text(label.ulValueLen, '\0');
            label.pValue = text.data();
            if (f->C_GetAttributeValue(session.get(), a.handle, &label, 1) == CKR_OK) {
                a.label = text;
            }
        }
        return a;
    }

    // CKA_ENCRYPT and CKA_DECRYPT; any failure throws.
    static UseFlags read_flags(const Session& session, CK_OBJECT_HANDLE handle)
    {
        CK_BBOOL enc = CK_FALSE;
        CK_BBOOL dec = CK_FALSE;
        std::array<CK_ATTRIBUTE, 2> attrs{{
            {CKA_ENCRYPT, &enc, sizeof(enc)},
            {CKA_DECRYPT, &dec, sizeof(dec)},
        }};
        const CK_RV rv = session.functions()->C_GetAttributeValue(session.get(), handle, attrs.data(),
                                                                  static_cast<CK_ULONG>(attrs.size()));
        if (rv != CKR_OK) {
            throw CkFailure{rv, Call::attributes};
        }
        return {enc == CK_TRUE, dec == CK_TRUE};
    }

    static CK_RV set_flags(const Session& session, CK_OBJECT_HANDLE handle, UseFlags flags)
    {
        CK_BBOOL enc = flags.encrypt ? CK_TRUE : CK_FALSE;
        CK_BBOOL dec = flags.decrypt ? CK_TRUE : CK_FALSE;
        std::array<CK_ATTRIBUTE, 2> attrs{{
            {CKA_ENCRYPT, &enc, sizeof(enc)},
            {CKA_DECRYPT, &dec, sizeof(dec)},
        }};
        return session.functions()->C_SetAttributeValue(session.get(), handle, attrs.data(),
                                                        static_cast<CK_ULONG>(attrs.size()));
    }

    // Every secret key whose CKA_ID fits the naming scheme: one search over
    // CKO_SECRET_KEY (at most kMaxScannedKeys objects), then each object's
    // CKA_ID. Objects with another CKA_ID, or none, are skipped.
    static std::vector<ScannedKey> scan_secret_keys(const Session& session, const Context& ctx)
    {
        CK_FUNCTION_LIST* f = session.functions();
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_ATTRIBUTE tmpl{CKA_CLASS, &cls, sizeof(cls)};
        std::vector<CK_OBJECT_HANDLE> handles;
        {
            CK_RV rv = f->C_FindObjectsInit(session.get(), &tmpl, 1);
            if (rv != CKR_OK) {
                throw CkFailure{rv, Call::find_key};
            }
            const FindOperation op(session);
            std::array<CK_OBJECT_HANDLE, 256> batch{};
            for (;;) {
                CK_ULONG count = 0;
                rv = f->C_FindObjects(session.get(), batch.data(), static_cast<CK_ULONG>(batch.size()), &count);
                if (rv != CKR_OK) {
                    throw CkFailure{rv, Call::find_key};
                }
                if (count == 0 || count > batch.size()) {
                    break;
                }
                handles.insert(handles.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(count));
                if (handles.size() > kMaxScannedKeys) {
                    throw Error(Errc::not_supported,
                                where(ctx) + ": token '" + ctx.token + "' holds more than " +
                                    std::to_string(kMaxScannedKeys) +
                                    " secret keys; diskcrypt looks through at most that many to find key versions",
                                "delete unused secret keys, or give diskcrypt a token of its own");
                }
            }
        }
        // A session that lost its login sees no private keys: an empty or
        // short answer must not pass for the token's contents.
        const CK_RV status = session_status(session);
        if (status != CKR_OK) {
            throw CkFailure{status, Call::find_key};
        }
        std::vector<ScannedKey> out;
        // The longest CKA_ID of the scheme: 128 bytes of key id, '#' and 6 digits.
        std::array<char, 160> buf{};
        for (const CK_OBJECT_HANDLE h : handles) {
            CK_ATTRIBUTE id{CKA_ID, buf.data(), static_cast<CK_ULONG>(buf.size())};
            const CK_RV rv = f->C_GetAttributeValue(session.get(), h, &id, 1);
            if (rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID ||
                rv == CKR_OBJECT_HANDLE_INVALID) {
                continue;  // longer than any of ours, no CKA_ID, or destroyed since the search
            }
            if (rv != CKR_OK) {
                throw CkFailure{rv, Call::attributes};
            }
            if (id.ulValueLen > buf.size()) {
                continue;
            }
            if (std::optional<KeyObjectId> parsed = parse_object_id({buf.data(), id.ulValueLen})) {
                out.push_back({h, std::move(*parsed)});
            }
        }
        return out;
    }

    // The versions of ctx.key_id on the token (none: empty).
    static VersionObjects scan_versions(const Session& session, const Context& ctx)
    {
        VersionObjects versions;
        for (const ScannedKey& k : scan_secret_keys(session, ctx)) {
            if (k.id.key_id == ctx.key_id) {
                versions[k.id.version].push_back(k.handle);
            }
        }
        return versions;
    }

    // The versions of an existing key, each exactly one object.
    static VersionObjects find_versions(const Session& session, const Context& ctx)
    {
        VersionObjects versions = scan_versions(session, ctx);
        if (versions.empty()) {
            const Error e = missing_error(ctx, 1);
            throw Error(e.code(),
                        std::string(e.what()) + ", nor any later version of key '" + ctx.key_id + "' (CKA_ID '" +
                            ctx.key_id + "#N')",
                        e.hint());
        }
        for (const auto& [version, handles] : versions) {
            if (handles.size() > 1) {
                throw duplicate_error(ctx, object_id(ctx.key_id, version));
            }
        }
        return versions;
    }

    // A key's versions as key_info and list_keys report them: oldest first,
    // the highest one primary; the algorithm is the primary's.
    static KeyInfo info_of(const Session& session, const std::string& key_id, const VersionObjects& versions)
    {
        KeyInfo info;
        info.key_id = key_id;
        for (const auto& [version, handles] : versions) {
            KeyVersion v;
            v.version = std::to_string(version);
            v.state = handles.size() == 1 ? p11_state_name(read_flags(session, handles.front()))
                                          : std::string(kStateAmbiguous);
            info.versions.push_back(std::move(v));
        }
        if (!info.versions.empty()) {
            info.versions.back().primary = true;
            info.algorithm = algorithm_name(read_attributes(session, versions.rbegin()->second.front()));
        }
        return info;
    }

    // Generates a version: AES-256, a private token object, sensitive and
    // not extractable, for encrypt and decrypt only, modifiable (so it can
    // be disabled).
    static CK_OBJECT_HANDLE generate(const Session& session, const Context& ctx, std::uint32_t version)
    {
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_KEY_TYPE type = CKK_AES;
        CK_ULONG len = kKeyBytes;
        CK_BBOOL yes = CK_TRUE;
        CK_BBOOL no = CK_FALSE;
        std::string id = object_id(ctx.key_id, version);
        std::string label = "diskcrypt " + ctx.key_id + " v" + std::to_string(version);
        std::array<CK_ATTRIBUTE, 14> tmpl{{
            {CKA_CLASS, &cls, sizeof(cls)},
            {CKA_KEY_TYPE, &type, sizeof(type)},
            {CKA_VALUE_LEN, &len, sizeof(len)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_SENSITIVE, &yes, sizeof(yes)},
            {CKA_EXTRACTABLE, &no, sizeof(no)},
            {CKA_ENCRYPT, &yes, sizeof(yes)},
            {CKA_DECRYPT, &yes, sizeof(yes)},
            {CKA_WRAP, &no, sizeof(no)},
            {CKA_UNWRAP, &no, sizeof(no)},
            {CKA_MODIFIABLE, &yes, sizeof(yes)},
            {CKA_ID, id.data(), static_cast<CK_ULONG>(id.size())},
            {CKA_LABEL, label.data(), static_cast<CK_ULONG>(label.size())},
        }};
        CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
        CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
        const CK_RV rv = session.functions()->C_GenerateKey(session.get(), &mech, tmpl.data(),
                                                            static_cast<CK_ULONG>(tmpl.size()), &key);
        if (rv != CKR_OK) {
            throw CkFailure{rv, Call::generate_key};
        }
        return key;
    }

    // A version whose flags were changed, and what they were.
    struct Changed {
        std::uint32_t version;
        CK_OBJECT_HANDLE handle;
        UseFlags before;
    };

    // Sets CKA_ENCRYPT and CKA_DECRYPT of every version to `enable`, all or
    // nothing: when a version fails, those already changed are set back.
    KeyInfo set_enabled(std::string_view key_id, bool enable)
    {
        const Context ctx = checked_context(key_id);
        const std::lock_guard lock(lifecycle_mutex_);
        return with_rw_session(ctx, [&](Session& session) {
            const VersionObjects versions = find_versions(session, ctx);
            const UseFlags target{enable, enable};
            std::vector<Changed> changed;
            std::uint32_t at = 0;
            try {
                for (const auto& [version, handles] : versions) {
                    at = version;
                    const UseFlags before = read_flags(session, handles.front());
                    if (before == target) {
                        continue;
                    }
                    const CK_RV rv = set_flags(session, handles.front(), target);
                    if (rv != CKR_OK) {
                        throw CkFailure{rv, Call::set_attributes};
                    }
                    changed.push_back({version, handles.front(), before});
                }
            } catch (const CkFailure& f) {
                throw change_failed(session, ctx, enable, versions, at, f, changed);
            }
            return info_of(session, ctx.key_id, versions);
        });
    }

    // Version `at` failed after `changed` were set: sets those back (on a
    // new session if the token dropped this one) and says what the token
    // holds now.
    Error change_failed(Session& session, const Context& ctx, bool enable, const VersionObjects& versions,
                        std::uint32_t at, const CkFailure& failure, const std::vector<Changed>& changed)
    {
        std::unique_ptr<Session> fresh;
        const Session* restore_on = &session;
        if (handle_gone(failure.rv)) {
            session.forget();
            try {
                fresh = make_session(ctx, true);
                restore_on = fresh.get();
            } catch (const CkFailure&) {
                restore_on = nullptr;
            } catch (const Error&) {
                restore_on = nullptr;
            }
        }
        std::vector<std::uint32_t> restored;
        std::vector<std::uint32_t> stuck;
        CK_RV restore_rv = failure.rv;
        for (const Changed& c : changed) {
            const CK_RV rv = restore_on != nullptr ? set_flags(*restore_on, c.handle, c.before) : failure.rv;
            if (rv == CKR_OK) {
                restored.push_back(c.version);
            } else {
                stuck.push_back(c.version);
                restore_rv = rv;
            }
        }
        std::vector<std::uint32_t> untouched;
        for (const auto& v : versions) {
            if (v.first >= at) {
                untouched.push_back(v.first);
            }
        }
        const std::string done = enable ? "enabled" : "disabled";
        const Error cause = map_ck_rv(failure.rv, failure.call, ctx);
        std::string message = std::string(cause.what()) + "; " + (enable ? "enabling" : "disabling") + " key '" +
                              ctx.key_id + "' stopped at version " + std::to_string(at) + ": ";
        if (changed.empty()) {
            message += "no version changed";
        } else if (stuck.empty()) {
            message += p11_versions_text(restored) + " had been " + done + " and " +
                       (restored.size() == 1 ? "was" : "were") + " set back, so no version changed";
        } else {
            message += p11_versions_text(stuck) + (stuck.size() == 1 ? " is " : " are ") + done +
                       " now and could not be set back (" + ckr_name(restore_rv) + ")";
            if (!restored.empty()) {
                message += ", " + p11_versions_text(restored) + (restored.size() == 1 ? " was" : " were") + " set back";
            }
            message +=
                ", " + p11_versions_text(untouched) + (untouched.size() == 1 ? " was" : " were") + " not changed";
        }
        return {cause.code(), message, cause.hint() + "; then run the command again"};
    }

    // "key 'K' on token 'T'", "key 'K' (version 2) on token 'T'".
    static std::string p11_key_text(const Context& ctx, std::uint32_t version)
    {
        return "key '" + ctx.key_id + "'" + (version == 1 ? "" : " (version " + std::to_string(version) + ")") +
               " on token '" + ctx.token + "'";
    }

    static void require_usable(const KeyAttributes& a, const Context& ctx, std::uint32_t version, bool encrypting)
    {
        if (!a.encrypt && !a.decrypt) {
            throw disabled_error(ctx, version);
        }
        const std::string key = p11_key_text(ctx, version);
        if (a.key_type != CKK_AES || a.value_len != kKeyBytes) {
            throw Error(Errc::kms_key, where(ctx) + ": " + key + " is not an AES-256 key",
                        "diskcrypt wraps with AES-256-GCM: use a 32-byte CKK_AES key");
        }
        if (encrypting && !a.encrypt) {
            throw Error(Errc::kms_key, where(ctx) + ": " + key + " is not allowed to encrypt (CKA_ENCRYPT is false)",
                        "use a key with CKA_ENCRYPT and CKA_DECRYPT set to true");
        }
        if (!a.decrypt) {
            throw Error(Errc::kms_key, where(ctx) + ": " + key + " is not allowed to decrypt (CKA_DECRYPT is false)",
                        "use a key with CKA_ENCRYPT and CKA_DECRYPT set to true");
        }
    }

    std::string name_;
    Settings settings_;
    std::mutex module_mutex_;  // guards module_ (set on first use, then kept)
    std::shared_ptr<Module> module_;
    std::mutex slot_mutex_;  // guards slot_ and slot_epoch_
    std::optional<CK_SLOT_ID> slot_;
    std::uint64_t slot_epoch_ = 0;  // advanced by reset()
    // Key changes of this provider run one at a time (two rotations at once
    // would both make version max+1). Held across their PKCS#11 calls; wrap
    // and unwrap never take it.
    std::mutex lifecycle_mutex_;
    // Declared after module_: the sessions are closed before the module goes.
    SessionPool pool_;
};

std::unique_ptr<Provider> create(const std::string& name, ConfigSection& options)
{
    Settings s;
    s.module = options.required_path("module");
    s.token_label = options.required_string("token_label");
    if (s.token_label.size() > 32) {
        throw options.error_at("token_label", "a PKCS#11 token label has at most 32 bytes");
    }
    s.pin_file = options.optional_path("pin_file");
    s.pin_credential = options.optional_string("pin_credential");
    if (s.pin_file && s.pin_credential) {
        throw options.error_at("pin_credential", "set either pin_file or pin_credential, not both");
    }
    if (!s.pin_file && !s.pin_credential) {
        throw options.error(
            "missing PIN source: set pin_file (a root-only file) or pin_credential (a systemd "
            "credential name)");
    }
    if (s.pin_credential && !is_credential_name(*s.pin_credential)) {
        throw options.error_at("pin_credential", "a credential name has 1-64 characters from A-Z a-z 0-9 . _ -");
    }
    if (auto iv = options.optional_string("iv_source")) {
        if (*iv != "host" && *iv != "hsm") {
            throw options.error_at("iv_source", R"(must be "host" or "hsm" (not ")" + *iv + "\")");
        }
        s.hsm_iv = *iv == "hsm";
    }
    s.allow_extractable = options.optional_bool("allow_extractable_keys").value_or(false);
    if (const auto size = options.optional_unsigned("pool_size", kMaxPoolSize)) {
        if (*size == 0) {
            throw options.error_at("pool_size", "must be from 1 to " + std::to_string(kMaxPoolSize) + " (not 0)");
        }
        s.pool_size = *size;
    }
    if (const auto timeout = options.optional_unsigned("request_timeout", kMaxRequestTimeout)) {
        if (*timeout == 0) {
            throw options.error_at("request_timeout",
                                   "must be from 1 to " + std::to_string(kMaxRequestTimeout) + " seconds (not 0)");
        }
        s.request_timeout = *timeout;
    }
    return std::make_unique<Pkcs11Provider>(name, std::move(s));
}

}  // namespace

SessionStats take_session_stats()
{
    Counters& c = counters();
    SessionStats s;
    s.opened = c.opened.exchange(0);
    s.logins = c.logins.exchange(0);
    s.retries = c.retries.exchange(0);
    s.peak_in_use = c.peak_in_use.exchange(c.in_use.load());
    return s;
}

namespace {

// Self-registration: the agent library is linked as objects, so this runs.
[[maybe_unused]] const bool kRegistered = register_provider_type(std::string(kType), create);

}  // namespace

}  // namespace diskcrypt::kms::pkcs11
