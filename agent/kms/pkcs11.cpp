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
#include "agent/raii.hpp"

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

constexpr std::array<CkrName, 40> kCkrNames{{
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

Error map_ck_rv(CK_RV rv, Call call, const Context& ctx)
{
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

class Pkcs11Provider final : public Provider {
public:
    Pkcs11Provider(std::string name, Settings settings)
        : name_(std::move(name)), settings_(std::move(settings)), pool_(settings_.pool_size)
    {
    }

    [[nodiscard]] const std::string& name() const override { return name_; }
    [[nodiscard]] std::string_view type() const override { return kType; }

    KeyDescription describe(std::string_view key_id) override
    {
        const Context ctx = context(key_id);
        const KeyAttributes a = with_session(ctx, [&](Session& session) { return find_key(session, ctx); });
        KeyDescription d;
        d.provider_type = std::string(kType);
        d.key_id = std::string(key_id);
        d.version = std::string(kKeyVersion);
        d.algorithm = (a.key_type == CKK_AES) ? "AES-" + std::to_string(a.value_len * 8) : "not AES";
        d.enabled = true;  // PKCS#11 has no key state beyond the attributes below
        d.can_encrypt = a.encrypt;
        d.can_decrypt = a.decrypt;
        d.extractable = a.extractable || !a.sensitive;
        d.label = a.label;
        return d;
    }

    WrappedSecret wrap(std::string_view key_id, std::string_view version, std::span<const std::uint8_t> secret,
                       std::span<const std::uint8_t> ad) override
    {
        const Context ctx = context(key_id);
        require_version(ctx, version);
        return with_session(ctx, [&](Session& session) { return wrap_in(session, ctx, secret, ad); });
    }

    SecureBuffer unwrap(std::string_view key_id, std::string_view version, const WrappedSecret& wrapped,
                        std::span<const std::uint8_t> ad) override
    {
        const Context ctx = context(key_id);
        require_version(ctx, version);
        if (wrapped.algorithm != "AES-256-GCM" || wrapped.iv.size() != kIvBytes || wrapped.tag.size() != kTagBytes ||
            wrapped.ciphertext.empty()) {
            throw Error(Errc::header, where(ctx) +
                                          ": the wrapped secret is not AES-256-GCM with a 12-byte IV and a "
                                          "16-byte tag");
        }
        return with_session(ctx, [&](Session& session) { return unwrap_in(session, ctx, wrapped, ad); });
    }

private:
    using SessionPool = Pool<Session>;

    [[nodiscard]] Context context(std::string_view key_id) const
    {
        return Context{name_, settings_.module, settings_.token_label, std::string(key_id)};
    }

    static void require_version(const Context& ctx, std::string_view version)
    {
        if (version != kKeyVersion) {
            throw Error(Errc::kms_key, where(ctx) + ": key '" + ctx.key_id + "' has no version '" +
                                           std::string(version) + "' (PKCS#11 keys have only version " +
                                           std::string(kKeyVersion) + ")");
        }
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

    // Runs `op` on a pooled session. A session that failed a PKCS#11 call,
    // or that still has an encryption or decryption operation active, is not
    // given back. When the token dropped the session, the pool is reset
    // (other sessions of the token are likely gone too) and `op` runs once
    // more on a new session; a second failure is reported.
    template <class Op>
    auto with_session(const Context& ctx, Op&& op) -> decltype(op(std::declval<Session&>()))
    {
        const Clock::time_point deadline = Clock::now() + std::chrono::seconds(settings_.request_timeout);
        for (int attempt = 1;; ++attempt) {
            try {
                std::optional<SessionPool::Lease> lease =
                    pool_.take(deadline, [this, &ctx] { return make_session(ctx); });
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
                if (attempt == 1 && session_gone(f.rv)) {
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

    // A new session of the pool, logged in. Logins are per token and
    // application: a session opened while another one is logged in is in a
    // user state already and needs neither the PIN nor C_Login.
    std::unique_ptr<Session> make_session(const Context& ctx)
    {
        CK_FUNCTION_LIST* f = functions(ctx);
        const CK_SLOT_ID slot_id = slot(f, ctx);
        CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
        CK_RV rv = f->C_OpenSession(slot_id, CKF_SERIAL_SESSION, nullptr, nullptr, &h);
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

    WrappedSecret wrap_in(Session& session, const Context& ctx, std::span<const std::uint8_t> secret,
                          std::span<const std::uint8_t> ad) const
    {
        const KeyAttributes a = find_key(session, ctx);
        require_usable(a, ctx, true);
        if ((a.extractable || !a.sensitive) && !settings_.allow_extractable) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": key '" + ctx.key_id + "' on token '" + ctx.token +
                            "' can leave the HSM (CKA_EXTRACTABLE true or CKA_SENSITIVE false); refusing to wrap "
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

    static SecureBuffer unwrap_in(Session& session, const Context& ctx, const WrappedSecret& wrapped,
                                  std::span<const std::uint8_t> ad)
    {
        const KeyAttributes a = find_key(session, ctx);
        require_usable(a, ctx, false);

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

    static KeyAttributes find_key(const Session& session, const Context& ctx)
    {
        CK_FUNCTION_LIST* f = session.functions();
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        std::vector<std::uint8_t> id(ctx.key_id.begin(), ctx.key_id.end());
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
            // A session that lost its login sees no private keys.
            const CK_RV status = session_status(session);
            if (status != CKR_OK) {
                throw CkFailure{status, Call::find_key};
            }
        }
        const std::string what = "secret key with CKA_ID '" + ctx.key_id + "' (hex " + hex_encode(id) + ")";
        if (count == 0) {
            throw Error(Errc::kms_key, where(ctx) + ": no " + what + " on token '" + ctx.token + "'",
                        "create the key on the HSM, or check the key id");
        }
        if (count > 1) {
            throw Error(
                Errc::kms_key,
                where(ctx) + ": more than one " + what + " on token '" + ctx.token + "'; diskcrypt needs exactly one",
                "delete the duplicates or give them other CKA_IDs");
        }
        KeyAttributes a;
        a.handle = found[0];
        CK_BBOOL enc = CK_FALSE;
        CK_BBOOL dec = CK_FALSE;
        CK_BBOOL ext = CK_TRUE;
        CK_BBOOL sens = CK_FALSE;
        std::array<CK_ATTRIBUTE, 6> attrs{{
            {CKA_KEY_TYPE, &a.key_type, sizeof(a.key_type)},
            {CKA_VALUE_LEN, &a.value_len, sizeof(a.value_len)},
            {CKA_ENCRYPT, &enc, sizeof(enc)},
            {CKA_DECRYPT, &dec, sizeof(dec)},
            {CKA_EXTRACTABLE, &ext, sizeof(ext)},
            {CKA_SENSITIVE, &sens, sizeof(sens)},
        }};
        // One attribute at a time, so an attribute a module does not know
        // keeps its conservative default instead of failing the whole call.
        for (auto& attr : attrs) {
            (void)f->C_GetAttributeValue(session.get(), a.handle, &attr, 1);
        }
        a.encrypt = enc == CK_TRUE;
        a.decrypt = dec == CK_TRUE;
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

    static void require_usable(const KeyAttributes& a, const Context& ctx, bool encrypting)
    {
        const std::string key = "key '" + ctx.key_id + "' on token '" + ctx.token + "'";
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
