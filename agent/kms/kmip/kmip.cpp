#include "agent/kms/kmip/kmip.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "agent/config.hpp"
#include "agent/credentials.hpp"
#include "agent/kms/kmip/transport.hpp"
#include "agent/kms/kmip/ttlv.hpp"
#include "agent/kms/pool.hpp"
#include "agent/kms/provider.hpp"
#include "agent/log.hpp"
#include "agent/names.hpp"
#include "agent/text.hpp"

namespace diskcrypt::kms::kmip {

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::size_t kIvBytes = 12;
constexpr std::size_t kTagBytes = 16;
constexpr std::size_t kMaxResponse = std::size_t{64} * 1024;
constexpr std::size_t kMaxKeyPem = std::size_t{64} * 1024;
constexpr std::size_t kMaxEndpoints = 8;
constexpr milliseconds kFirstBackoff{50};
constexpr milliseconds kMaxBackoff{2000};
constexpr milliseconds kMinAttempt{100};
// Identifiers asked for per Locate: an answer stays well within the decoder's
// 512 items and 64 KiB even with 128-byte identifiers.
constexpr std::uint32_t kLocatePage = 250;
// Objects one key, or one listing, may have; more are not looked at.
constexpr std::size_t kMaxObjects = 1000;
// Create attempts for a rotation whose new object the server dates no later
// than the current primary (a clock behind, or the same second and a smaller
// identifier), one second apart.
constexpr int kRotateAttempts = 3;

std::string where(const Context& ctx) { return "provider '" + ctx.provider + "'"; }

std::string key_text(const Context& ctx)
{
    if (ctx.key_id.empty()) {
        return ctx.uid.empty() ? std::string("the keys") : "KMIP object " + ctx.uid;
    }
    return "key '" + ctx.key_id + "'" + (ctx.uid.empty() ? "" : " (KMIP object " + ctx.uid + ")");
}

// The operations that change the server's objects.
bool changes_objects(Operation op)
{
    return op == Operation::create || op == Operation::activate || op == Operation::revoke || op == Operation::destroy;
}

std::string verb(Operation op)
{
    switch (op) {
        case Operation::create:
            return "create";
        case Operation::activate:
            return "activate";
        case Operation::revoke:
            return "revoke";
        case Operation::destroy:
            return "destroy";
        default:
            break;
    }
    return "use";
}

// A refused Encrypt, Decrypt, Activate, Revoke or Destroy explained by the
// object's state; nullopt when the state does not explain it.
std::optional<Error> refused_for_state(Operation op, const std::string& at, const std::string& said, const Context& ctx,
                                       KeyState state)
{
    if (state == KeyState::unknown) {
        return std::nullopt;
    }
    const std::string name(operation_name(op));
    const std::string is = key_text(ctx) + " is " + std::string(state_name(state));
    switch (op) {
        case Operation::encrypt:
        case Operation::decrypt:
            if (state == KeyState::active) {
                break;
            }
            return Error(Errc::kms_key, at + " refused " + name + ": " + is + ", not active" + said,
                         state == KeyState::pre_active
                             ? "activate the key on the KMIP server"
                             : "a key that was revoked or destroyed cannot unwrap; restore the disk's key from the "
                               "KMS administrator's backup, or use another key");
        case Operation::activate:
            if (state == KeyState::pre_active) {
                break;
            }
            return Error(Errc::kms_key, at + " refused Activate: " + is + ", not pre-active" + said,
                         "only a new (pre-active) KMIP object can be activated, and a revoked one never becomes "
                         "active again: rotate the key to make a new active version");
        case Operation::revoke:
            if (state == KeyState::active) {
                break;
            }
            return Error(Errc::kms_key, at + " refused Revoke: " + is + ", not active" + said,
                         "only an active version can be deactivated; list the key to see its versions' states");
        case Operation::destroy:
            if (state != KeyState::active) {
                break;
            }
            return Error(Errc::kms_key, at + " refused Destroy: " + is + said,
                         "the server destroys only objects that are not active (another client may have "
                         "activated it meanwhile); destroy the key again");
        default:
            break;
    }
    return std::nullopt;
}

std::string server_said(const Response& r)
{
    return (r.reason ? reason_name(*r.reason) : std::string("no reason given")) +
           (r.message.empty() ? "" : ": \"" + r.message + "\"");
}

}  // namespace

