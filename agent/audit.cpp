#include "agent/audit.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <mutex>

#include "agent/disk/token.hpp"
#include "agent/log.hpp"
#include "agent/raii.hpp"
#include "agent/text.hpp"

namespace diskcrypt::audit {

namespace {

struct State {
    std::mutex mutex;
    Settings settings;  // guarded by mutex
    bool journal = false;
};

State& state()
{
    static State s;
    return s;
}

// The current request's context, per thread (set by Scope).
thread_local Context* tls_context = nullptr;  // NOLINT(cppcoreguidelines-avoid-non-const-global-variables)

nlohmann::ordered_json or_null(const std::string& s)
{
    return s.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s);
}

bool under_systemd()
{
    return std::getenv("JOURNAL_STREAM") != nullptr ||
           std::getenv("INVOCATION_ID") != nullptr;  // NOLINT(concurrency-mt-unsafe)
}

std::string summary(const Event& e)
{
    std::string s = "audit: " + e.event + " " + e.result;
    if (!e.context.disk_id.empty()) {
        s += " disk=" + e.context.disk_id;
    }
    if (e.context.key) {
        s += " key=" + e.context.key->spec() + (e.context.key->version.empty() ? "" : "@" + e.context.key->version);
    }
    s += " uid=" + std::to_string(e.context.uid) + " pid=" + std::to_string(e.context.pid);
    if (!e.reason.empty()) {
        s += " reason=" + e.reason;
    }
    return s;
}

// The sinks' safety net: every string of an event is printable ASCII before it
// reaches the journal, the file or the log, whatever a caller put into it.
Event cleaned(const Event& e)
{
    Event c = e;
    for (std::string* s :
         {&c.event, &c.result, &c.reason, &c.message, &c.context.op, &c.context.disk_id, &c.context.service_account,
          &c.context.device, &c.context.luks_uuid, &c.context.user, &c.context.policy_revision}) {
        *s = sanitize(*s);
    }
    if (c.context.key) {
        for (std::string* s : {&c.context.key->provider, &c.context.key->key_id, &c.context.key->version}) {
            *s = sanitize(*s);
        }
    }
    return c;
}

}  // namespace

bool is_refusal(Errc code)
{
    switch (code) {
        case Errc::usage:
        case Errc::permission_denied:
        case Errc::access_denied:
        case Errc::binding:
        case Errc::busy:
        case Errc::conflict:
        case Errc::not_attached:
        case Errc::device_not_empty:
        case Errc::incomplete:
        case Errc::not_supported:
            return true;
        default:
            return false;
    }
}

nlohmann::ordered_json to_json(const Event& event, const std::string& time)
{
    const Event e = cleaned(event);
    const Context& c = e.context;
    nlohmann::ordered_json j = {
        {"time", time},
        {"event", e.event},
        {"result", e.result},
        {"op", or_null(c.op)},
        {"disk_id", or_null(c.disk_id)},
        {"service_account", or_null(c.service_account)},
        {"user", or_null(c.user)},
        {"caller", {{"uid", c.uid}, {"pid", c.pid}}},
        {"device", or_null(c.device)},
        {"luks_uuid", or_null(c.luks_uuid)},
        {"policy_revision", or_null(c.policy_revision)},
        {"reason", or_null(e.reason)},
        {"message", or_null(e.message)},
    };
    if (c.key) {
        j["key"] = nlohmann::ordered_json{
            {"provider", c.key->provider}, {"id", c.key->key_id}, {"version", or_null(c.key->version)}};
    } else {
        j["key"] = nullptr;
    }
    return j;
}

std::vector<std::string> journal_fields(const Event& event)
{
    const Event e = cleaned(event);
    const Context& c = e.context;
    std::vector<std::string> f;
    f.push_back("MESSAGE=" + summary(e) + (e.message.empty() ? "" : ": " + e.message));
    std::string priority = "4";  // warning: failed
    if (e.result == "ok") {
        priority = "6";  // info
    } else if (e.result == "refused") {
        priority = "5";  // notice
    }
    f.push_back("PRIORITY=" + priority);
    f.emplace_back("SYSLOG_IDENTIFIER=diskcrypt-agent");
    f.push_back("DISKCRYPT_EVENT=" + e.event);
    f.push_back("DISKCRYPT_RESULT=" + e.result);
    const std::vector<std::pair<const char*, std::string>> optional = {
        {"DISKCRYPT_OP", c.op},
        {"DISKCRYPT_DISK_ID", c.disk_id},
        {"DISKCRYPT_SERVICE_ACCOUNT", c.service_account},
        {"DISKCRYPT_USER", c.user},
        {"DISKCRYPT_POLICY_REVISION", c.policy_revision},
        {"DISKCRYPT_DEVICE", c.device},
        {"DISKCRYPT_LUKS_UUID", c.luks_uuid},
        {"DISKCRYPT_KEY_PROVIDER", c.key ? c.key->provider : ""},
        {"DISKCRYPT_KEY_ID", c.key ? c.key->key_id : ""},
        {"DISKCRYPT_KEY_VERSION", c.key ? c.key->version : ""},
        {"DISKCRYPT_REASON", e.reason},
    };
    for (const auto& [name, value] : optional) {
        if (!value.empty()) {
            f.push_back(std::string(name) + "=" + value);
        }
    }
    f.push_back("DISKCRYPT_CALLER_UID=" + std::to_string(c.uid));
    f.push_back("DISKCRYPT_CALLER_PID=" + std::to_string(c.pid));
    return f;
}

void configure(const Settings& settings)
{
    if (settings.file) {
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
        const FileDescriptor fd(open(settings.file->c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
        if (!fd) {
            throw Error(Errc::config, errno_text("cannot open the audit file " + *settings.file, errno),
                        "create its folder, or change [audit] file");
        }
    }
    State& st = state();
    const std::lock_guard lock(st.mutex);
    st.settings = settings;
    st.journal = settings.journal == Journal::always || (settings.journal == Journal::automatic && under_systemd());
}

void emit(const Event& e) noexcept
{
    try {
        State& st = state();
        const std::lock_guard lock(st.mutex);
        bool delivered = false;
        if (st.journal) {
            const std::vector<std::string> fields = journal_fields(e);
            std::vector<iovec> iov;
            iov.reserve(fields.size());
            for (const auto& f : fields) {
                // NOLINTNEXTLINE(cppcoreguidelines-pro-type-const-cast): iovec is not const-correct
                iov.push_back({const_cast<char*>(f.data()), f.size()});
            }
            const int r = sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
            delivered = r >= 0;
            if (r < 0) {
                log_warning(errno_text("audit: cannot write to the journal", -r));
            }
        }
        if (st.settings.file) {
            const std::string line =
                to_json(e, utc_timestamp()).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) +
                "\n";
            // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
            const FileDescriptor fd(open(st.settings.file->c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
            if (fd && ::write(fd.get(), line.data(), line.size()) == static_cast<ssize_t>(line.size())) {
                delivered = true;
            } else {
                log_error(errno_text("audit: cannot append to " + *st.settings.file, errno) + "; event follows");
            }
        }
        if (!delivered) {
            log_info(
                "audit: " +
                to_json(e, utc_timestamp()).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
        }
    } catch (...) {  // NOLINT(bugprone-empty-catch): an audit failure must not end a request
        log_error("audit: cannot format an event");
    }
}

Context* current() { return tls_context; }

Scope::Scope(Context context) : context_(std::move(context)), previous_(tls_context) { tls_context = &context_; }

Scope::~Scope() { tls_context = previous_; }

}  // namespace diskcrypt::audit
