// Audit events: every format, wrap, unwrap, verify, attach, detach and every
// refusal is one event naming the disk, the service account, the key and its
// version, the caller, the result and the reason. Never a secret.
//
// Sinks: under systemd (JOURNAL_STREAM or INVOCATION_ID set) the journal,
// with DISKCRYPT_* fields (sd_journal_send); a JSON-lines file when [audit]
// file is configured (one write per line, O_APPEND); with neither, the
// agent's log (stderr) as "audit: {json}".
//
// A request sets a thread-local Context (caller, op, disk, service account)
// that operations fill in as they learn more (key, LUKS UUID); the KMS call
// sites emit wrap/unwrap events from it, and the request handler emits the
// operation's event at the end.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/error.hpp"
#include "agent/names.hpp"

namespace diskcrypt::audit {

enum class Journal { automatic, always, never };

struct Settings {
    std::optional<std::string> file;  // [audit] file
    Journal journal = Journal::automatic;
};

struct Context {
    std::string op;  // "format", "attach", ...
    uid_t uid = 0;
    pid_t pid = 0;
    std::string disk_id;
    std::string service_account;
    std::string device;
    std::optional<KeyRef> key;
    std::string luks_uuid;
    std::string user;             // format: the acting user the control plane names
    std::string policy_revision;  // the access policy's revision a decision was made under
    long long kms_us = 0;         // time this request spent in KMS calls (kms_call), microseconds
};

struct Event {
    std::string event;   // format, wrap, unwrap, verify, attach, detach
    std::string result;  // "ok", "refused" or "failed"
    Context context;
    std::string reason;   // error code name (empty when ok)
    std::string message;  // error message, or a short note when ok
};

// Whether an error is a refusal (the request was judged and denied: bad
// arguments, permission, binding, busy, conflict) or a failure.
bool is_refusal(Errc code);

// The event as one JSON object (time, event, result, disk_id,
// service_account, user, key{provider,id,version}, caller{uid,pid}, device,
// luks_uuid, policy_revision, reason, message); empty fields are null.
nlohmann::ordered_json to_json(const Event& e, const std::string& time);
// The event as journal fields, "NAME=value" (MESSAGE, PRIORITY,
// SYSLOG_IDENTIFIER, DISKCRYPT_EVENT, DISKCRYPT_RESULT, DISKCRYPT_DISK_ID, ...).
std::vector<std::string> journal_fields(const Event& e);

// Configures the process's sinks (validated at start: the file's folder must
// exist and the file be writable; Error(config) otherwise).
void configure(const Settings& settings);
// Sends one event to the configured sinks. Never throws.
void emit(const Event& e) noexcept;

// The current request's context (nullptr outside a request).
Context* current();

// Sets the thread's context for the lifetime of the scope.
class Scope {
public:
    explicit Scope(Context context);
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
    Scope(Scope&&) = delete;
    Scope& operator=(Scope&&) = delete;
    ~Scope();
    Context& context() { return context_; }

private:
    Context context_;
    Context* previous_;
};

// Emits a KMS event ("wrap" or "unwrap") for the current request, with the
// outcome of `fn` (rethrowing its error). Outside a request, just runs fn.
template <typename F>
auto kms_call(std::string_view what, const KeyRef& key, F&& fn)
{
    Context* ctx = current();
    if (ctx == nullptr) {
        return std::forward<F>(fn)();
    }
    Event e{std::string(what), "ok", *ctx, {}, {}};
    e.context.key = key;
    const auto started = std::chrono::steady_clock::now();
    const auto account = [&] {
        ctx->kms_us +=
            std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count();
    };
    try {
        auto r = std::forward<F>(fn)();
        account();
        emit(e);
        return r;
    } catch (const Error& err) {
        account();
        e.result = is_refusal(err.code()) ? "refused" : "failed";
        e.reason = std::string(errc_name(err.code()));
        e.message = err.what();
        emit(e);
        throw;
    }
}

}  // namespace diskcrypt::audit