Error map_result(const Response& r, const Context& ctx, KeyState state)
{
    const std::string op(operation_name(r.operation));
    const std::string at = where(ctx) + ": KMIP server " + ctx.server;
    const std::string said = " (" + server_said(r) + ")";
    const bool lifecycle = changes_objects(r.operation);
    if (r.status == ResultStatus::operation_pending || r.status == ResultStatus::operation_undone) {
        return {Errc::kms_unavailable, at + " did not complete " + op + said,
                "diskcrypt does not use asynchronous KMIP operations; check the server's configuration"};
    }
    if (auto e = refused_for_state(r.operation, at, said, ctx, state)) {
        return std::move(*e);
    }
    const std::uint32_t reason = r.reason.value_or(0);
    switch (reason) {
        case reason::item_not_found:
            return {Errc::kms_key, at + ": " + key_text(ctx) + " was not found" + said,
                    "check the key id; the key must exist on the KMIP server and be visible to the client "
                    "certificate '" +
                        ctx.identity + "'"};
        case reason::permission_denied:
        case reason::authentication_not_successful:
            return {Errc::kms_auth,
                    at + " denied client '" + ctx.identity + "' the " + op + " of " + key_text(ctx) + said,
                    lifecycle ? "the KMS administrator must allow this client certificate to " + verb(r.operation) +
                                    " keys (the KMIP server's operation policy)"
                              : "the KMS administrator must allow this client certificate to use the key"};
        case reason::cryptographic_failure:
        case reason::general_failure:
            // PyKMIP answers a failed GCM tag with General Failure.
            if (r.operation == Operation::decrypt) {
                return {Errc::binding,
                        at + ": " + key_text(ctx) +
                            " refused to unwrap the secret: the authentication tag does not match, so the "
                            "wrapped secret was not made for this disk id and key, or it was altered" +
                            said,
                        "check the disk id; a header copied from another disk cannot be unwrapped for this one"};
            }
            break;
        case reason::illegal_operation:
            return {Errc::kms_key, at + " refused " + op + " with " + key_text(ctx) + said,
                    lifecycle ? "the object's state does not allow " + op + "; list the key to see its versions' states"
                              : "the key must be an active AES-256 key whose usage allows encrypt and decrypt"};
        case reason::operation_not_supported:
        case reason::feature_not_supported:
            if (lifecycle) {
                return {Errc::not_supported, at + " does not support " + op + said,
                        "manage this key with the KMIP server's own tools"};
            }
            [[fallthrough]];
        case reason::invalid_field:
        case reason::invalid_message:
        case reason::missing_data:
            return {Errc::kms_unavailable, at + " does not support " + op + " as diskcrypt uses it" + said,
                    lifecycle ? "diskcrypt creates AES-256 Symmetric Keys with a Name and usage mask Encrypt|Decrypt "
                                "and revokes them with reason Cessation of Operation (KMIP 1.4); manage this key "
                                "with the server's own tools otherwise"
                              : "diskcrypt needs KMIP 1.4 Encrypt/Decrypt with AES-GCM, a 12-byte IV and additional "
                                "data"};
        default:
            break;
    }
    return {Errc::kms_unavailable, at + ": " + op + " with " + key_text(ctx) + " failed" + said,
            "check the KMIP server and its logs, then retry"};
}

int compare_unique_identifiers(std::string_view a, std::string_view b)
{
    const auto digits = [](std::string_view s) {
        return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
    };
    const auto by_length_then_bytes = [](std::string_view x, std::string_view y) {
        if (x.size() != y.size()) {
            return x.size() < y.size() ? -1 : 1;
        }
        const int c = x.compare(y);
        return c < 0 ? -1 : (c > 0 ? 1 : 0);
    };
    if (digits(a) && digits(b)) {
        const auto value = [](std::string_view s) {
            const std::size_t first = s.find_first_not_of('0');
            return first == std::string_view::npos ? std::string_view() : s.substr(first);
        };
        if (const int c = by_length_then_bytes(value(a), value(b)); c != 0) {
            return c;
        }
    }
    return by_length_then_bytes(a, b);
}

namespace {

struct Settings {
    std::vector<Endpoint> endpoints;
    std::optional<std::string> server_name;
    std::string ca_file;
    std::string client_certificate;
    std::optional<std::string> key_file;
    std::optional<std::string> key_credential;
    unsigned pool_size = 4;
    seconds request_timeout{10};
    seconds connect_timeout{3};
    seconds read_timeout{5};
    seconds failure_memory{30};
};

// One server: its pool of connections and when it last failed.
struct Site {
    Site(Endpoint e, std::string name, std::size_t pool_size)
        : endpoint(std::move(e)), text(endpoint.text()), server_name(std::move(name)), pool(pool_size)
    {
    }
    Endpoint endpoint;
    std::string text;
    std::string server_name;
    Pool<Connection> pool;
    std::atomic<Clock::rep> failed_at{0};  // 0: no failure remembered
    std::atomic<bool> warned_cipher{false};
};

// A decoded response; the items refer to `message`, so it stays in place.
struct Answer {
    SecureBuffer message;
    Item root;
    Response response;
    std::string server;
};

// A request that must not be sent twice (Create) failed after it may have
// reached the server: the request ends there.
class MaybeDone : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Whether a request may be sent again after an attempt that may have reached
// the server.
enum class Resend { allowed, never };

// One version of a key: a KMIP object and what Get Attributes said of it.
struct Version {
    std::string uid;
    Attributes attributes;
};

// Older first: by Initial Date, then by Unique Identifier.
bool older(const Version& a, const Version& b)
{
    const std::int64_t da = a.attributes.initial_date.value_or(0);
    const std::int64_t db = b.attributes.initial_date.value_or(0);
    if (da != db) {
        return da < db;
    }
    return compare_unique_identifiers(a.uid, b.uid) < 0;
}

std::string algorithm_text(const Attributes& a)
{
    if (!a.algorithm) {
        return "unknown";
    }
    if (*a.algorithm == kAlgorithmAes) {
        return "AES-" + std::to_string(a.length.value_or(0));
    }
    return "KMIP algorithm " + std::to_string(*a.algorithm);
}

bool revoked(KeyState s)
{
    return s == KeyState::deactivated || s == KeyState::compromised || s == KeyState::destroyed ||
           s == KeyState::destroyed_compromised;
}

bool valid_key_id(std::string_view id)
{
    try {
        validate_key_id(id);
        return true;
    } catch (const Error&) {
        return false;
    }
}

std::string joined(const std::vector<std::string>& items)
{
    std::string out;
    for (const std::string& i : items) {
        out += (out.empty() ? "" : ", ") + i;
    }
    return out;
}

// `e`, saying also which versions were changed before it happened.
Error after_partial(const Error& e, const std::vector<std::string>& done, const std::string& changed,
                    const std::string& again)
{
    if (done.empty()) {
        return e;
    }
    return {e.code(),
            std::string(e.what()) + " (version" + (done.size() > 1 ? "s " : " ") + joined(done) + " " +
                (done.size() > 1 ? "were " : "was ") + changed + " before this failure; " + again + " to finish)",
            e.hint()};
}

constexpr std::array<std::string_view, 6> kListAttributes{attribute_name::name,         attribute_name::state,
                                                          attribute_name::initial_date, attribute_name::algorithm,
                                                          attribute_name::length,       attribute_name::usage_mask};
constexpr std::array<std::string_view, 1> kStateAttribute{attribute_name::state};

struct Attempts {
    std::string last;
    unsigned count = 0;
    Failure kind = Failure::unreachable;
};

milliseconds jitter(milliseconds backoff)
{
    thread_local std::mt19937_64 rng{std::random_device{}()};
    std::uniform_int_distribution<long long> d(backoff.count() / 2, backoff.count());
    return milliseconds(d(rng));
}

std::string client_identity(const std::string& cert_file)
{
    const std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(cert_file.c_str(), "r"), &BIO_free);
    if (!bio) {
        return "unknown";
    }
    const std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr),
                                                           &X509_free);
    ERR_clear_error();
    if (!cert) {
        return "unknown";
    }
    std::array<char, 256> cn{};
    const int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn.data(),
                                            static_cast<int>(cn.size()));
    return n > 0 ? printable(std::string_view(cn.data(), static_cast<std::size_t>(n)), 128) : "no CN";
}

