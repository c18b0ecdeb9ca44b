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

std::string where(const Context& ctx) { return "provider '" + ctx.provider + "'"; }

std::string key_text(const Context& ctx)
{
    return "key '" + ctx.key_id + "'" + (ctx.uid.empty() ? "" : " (KMIP object " + ctx.uid + ")");
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
    if (r.status == ResultStatus::operation_pending || r.status == ResultStatus::operation_undone) {
        return {Errc::kms_unavailable, at + " did not complete " + op + said,
                "diskcrypt does not use asynchronous KMIP operations; check the server's configuration"};
    }
    if (state != KeyState::unknown && state != KeyState::active &&
        (r.operation == Operation::encrypt || r.operation == Operation::decrypt)) {
        return {Errc::kms_key,
                at + " refused " + op + ": " + key_text(ctx) + " is " + std::string(state_name(state)) +
                    ", not active" + said,
                state == KeyState::pre_active ? "activate the key on the KMIP server"
                                              : "a key that was revoked or destroyed cannot unwrap; restore the "
                                                "disk's key from the KMS administrator's backup, or use another key"};
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
                    "the KMS administrator must allow this client certificate to use the key"};
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
                    "the key must be an active AES-256 key whose usage allows encrypt and decrypt"};
        case reason::operation_not_supported:
        case reason::feature_not_supported:
        case reason::invalid_field:
        case reason::invalid_message:
        case reason::missing_data:
            return {Errc::kms_unavailable, at + " does not support " + op + " as diskcrypt uses it" + said,
                    "diskcrypt needs KMIP 1.4 Encrypt/Decrypt with AES-GCM, a 12-byte IV and additional data"};
        default:
            break;
    }
    return {Errc::kms_unavailable, at + ": " + op + " with " + key_text(ctx) + " failed" + said,
            "check the KMIP server and its logs, then retry"};
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
        const auto found = call(locate_request(key_id, 2), Operation::locate, ctx);
        require_success(*found, ctx);
        const std::vector<std::string> uids = parse_locate(found->response);
        if (uids.empty()) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": no KMIP object named '" + ctx.key_id + "' is visible to client '" +
                            ctx.identity + "' on " + found->server,
                        "create the key on the KMIP server with this Name, or check the key id and the "
                        "server's policy");
        }
        if (uids.size() > 1) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": more than one KMIP object is named '" + ctx.key_id + "' on " + found->server +
                            "; diskcrypt needs exactly one",
                        "remove or rename the duplicates");
        }
        ctx.uid = uids.front();
        try {
            validate_key_version(ctx.uid);
        } catch (const Error&) {
            throw Error(Errc::kms_key,
                        where(ctx) + ": the KMIP unique identifier of key '" + ctx.key_id +
                            "' cannot serve as its version (1-64 of A-Z a-z 0-9 . _ -)",
                        "diskcrypt records the unique identifier in each disk header");
        }
        const Attributes a = attributes(ctx);
        KeyDescription d;
        d.provider_type = std::string(kType);
        d.key_id = ctx.key_id;
        d.version = ctx.uid;
        d.algorithm = a.algorithm == kAlgorithmAes ? "AES-" + std::to_string(a.length.value_or(0)) : "not AES";
        d.state = std::string(state_name(a.state));
        d.enabled = a.state == KeyState::active;
        const std::int32_t mask = a.usage_mask.value_or(kUsageEncrypt | kUsageDecrypt);
        d.can_encrypt = (mask & static_cast<std::int32_t>(kUsageEncrypt)) != 0;
        d.can_decrypt = (mask & static_cast<std::int32_t>(kUsageDecrypt)) != 0;
        d.extractable = true;  // KMIP does not say; PyKMIP lets a decrypting client Get the key
        if (d.algorithm != "AES-256") {
            throw Error(Errc::kms_key, where(ctx) + ": " + key_text(ctx) + " is " + d.algorithm + ", not AES-256",
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
        const EncryptResult r = parse_encrypt(answer->response);
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
        const DecryptResult r = parse_decrypt(answer->response);
        if (r.data.size() != wrapped.ciphertext.size()) {
            throw Error(Errc::kms_unavailable, where(ctx) + ": KMIP server " + answer->server + " returned " +
                                                   std::to_string(r.data.size()) + " bytes, expected " +
                                                   std::to_string(wrapped.ciphertext.size()));
        }
        SecureBuffer out(r.data.size());
        std::copy(r.data.begin(), r.data.end(), out.data());
        return out;
    }

private:
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
        return parse_get_attributes(a->response);
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

    // One request, with retries and failover until the deadline.
    std::unique_ptr<Answer> call(const SecureBuffer& request, Operation op, const Context& ctx)
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
                    if (auto answer = exchange(*site, *context, request, op, deadline)) {
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
                                     Clock::time_point deadline)
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
                // A pooled connection the server dropped meanwhile: once more on a new one.
                if (lease.reused() && attempt == 0 && e.kind() == Failure::closed) {
                    continue;
                }
                throw;
            } catch (const DecodeError&) {
                lease.discard();
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
                                 " for key '" + ctx.key_id + "' within " +
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