class KmipProvider final : public Provider {
public:
    KmipProvider(std::string name, Settings settings) : name_(std::move(name)), settings_(std::move(settings))
    {
        for (const Endpoint& e : settings_.endpoints) {
            sites_.push_back(std::make_unique<Site>(e, settings_.server_name.value_or(e.host), settings_.pool_size));
        }
    }

    [[nodiscard]] const std::string& name() const override { return name_; }
    [[nodiscard]] std::string_view type() const override { return kType; }

    KeyDescription describe(std::string_view key_id) override
    {
        Context ctx = context(key_id, "");
        const std::vector<Version> found = versions(ctx);
        const Version& primary = found.back();
        ctx.uid = primary.uid;
        try {
            validate_key_version(ctx.uid);
        } catch (const Error&) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": the KMIP unique identifier of key '" + ctx.key_id +
                            "' cannot serve as its version (1-64 of A-Z a-z 0-9 . _ -)",
                        "diskcrypt records the unique identifier in each disk header");
        }
        const Attributes& a = primary.attributes;
        KeyDescription d;
        d.provider_type = std::string(kType);
        d.key_id = ctx.key_id;
        d.version = ctx.uid;
        d.algorithm = algorithm_text(a);
        d.state = std::string(state_name(a.state));
        d.enabled = a.state == KeyState::active;
        const std::int32_t mask = a.usage_mask.value_or(kUsageEncrypt | kUsageDecrypt);
        d.can_encrypt = (mask & static_cast<std::int32_t>(kUsageEncrypt)) != 0;
        d.can_decrypt = (mask & static_cast<std::int32_t>(kUsageDecrypt)) != 0;
        d.extractable = true;  // KMIP does not say; PyKMIP lets a decrypting client Get the key
        if (d.algorithm != "AES-256") {
            throw Error(Errc::kms_key,
                        where(ctx) + ": " + key_text(ctx) + " is not AES-256 (algorithm: " + d.algorithm + ")",
                        "diskcrypt wraps with AES-256-GCM: use a 256-bit AES key");
        }
        return d;
    }

    WrappedSecret wrap(std::string_view key_id, std::string_view version, std::span<const std::uint8_t> secret,
                       std::span<const std::uint8_t> ad) override
    {
        const Context ctx = context(key_id, version);
        WrappedSecret out;
        out.iv.assign(kIvBytes, 0);
        if (RAND_bytes(out.iv.data(), static_cast<int>(out.iv.size())) != 1) {
            throw Error(Errc::internal, "the random number generator failed (RAND_bytes)");
        }
        const auto answer = call(encrypt_request(ctx.uid, out.iv, secret, ad), Operation::encrypt, ctx);
        require_success(*answer, ctx);
        const EncryptResult r = parsed(*answer, ctx, parse_encrypt);
        if (r.data.size() != secret.size() || r.tag.size() != kTagBytes ||
            (!r.iv.empty() && !std::equal(r.iv.begin(), r.iv.end(), out.iv.begin(), out.iv.end()))) {
            throw Error(Errc::kms_unavailable,
                        where(ctx) + ": KMIP server " + answer->server + " answered Encrypt with " +
                            std::to_string(r.data.size()) + " bytes, a " + std::to_string(r.tag.size()) + "-byte tag" +
                            (r.iv.empty() ? "" : " and an IV") + " where " + std::to_string(secret.size()) +
                            " bytes, a 16-byte tag and the same IV were expected",
                        "the server must honour the client's IV and a 128-bit tag (KMIP 1.4 AES-GCM)");
        }
        out.ciphertext.assign(r.data.begin(), r.data.end());
        out.tag.assign(r.tag.begin(), r.tag.end());
        return out;
    }

    SecureBuffer unwrap(std::string_view key_id, std::string_view version, const WrappedSecret& wrapped,
                        std::span<const std::uint8_t> ad) override
    {
        const Context ctx = context(key_id, version);
        if (wrapped.algorithm != "AES-256-GCM" || wrapped.iv.size() != kIvBytes || wrapped.tag.size() != kTagBytes ||
            wrapped.ciphertext.empty()) {
            throw Error(Errc::header,
                        where(ctx) + ": the wrapped secret is not AES-256-GCM with a 12-byte IV and a 16-byte tag");
        }
        const auto answer =
            call(decrypt_request(ctx.uid, wrapped.iv, wrapped.ciphertext, ad, wrapped.tag), Operation::decrypt, ctx);
        require_success(*answer, ctx);
        const DecryptResult r = parsed(*answer, ctx, parse_decrypt);
        if (r.data.size() != wrapped.ciphertext.size()) {
            throw Error(Errc::kms_unavailable, where(ctx) + ": KMIP server " + answer->server + " returned " +
                                                   std::to_string(r.data.size()) + " bytes, expected " +
                                                   std::to_string(wrapped.ciphertext.size()));
        }
        SecureBuffer out(r.data.size());
        std::copy(r.data.begin(), r.data.end(), out.data());
        return out;
    }

    std::vector<KeyInfo> list_keys() override
    {
        const Context ctx = context("", "");
        Located found = locate({}, ctx, kMaxObjects + 1);  // one more says there are more
        const bool truncated = found.uids.size() > kMaxObjects;
        found.uids.resize(std::min(found.uids.size(), kMaxObjects));
        std::map<std::string, std::vector<Version>, std::less<>> keys;
        for (const std::string& uid : found.uids) {
            Context at = ctx;
            at.uid = uid;
            auto a = attributes_if_present(at, kListAttributes);
            if (!a) {
                continue;  // destroyed since the Locate
            }
            std::sort(a->names.begin(), a->names.end());
            a->names.erase(std::unique(a->names.begin(), a->names.end()), a->names.end());
            for (const std::string& name : a->names) {
                if (valid_key_id(name)) {
                    keys[name].push_back({uid, *a});
                }
            }
        }
        if (truncated) {
            log_warning(where(ctx) + ": KMIP server " + found.server + " holds more than " +
                        std::to_string(kMaxObjects) + " symmetric keys visible to client '" + ctx.identity +
                        "'; only " + std::to_string(kMaxObjects) + " are listed");
        }
        std::vector<KeyInfo> out;
        out.reserve(keys.size());
        for (auto& [name, found_versions] : keys) {
            std::sort(found_versions.begin(), found_versions.end(), older);
            out.push_back(info(name, found_versions));
        }
        return out;
    }

    KeyInfo key_info(std::string_view key_id) override
    {
        const Context ctx = context(key_id, "");
        return info(ctx.key_id, versions(ctx));
    }

    KeyInfo create_key(std::string_view key_id) override
    {
        const Context ctx = context(key_id, "");
        const Located found = locate({ctx.key_id, std::nullopt}, ctx, 1);
        if (!found.uids.empty()) {
            throw Error(Errc::conflict,
                        where(ctx) + ": key '" + ctx.key_id + "' already exists on KMIP server " + found.server +
                            " (KMIP object " + found.uids.front() + ")",
                        "choose another key id, or rotate the existing key to give it a new version");
        }
        (void)new_version(ctx, std::nullopt);
        return key_info(key_id);
    }

    KeyInfo rotate_key(std::string_view key_id) override
    {
        const Context ctx = context(key_id, "");
        const std::vector<Version> found = versions(ctx);
        (void)new_version(ctx, found.back());
        return key_info(key_id);
    }

    KeyInfo disable_key(std::string_view key_id) override
    {
        const Context ctx = context(key_id, "");
        std::vector<std::string> done;
        for (const Version& v : versions(ctx)) {
            Context at = ctx;
            at.uid = v.uid;
            try {
                require_known_state(v, at);
                if (v.attributes.state == KeyState::active) {
                    change(Operation::revoke, revoke_request(v.uid), at);
                    done.push_back(v.uid);
                }
            } catch (const Error& e) {
                throw after_partial(e, done, "deactivated", "disable the key again");
            }
        }
        return key_info(key_id);
    }

    KeyInfo enable_key(std::string_view key_id) override
    {
        const Context ctx = context(key_id, "");
        const std::vector<Version> found = versions(ctx);
        for (const Version& v : found) {
            Context at = ctx;
            at.uid = v.uid;
            require_known_state(v, at);
            if (revoked(v.attributes.state)) {
                throw Error(Errc::not_supported,
                            where(ctx) + ": key '" + ctx.key_id + "' cannot be enabled again: KMIP version " + v.uid +
                                " is " + std::string(state_name(v.attributes.state)) +
                                ", and a revoked KMIP object never becomes active again",
                            "rotate the key to make a new active version, then rewrap its disks");
            }
        }
        std::vector<std::string> done;
        for (const Version& v : found) {
            if (v.attributes.state != KeyState::pre_active) {
                continue;
            }
            Context at = ctx;
            at.uid = v.uid;
            try {
                change(Operation::activate, activate_request(v.uid), at);
            } catch (const Error& e) {
                throw after_partial(e, done, "activated", "enable the key again");
            }
            done.push_back(v.uid);
        }
        return key_info(key_id);
    }

    void destroy_key(std::string_view key_id) override
    {
        const Context ctx = context(key_id, "");
        std::vector<std::string> done;
        for (const Version& v : versions(ctx)) {
            Context at = ctx;
            at.uid = v.uid;
            try {
                // PyKMIP, as KMIP intends, destroys no Active object.
                if (v.attributes.state == KeyState::active || v.attributes.state == KeyState::unknown) {
                    change(Operation::revoke, revoke_request(v.uid), at);
                }
                change(Operation::destroy, destroy_request(v.uid), at);
            } catch (const Error& e) {
                throw after_partial(e, done, "destroyed", "destroy the key again");
            }
            done.push_back(v.uid);
        }
    }

    VersionStates version_states(std::string_view key_id, const std::vector<std::string>& asked) override
    {
        VersionStates out;
        if (asked.empty()) {
            return out;
        }
        const Context ctx = context(key_id, "");
        // One Locate says which versions are active; only the others are
        // asked about one by one (and a version missing from a full page is
        // asked about too, so a truncated answer costs requests, not truth).
        const Located active = locate({ctx.key_id, KeyState::active}, ctx, kLocatePage);
        for (const std::string& version : asked) {
            if (out.contains(version)) {
                continue;
            }
            if (std::find(active.uids.begin(), active.uids.end(), version) != active.uids.end()) {
                out.emplace(version, "active");
                continue;
            }
            Context at = ctx;
            at.uid = version;
            const auto a = attributes_if_present(at, kStateAttribute);
            if (!a) {
                out.emplace(version, "destroyed");  // the server no longer has it
                continue;
            }
            require_known_state({version, *a}, at);
            out.emplace(version, std::string(state_name(a->state)));
        }
        return out;
    }

private:
    // A Locate's identifiers, in the server's order, without repeats.
    struct Located {
        std::vector<std::string> uids;
        std::string server;  // the endpoint that answered the first page
    };

    Context context(std::string_view key_id, std::string_view uid)
    {
        Context c;
        c.provider = name_;
        c.identity = identity();
        c.key_id = std::string(key_id);
        c.uid = std::string(uid);
        return c;
    }

    // The TLS context, made at the first request (the key is read then, so
    // the agent starts while the credential is still missing).
    std::shared_ptr<const TlsContext> tls()
    {
        const std::lock_guard lock(tls_mutex_);
        if (!tls_) {
            const std::string source =
                settings_.key_credential ? "credential '" + *settings_.key_credential + "'" : *settings_.key_file;
            const SecureBuffer key = settings_.key_credential
                                         ? read_credential_file(systemd_credential_path(*settings_.key_credential),
                                                                "KMIP client key", kMaxKeyPem)
                                         : read_credential_file(*settings_.key_file, "KMIP client key", kMaxKeyPem);
            tls_ = std::make_shared<const TlsContext>(settings_.ca_file, settings_.client_certificate, key, source);
            identity_ = client_identity(settings_.client_certificate);
        }
        return tls_;
    }

    std::string identity()
    {
        const std::lock_guard lock(tls_mutex_);
        return identity_.empty() ? client_identity(settings_.client_certificate) : identity_;
    }

    // The answer's status: success, or the mapped error (after asking the
    // key's state when an Encrypt/Decrypt was refused).
    void require_success(const Answer& a, Context ctx)
    {
        ctx.server = a.server;
        if (a.response.status == ResultStatus::success) {
            return;
        }
        KeyState state = KeyState::unknown;
        const Operation op = a.response.operation;
        if ((op == Operation::encrypt || op == Operation::decrypt) && !ctx.uid.empty() &&
            a.response.reason != reason::cryptographic_failure) {
            try {
                state = attributes(ctx).state;
            } catch (const Error&) {
                state = KeyState::unknown;  // the refusal itself is reported
            }
        }
        throw map_result(a.response, ctx, state);
    }

    Attributes attributes(const Context& ctx)
    {
        const auto a = call(get_attributes_request(ctx.uid), Operation::get_attributes, ctx);
        Context at = ctx;
        at.server = a->server;
        if (a->response.status != ResultStatus::success) {
            throw map_result(a->response, at, KeyState::unknown);
        }
        return parsed(*a, ctx, parse_get_attributes);
    }

    // Every object the filter matches, up to `limit`, a page per Locate
    // (Offset Items from the second page on).
    Located locate(const LocateFilter& filter, const Context& ctx, std::size_t limit)
    {
        Located out;
        const auto page = static_cast<std::uint32_t>(std::min<std::size_t>(kLocatePage, limit));
        for (std::uint32_t offset = 0; out.uids.size() < limit; offset += page) {
            const auto answer = call(locate_request(filter, page, offset), Operation::locate, ctx);
            require_success(*answer, ctx);
            if (out.server.empty()) {
                out.server = answer->server;
            }
            const std::vector<std::string> uids = parsed(*answer, ctx, parse_locate);
            std::size_t added = 0;
            for (const std::string& uid : uids) {
                if (std::find(out.uids.begin(), out.uids.end(), uid) != out.uids.end()) {
                    continue;
                }
                if (out.uids.size() == limit) {
                    return out;
                }
                out.uids.push_back(uid);
                ++added;
            }
            // A short page is the last; so is one that brings nothing new or
            // more than was asked (a server ignoring Offset or Maximum Items).
            if (uids.size() != page || added == 0) {
                return out;
            }
        }
        return out;
    }

    // The key's versions, oldest first (the primary last); Error(kms_key)
    // when no object carries the key id as its Name.
    std::vector<Version> versions(const Context& ctx)
    {
        const Located found = locate({ctx.key_id, std::nullopt}, ctx, kMaxObjects);
        std::vector<Version> out;
        for (const std::string& uid : found.uids) {
            Context at = ctx;
            at.uid = uid;
            if (auto a = attributes_if_present(at, {})) {
                out.push_back({uid, std::move(*a)});
            }
        }
        if (out.empty()) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": no KMIP object named '" + ctx.key_id + "' is visible to client '" +
                            ctx.identity + "' on " + (found.server.empty() ? "the KMIP server" : found.server),
                        "create the key (diskcrypt key create " + ctx.provider + ":" + ctx.key_id +
                            "), or check the key id and the KMIP server's policy");
        }
        std::sort(out.begin(), out.end(), older);
        return out;
    }

    static KeyInfo info(const std::string& key_id, const std::vector<Version>& found)
    {
        KeyInfo k;
        k.key_id = key_id;
        k.algorithm = algorithm_text(found.back().attributes);
        for (const Version& v : found) {
            KeyVersion kv;
            kv.version = v.uid;
            kv.state = std::string(state_name(v.attributes.state));
            kv.primary = &v == &found.back();
            kv.created = v.attributes.initial_date.value_or(0);
            k.versions.push_back(std::move(kv));
        }
        return k;
    }

    // A new active version under ctx.key_id, newer than `primary` (the
    // current one, if any); its Unique Identifier. A failure after Create
    // destroys the new object before it is reported: nothing is left half
    // made (unless the Destroy fails too, which the error then says).
    std::string new_version(Context ctx, const std::optional<Version>& primary)
    {
        for (int attempt = 1;; ++attempt) {
            ctx.uid.clear();
            const auto answer = call(create_request(ctx.key_id), Operation::create, ctx, Resend::never);
            require_success(*answer, ctx);
            ctx.uid = parsed(*answer, ctx, parse_create);
            try {
                try {
                    validate_key_version(ctx.uid);
                } catch (const Error&) {
                    throw Error(Errc::kms_key,
                                where(ctx) + ": KMIP server " + answer->server + " named the new object '" + ctx.uid +
                                    "', which cannot serve as a key version (1-64 of A-Z a-z 0-9 . _ -)",
                                "diskcrypt records the unique identifier in each disk header; use a KMIP server "
                                "whose identifiers fit");
                }
                if (primary) {
                    const Version made{ctx.uid, attributes(ctx)};
                    if (!older(*primary, made)) {
                        if (attempt < kRotateAttempts) {
                            log_debug(where(ctx) + ": new KMIP object " + ctx.uid + " of key '" + ctx.key_id +
                                      "' is not newer than version " + primary->uid + "; creating another");
                            change(Operation::destroy, destroy_request(ctx.uid), ctx);
                            std::this_thread::sleep_for(seconds(1));
                            continue;
                        }
                        throw Error(Errc::kms_key,
                                    where(ctx) + ": KMIP server " + answer->server + " dated the new object " +
                                        ctx.uid + " no later than version " + primary->uid + " of key '" + ctx.key_id +
                                        "', so it would not become the primary version",
                                    "check the KMIP servers' clocks, then rotate the key again");
                    }
                }
                change(Operation::activate, activate_request(ctx.uid), ctx);
            } catch (const Error& e) {
                throw discarded(ctx, e);
            }
            return ctx.uid;
        }
    }

    // Destroys the object a failed creation left (Pre-Active) and returns
    // `e`, which says whether that worked.
    Error discarded(const Context& ctx, const Error& e)
    {
        try {
            change(Operation::destroy, destroy_request(ctx.uid), ctx);
        } catch (const Error& d) {
            return {e.code(),
                    std::string(e.what()) + "; the new KMIP object " + ctx.uid + " named '" + ctx.key_id +
                        "' could not be destroyed (" + d.what() + ") and is left pre-active",
                    e.hint() + (e.hint().empty() ? "" : "; ") + "destroy KMIP object " + ctx.uid +
                        " with the server's tools"};
        }
        return {e.code(), std::string(e.what()) + "; the new KMIP object " + ctx.uid + " was destroyed again",
                e.hint()};
    }

    // Activate, Revoke or Destroy of ctx.uid. A refusal is read with the
    // object's state: when that shows the change made (an earlier attempt of
    // this request that got through, or another client), it is success.
    void change(Operation op, const SecureBuffer& request, const Context& ctx)
    {
        const auto answer = call(request, op, ctx);
        if (answer->response.status == ResultStatus::success) {
            parsed(*answer, ctx, [&](const Response& r) { parse_unique_identifier(r, ctx.uid); });
            return;
        }
        KeyState state = KeyState::unknown;
        bool gone = answer->response.reason == reason::item_not_found;
        if (!gone && answer->response.status == ResultStatus::operation_failed) {
            try {
                const auto a = attributes_if_present(ctx, kStateAttribute);
                gone = !a;
                state = a ? a->state : KeyState::unknown;
            } catch (const Error&) {
                state = KeyState::unknown;  // the refusal itself is reported
            }
        }
        const bool done = (op == Operation::activate && state == KeyState::active) ||
                          (op == Operation::revoke && (revoked(state) || gone)) ||
                          (op == Operation::destroy &&
                           (gone || state == KeyState::destroyed || state == KeyState::destroyed_compromised));
        if (done) {
            return;
        }
        Context at = ctx;
        at.server = answer->server;
        throw map_result(answer->response, at, state);
    }

    // The attributes named (the key attributes when none are), or nullopt
    // when the server has no such object (Item Not Found).
    std::optional<Attributes> attributes_if_present(const Context& ctx, std::span<const std::string_view> names)
    {
        const auto a = call(names.empty() ? get_attributes_request(ctx.uid) : get_attributes_request(ctx.uid, names),
                            Operation::get_attributes, ctx);
        if (a->response.status != ResultStatus::success) {
            if (a->response.status == ResultStatus::operation_failed && a->response.reason == reason::item_not_found) {
                return std::nullopt;
            }
            Context at = ctx;
            at.server = a->server;
            throw map_result(a->response, at, KeyState::unknown);
        }
        return parsed(*a, ctx, parse_get_attributes);
    }

    // A version whose state the server did not report cannot be judged:
    // Error rather than a guess.
    static void require_known_state(const Version& v, const Context& ctx)
    {
        if (v.attributes.state == KeyState::unknown) {
            throw Error(Errc::kms_unavailable,
                        where(ctx) + ": the KMIP server did not report a known State for " + key_text(ctx) +
                            " (version " + v.uid + ")",
                        "check the KMIP server; diskcrypt needs the KMIP 1.4 states");
        }
    }

    // A payload parsed, its DecodeError made an Error.
    template <typename Parse>
    static auto parsed(const Answer& a, const Context& ctx, Parse parse) -> decltype(parse(a.response))
    {
        try {
            return parse(a.response);
        } catch (const DecodeError& e) {
            const Operation op = a.response.operation;
            throw Error(Errc::kms_unavailable,
                        where(ctx) + ": KMIP server " + a.server + " answered " + std::string(operation_name(op)) +
                            " for " + key_text(ctx) +
                            " with a response diskcrypt cannot read: " + printable(e.what(), 512),
                        changes_objects(op) ? "the " + std::string(operation_name(op)) +
                                                  " may have taken effect: list the key to see its versions before "
                                                  "retrying"
                                            : "check that the server speaks KMIP 1.4, then retry");
        }
    }

    // Sites in the order to try: those without a recent failure first, each
    // group in configuration order.
    [[nodiscard]] std::vector<Site*> order() const
    {
        const Clock::rep now = Clock::now().time_since_epoch().count();
        const Clock::rep memory = std::chrono::duration_cast<Clock::duration>(settings_.failure_memory).count();
        std::vector<Site*> fresh;
        std::vector<Site*> failed;
        for (const auto& s : sites_) {
            const Clock::rep f = s->failed_at.load();
            (f != 0 && now - f < memory ? failed : fresh).push_back(s.get());
        }
        fresh.insert(fresh.end(), failed.begin(), failed.end());
        return fresh;
    }

    // One request, with retries and failover until the deadline. With
    // Resend::never, an attempt that may have reached the server ends it.
    std::unique_ptr<Answer> call(const SecureBuffer& request, Operation op, const Context& ctx,
                                 Resend resend = Resend::allowed)
    {
        const Clock::time_point deadline = Clock::now() + settings_.request_timeout;
        const std::shared_ptr<const TlsContext> context = tls();
        std::map<const Site*, Attempts> tried;
        std::vector<const Site*> tried_order;
        milliseconds backoff = kFirstBackoff;
        for (;;) {
            bool retry = false;
            for (Site* site : order()) {
                Attempts& at = tried[site];
                if (at.count == 0) {
                    tried_order.push_back(site);
                }
                if (at.count > 0 &&
                    (at.kind == Failure::certificate || at.kind == Failure::tls || at.kind == Failure::protocol)) {
                    continue;  // refused for good: not within this request
                }
                if (deadline - Clock::now() < kMinAttempt) {
                    break;  // no time left for an attempt worth making
                }
                try {
                    if (auto answer = exchange(*site, *context, request, op, deadline, resend)) {
                        site->failed_at.store(0);
                        return answer;
                    }
                    at.last = "no connection came free in time (pool_size " + std::to_string(site->pool.size()) +
                              ", all in use)";
                    at.kind = Failure::timeout;
                } catch (const TransportError& e) {
                    at.last = e.what();
                    at.kind = e.kind();
                } catch (const DecodeError& e) {
                    at.last = printable(e.what(), 512);
                    at.kind = Failure::protocol;
                } catch (const MaybeDone& e) {
                    site->failed_at.store(std::max<Clock::rep>(1, Clock::now().time_since_epoch().count()));
                    throw Error(Errc::kms_unavailable,
                                where(ctx) + ": KMIP server " + site->text + " did not answer " +
                                    std::string(operation_name(op)) + " for " + key_text(ctx) + " (" + e.what() +
                                    "); it may have carried it out, so it was not sent again",
                                "list the key: a pre-active version this left behind is activated by enabling the "
                                "key, or can be destroyed with the server's tools");
                }
                ++at.count;
                site->failed_at.store(std::max<Clock::rep>(1, Clock::now().time_since_epoch().count()));
                log_debug(where(ctx) + ": KMIP " + std::string(operation_name(op)) + " via " + site->text +
                          " failed: " + at.last);
                retry = retry ||
                        (at.kind != Failure::certificate && at.kind != Failure::tls && at.kind != Failure::protocol);
            }
            const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
            if (!retry || left <= kMinAttempt) {
                break;
            }
            std::this_thread::sleep_for(std::min(jitter(backoff), left - kMinAttempt));
            backoff = std::min(backoff * 2, kMaxBackoff);
        }
        throw unreachable(op, ctx, tried, tried_order);
    }

    // One attempt on one site; a stale pooled connection is replaced once.
    std::unique_ptr<Answer> exchange(Site& site, const TlsContext& context, const SecureBuffer& request, Operation op,
                                     Clock::time_point deadline, Resend resend)
    {
        const auto make = [&] {
            auto c = Connection::open(context, site.endpoint, site.server_name,
                                      std::min(deadline, Clock::now() + settings_.connect_timeout));
            log_debug("provider '" + name_ + "': connected to KMIP server " + site.text + " (" + c->cipher() + ")");
            if (!c->forward_secret() && !site.warned_cipher.exchange(true)) {
                log_warning("provider '" + name_ + "': KMIP server " + site.text + " negotiated " + c->cipher() +
                            ", which is not forward secret; configure it to offer ECDHE suites");
            }
            return c;
        };
        for (int attempt = 0;; ++attempt) {
            auto taken = site.pool.take(deadline, make);
            if (!taken) {
                return nullptr;
            }
            Pool<Connection>::Lease& lease = *taken;
            if (lease.reused() && !lease->idle_ok()) {
                lease.discard();  // closed by the server while idle
                continue;
            }
            try {
                auto a = std::make_unique<Answer>();
                a->message = lease->round_trip(request.span(), kMaxResponse,
                                               std::min(deadline, Clock::now() + settings_.read_timeout));
                a->root = decode(a->message.span());
                a->response = parse_response(a->root, op);
                a->server = site.text;
                return a;
            } catch (const TransportError& e) {
                lease.discard();
                if (resend == Resend::never) {
                    throw MaybeDone(e.what());
                }
                // A pooled connection the server dropped meanwhile: once more on a new one.
                if (lease.reused() && attempt == 0 && e.kind() == Failure::closed) {
                    continue;
                }
                throw;
            } catch (const DecodeError& e) {
                lease.discard();
                if (resend == Resend::never) {
                    throw MaybeDone(printable(e.what(), 512));
                }
                throw;
            }
        }
    }

    [[nodiscard]] Error unreachable(Operation op, const Context& ctx, const std::map<const Site*, Attempts>& tried,
                                    const std::vector<const Site*>& tried_order) const
    {
        std::string list;
        bool all_tls = true;
        for (const Site* s : tried_order) {
            const Attempts& a = tried.at(s);
            if (a.count == 0) {
                continue;
            }
            all_tls = all_tls && (a.kind == Failure::certificate || a.kind == Failure::tls);
            list += std::string(list.empty() ? "" : "; ") + s->text + ": " + a.last +
                    (a.count > 1 ? " (" + std::to_string(a.count) + " attempts)" : "");
        }
        if (list.empty()) {
            list = "no attempt fitted in the time";
            all_tls = false;
        }
        const std::string what = where(ctx) + ": no KMIP server completed " + std::string(operation_name(op)) +
                                 " for " + key_text(ctx) + " within " +
                                 std::to_string(settings_.request_timeout.count()) + " s; tried " + list;
        if (all_tls) {
            return {Errc::kms_auth, what,
                    "check ca_file, server_name and the client certificate: it needs extendedKeyUsage clientAuth "
                    "and a CA the server trusts"};
        }
        return {Errc::kms_unavailable, what,
                "check that the KMIP servers run and are reachable from this host, then retry; nothing was changed"};
    }

    std::string name_;
    Settings settings_;
    std::vector<std::unique_ptr<Site>> sites_;
    std::mutex tls_mutex_;
    std::shared_ptr<const TlsContext> tls_;
    std::string identity_;
};

seconds seconds_option(ConfigSection& options, std::string_view key, unsigned min, unsigned max, unsigned fallback)
{
    const auto v = options.optional_unsigned(key, max);
    if (v && *v < min) {
        throw options.error_at(key, "must be from " + std::to_string(min) + " to " + std::to_string(max));
    }
    return seconds(v.value_or(fallback));
}

std::unique_ptr<Provider> create(const std::string& name, ConfigSection& options)
{
    Settings s;
    const auto endpoints = options.optional_string_list("endpoints");
    if (!endpoints || endpoints->empty()) {
        throw options.error_at("endpoints", "a KMIP provider needs endpoints = [\"host:port\", ...]");
    }
    if (endpoints->size() > kMaxEndpoints) {
        throw options.error_at("endpoints", "at most " + std::to_string(kMaxEndpoints) + " endpoints");
    }
    for (const std::string& e : *endpoints) {
        try {
            s.endpoints.push_back(parse_endpoint(e));
        } catch (const std::invalid_argument& why) {
            throw options.error_at("endpoints", "endpoint '" + printable(e, 300) + "': " + why.what());
        }
    }
    s.server_name = options.optional_string("server_name");
    if (s.server_name) {
        try {
            (void)parse_endpoint(*s.server_name + ":1");
        } catch (const std::invalid_argument&) {
            throw options.error_at("server_name", "not a host name or IP address");
        }
    }
    s.ca_file = options.required_path("ca_file");
    s.client_certificate = options.required_path("client_certificate");
    s.key_file = options.optional_path("client_key_file");
    s.key_credential = options.optional_string("client_key_credential");
    if (s.key_file && s.key_credential) {
        throw options.error_at("client_key_credential",
                               "set either client_key_file or client_key_credential, not both");
    }
    if (!s.key_file && !s.key_credential) {
        throw options.error(
            "missing client key: set client_key_file (a root-only PEM file) or client_key_credential (a systemd "
            "credential name)");
    }
    if (s.key_credential && !is_credential_name(*s.key_credential)) {
        throw options.error_at("client_key_credential", "a credential name has 1-64 characters from A-Z a-z 0-9 . _ -");
    }
    const auto pool = options.optional_unsigned("pool_size", 64);
    if (pool && *pool == 0) {
        throw options.error_at("pool_size", "must be from 1 to 64");
    }
    s.pool_size = pool.value_or(4);
    s.request_timeout = seconds_option(options, "request_timeout", 1, 600, 10);
    s.connect_timeout = seconds_option(options, "connect_timeout", 1, 60, 3);
    s.read_timeout = seconds_option(options, "read_timeout", 1, 600, 5);
    s.failure_memory = seconds_option(options, "failure_memory", 0, 3600, 30);
    if (s.connect_timeout > s.request_timeout) {
        throw options.error_at("connect_timeout", "must not exceed request_timeout");
    }
    if (s.read_timeout > s.request_timeout) {
        throw options.error_at("read_timeout", "must not exceed request_timeout");
    }
    return std::make_unique<KmipProvider>(name, std::move(s));
}

// Self-registration: the agent library is linked as objects, so this runs.
[[maybe_unused]] const bool kRegistered = register_provider_type(std::string(kType), create);

}  // namespace

}  // namespace diskcrypt::kms::kmip
