#include "agent/ipc/server.hpp"

#include <grp.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <system_error>
#include <thread>

#include "agent/audit.hpp"
#include "agent/audit_query.hpp"
#include "agent/disk_lock.hpp"
#include "agent/dm.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/log.hpp"
#include "agent/ops/attach.hpp"
#include "agent/ops/auto_attach.hpp"
#include "agent/ops/copy.hpp"
#include "agent/ops/format.hpp"
#include "agent/ops/import.hpp"
#include "agent/ops/key.hpp"
#include "agent/ops/recover.hpp"
#include "agent/ops/revocation.hpp"
#include "agent/ops/rewrap.hpp"
#include "agent/ops/verify.hpp"
#include "agent/secure_buffer.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

using nlohmann::json;

bool may(const ServerState& state, const Peer& peer, const std::string& op)
{
    if (peer.uid == 0) {
        return true;
    }
    if ((op == "status" || op == "list") && state.status_group) {
        const gid_t gid = state.status_group->gid;
        return peer.gid == gid || std::find(peer.groups.begin(), peer.groups.end(), gid) != peer.groups.end();
    }
    return false;
}

// The number of attached disks, or null without device-mapper.
json attached_count()
{
    if (!dm::available()) {
        return nullptr;
    }
    try {
        return list_disks(false).size();
    } catch (const Error& e) {
        log_warning(std::string("status: cannot list mappings: ") + e.what());
        return nullptr;
    }
}

// The access policy in force, for status: where it comes from, its revision
// and its size.
json policy_status(const AgentConfig& cfg)
{
    const auto p = cfg.policy();
    return json{{"source", cfg.policy_source ? json(cfg.policy_source->describe()) : json(nullptr)},
                {"revision", p->revision()},
                {"bindings", p->binding_count()}};
}

json revocation_status(const AgentConfig& cfg)
{
    json keys = json::object();
    for (const auto& [spec, mode] : cfg.revocation.keys) {
        keys[spec] = revocation_mode_name(mode);
    }
    const auto last = last_revocation_check();
    return {{"mode", revocation_mode_name(cfg.revocation.mode)},
            {"interval_s", cfg.revocation.interval.count()},
            {"keys", keys},
            {"last_check", last ? json(*last) : json(nullptr)}};
}

json status(const AgentConfig& cfg, const ServerState& state)
{
    json providers = json::array();
    for (const auto& [name, p] : cfg.providers) {
        providers.push_back({{"name", name}, {"type", p->type()}});
    }
    const auto up = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - state.started);
    return {
        {"agent", "diskcrypt-agent"},
        {"version", kAgentVersion},
        {"protocol", proto::kVersion},
        {"pid", getpid()},
        {"uptime_s", up.count()},
        {"dumpable", process_dumpable()},
        {"config", cfg.source},
        {"socket", cfg.socket_path},
        {"status_group", state.status_group ? json(state.status_group->name) : json(nullptr)},
        {"default_key", cfg.default_key ? json(cfg.default_key->spec()) : json(nullptr)},
        {"policy", policy_status(cfg)},
        {"providers", providers},
        {"device_mapper", dm::available()},
        {"attached", attached_count()},
        {"revocation", revocation_status(cfg)},
    };
}

std::string describe_args(const proto::Request& r)
{
    std::string out;
    for (const char* key : {"device", "devno", "disk_id", "type", "key", "service_account", "user", "after"}) {
        if (const auto it = r.args.find(key); it != r.args.end() && it->is_string()) {
            // Peer text, quoted and made printable.
            out += std::string(" ") + key + "=\"" + printable(it->get<std::string>()) + "\"";
        }
    }
    return out;
}

std::string peer_text(const Peer& p) { return "uid=" + std::to_string(p.uid) + " pid=" + std::to_string(p.pid); }

std::optional<StatusGroup> configured_group(const AgentConfig& cfg)
{
    if (!cfg.status_group) {
        return std::nullopt;
    }
    return StatusGroup{cfg.status_gid, *cfg.status_group};
}

std::string group_name(gid_t gid)
{
    std::vector<char> buf(16384);
    group gr{};
    group* found = nullptr;
    if (getgrgid_r(gid, &gr, buf.data(), buf.size(), &found) == 0 && found != nullptr) {
        return printable(found->gr_name);
    }
    return std::to_string(gid);
}

std::string mode_text(mode_t mode)
{
    std::string out = "0";
    for (const unsigned shift : {6U, 3U, 0U}) {
        out.push_back(static_cast<char>('0' + ((mode >> shift) & 7U)));
    }
    return out;
}

// One summary audit event and log line for the refusals of a connection.
audit::Context caller_context(const Peer& peer, const std::string& op)
{
    audit::Context c;
    c.op = op;
    c.uid = peer.uid;
    c.pid = peer.pid;
    return c;
}

void report_refusals(const Peer& peer, const std::string& first_op, Errc code, std::size_t count,
                     const std::string& first_message)
{
    if (count == 0) {
        return;
    }
    const std::string what =
        count == 1 ? first_message
                   : std::to_string(count) + " requests refused on one connection; the first: " + first_message;
    log_warning("request " + first_op + " from " + peer_text(peer) + " refused (" + std::string(errc_name(code)) +
                "): " + what);
    audit::emit(audit::Event{first_op == "?" ? "request" : first_op, "refused",
                             caller_context(peer, first_op == "?" ? "" : first_op), std::string(errc_name(code)),
                             what});
}

// The refusals of one connection, by reason.
struct RefusalCount {
    std::size_t count = 0;
    std::string op;
    std::string message;
};

// systemd's service watchdog: enabled when the unit sets WatchdogSec= (the
// manager passes WATCHDOG_USEC and WATCHDOG_PID).
class Watchdog {
public:
    static Watchdog from_environment()
    {
        std::uint64_t usec = 0;
        Watchdog w;
        if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
            // At least 1 ms: a 1 us interval must not become a busy loop.
            w.half_ =
                std::max(std::chrono::milliseconds(1),
                         std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::microseconds(usec / 2)));
        }
        return w;
    }
    [[nodiscard]] bool enabled() const { return half_.count() > 0; }
    [[nodiscard]] std::chrono::milliseconds half_interval() const { return half_; }
    // poll()'s timeout until the next ping is due (0 when it is).
    [[nodiscard]] static int poll_timeout_ms(std::chrono::steady_clock::time_point next)
    {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(next - std::chrono::steady_clock::now()).count();
        return static_cast<int>(std::clamp<std::int64_t>(left + 1, 0, 60'000));
    }

private:
    std::chrono::milliseconds half_{0};
};

}  // namespace

Peer peer_of(int fd)
{
    Peer p;
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        throw Error(Errc::internal, errno_text("SO_PEERCRED", errno));
    }
    p.pid = cred.pid;
    p.uid = cred.uid;
    p.gid = cred.gid;
    std::vector<gid_t> groups(64);
    auto glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
        groups.resize(glen / sizeof(gid_t));
        p.groups = std::move(groups);
    } else if (errno == ERANGE) {
        groups.resize(glen / sizeof(gid_t) + 1);
        glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
            groups.resize(glen / sizeof(gid_t));
            p.groups = std::move(groups);
        }
    }
    return p;
}

json list_page(std::vector<DiskInfo> disks, const std::optional<std::string>& after, std::size_t budget,
               const std::function<void(DiskInfo&)>& add_header)
{
    json page = json::array();
    std::size_t used = 0;
    std::optional<std::string> next;
    std::string last;
    for (auto& d : disks) {
        if (after && d.disk_id <= *after) {
            continue;
        }
        if (next) {
            break;
        }
        add_header(d);
        json entry = to_json(d);
        const std::size_t size = proto::dump_json(entry).size() + 1;
        if (!page.empty() && used + size > budget) {
            next = last;  // this disk and the rest: the next page
            break;
        }
        used += size;
        last = d.disk_id;
        page.push_back(std::move(entry));
    }
    json result = {{"disks", std::move(page)}};
    if (next) {
        result["next"] = *next;
    }
    return result;
}

std::optional<StatusGroup> status_group_of_socket(int listen_fd, std::string& path)
{
    path.clear();
    sockaddr_un addr{};
    socklen_t len = sizeof(addr);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
    if (getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0 || addr.sun_family != AF_UNIX ||
        len <= offsetof(sockaddr_un, sun_path) || addr.sun_path[0] == '\0') {
        return std::nullopt;  // unnamed or abstract: no file, no group
    }
    path.assign(&addr.sun_path[0], strnlen(&addr.sun_path[0], len - offsetof(sockaddr_un, sun_path)));
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
        return std::nullopt;
    }
    if ((st.st_mode & 0060U) != 0060U || st.st_gid == 0) {
        return std::nullopt;
    }
    return StatusGroup{st.st_gid, group_name(st.st_gid)};
}

std::optional<StatusGroup> activated_status_group(const AgentConfig& cfg, const std::string& path,
                                                  const std::optional<StatusGroup>& from_socket)
{
    if (!cfg.status_group || (from_socket && from_socket->gid == cfg.status_gid)) {
        return from_socket;
    }
    struct stat st {};
    const std::string file =
        path.empty() ? "the socket systemd passed (it has no file)"
        : stat(path.c_str(), &st) == 0
            ? printable(path) + " (mode " + mode_text(st.st_mode & 07777U) + ", group " + group_name(st.st_gid) + ")"
            : printable(path);
    const std::string granted =
        from_socket ? "group " + from_socket->name + " (gid " + std::to_string(from_socket->gid) + ")" : "no group";
    throw Error(Errc::config,
                "[agent] status_group = \"" + printable(*cfg.status_group) + "\" (gid " +
                    std::to_string(cfg.status_gid) + ") disagrees with the socket systemd passed: " + file +
                    " grants status and list to " + granted,
                "under socket activation the socket file decides: set SocketGroup=" + printable(*cfg.status_group) +
                    " and SocketMode=0660 in diskcrypt-agent.socket, or remove status_group from " + cfg.source);
}

Handled handle(const AgentConfig& cfg, const ServerState& state, const Peer& peer, std::string_view request)
{
    NoChannel none;
    return handle(cfg, state, peer, request, none);
}

Handled handle(const AgentConfig& cfg, const ServerState& state, const Peer& peer, std::string_view request,
               OpChannel& channel)
{
    Handled out;
    out.op = "?";
    audit::Scope scope(caller_context(peer, ""));
    audit::Context& ctx = scope.context();
    bool audited = false;  // whether an outcome of this op is an audit event
    try {
        const proto::Request r = proto::parse_request(request);
        out.op = r.op;
        ctx.op = r.op;
        for (const auto& [field, target] :
             {std::pair{"disk_id", &ctx.disk_id}, std::pair{"service_account", &ctx.service_account},
              std::pair{"device", &ctx.device}, std::pair{"user", &ctx.user}}) {
            if (const auto it = r.args.find(field); it != r.args.end() && it->is_string()) {
                *target = printable(it->get<std::string>());
            }
        }
        if (!may(state, peer, r.op)) {
            throw Error(Errc::permission_denied,
                        "op '" + r.op + "' is not allowed for uid " + std::to_string(peer.uid) + " (pid " +
                            std::to_string(peer.pid) + ")",
                        r.op == "status" || r.op == "list"
                            ? "status and list are open to root and to members of the agent's status_group"
                            : "run it as root");
        }
        // Reading the audit trail is audited once per command, at its first page.
        audited = r.op != "status" && r.op != "list" && !(r.op == "audit" && r.args.contains("after"));
        if (audited) {
            log_info("request " + r.op + " from " + peer_text(peer) + describe_args(r));
        }
        json result;
        std::string note;
        SecureBuffer secret;  // recover's, sent after the response text
        if (r.op == "status") {
            const proto::StatusArgs a = proto::status_args(r.args);
            result = a.disk_id ? to_json(disk_status(*a.disk_id)) : status(cfg, state);
        } else if (r.op == "list") {
            const proto::ListArgs a = proto::list_args(r.args);
            if (a.after) {
                validate_disk_id(*a.after, "list argument 'after'");
            }
            // The cheap device-mapper part for every disk, the headers only
            // for the disks on this page.
            result =
                list_page(list_disks(false), a.after, proto::kListPageBudget, [](DiskInfo& d) { add_header_info(d); });
        } else if (r.op == "format") {
            const FormatResult f = format_disk(cfg, proto::format_args(r.args));
            ctx.luks_uuid = f.luks_uuid;
            log_info("format done: disk=" + f.disk_id + " device=" + f.device + " luks_uuid=" + f.luks_uuid +
                     " key=" + f.key.spec() + " version=" + f.key.version +
                     " sector_size=" + std::to_string(f.sector_size) + " usable=" + std::to_string(f.usable_size) +
                     (f.destroyed.empty() ? "" : " destroyed=" + std::to_string(f.destroyed.size())) + " in " +
                     std::to_string(f.elapsed_ms) + " ms");
            result = to_json(f);
        } else if (r.op == "verify") {
            const VerifyResult v = verify_disk(cfg, proto::verify_args(r.args));
            log_info("verify done: disk=" + v.header.token.disk_id + " device=" + v.header.device +
                     " luks_uuid=" + v.header.luks_uuid + " key=" + v.header.token.key.spec());
            result = to_json(v);
        } else if (r.op == "attach") {
            const AttachResult a = attach_disk(cfg, proto::attach_args(r.args));
            note = a.already_attached ? "already attached: " + a.disk.path : "attached: " + a.disk.path;
            log_info("attach done: disk=" + a.disk.disk_id + " device=" + a.device + " mapping=" + a.disk.path +
                     " luks_uuid=" + a.disk.luks_uuid + (a.already_attached ? " (already attached)" : "") + " in " +
                     std::to_string(a.elapsed_ms) + " ms");
            result = to_json(a);
        } else if (r.op == "copy") {
            const CopyResult c = copy_disk(cfg, proto::copy_args(r.args), channel);
            ctx.luks_uuid = c.target_luks_uuid;
            note = "copied " + std::string(kind_name(c.source_kind)) + " " + c.source_id + " to " +
                   std::string(kind_name(c.target_kind)) + " " + c.target_id;
            log_info("copy done: " + note + " device=" + c.target_device + " luks_uuid=" + c.target_luks_uuid +
                     " bytes=" + std::to_string(c.copied_bytes) +
                     (c.resumed_from > 0 ? " resumed_from=" + std::to_string(c.resumed_from) : "") + " in " +
                     std::to_string(c.elapsed_ms) + " ms");
            result = to_json(c);
        } else if (r.op == "import") {
            const ImportResult i = import_disk(cfg, proto::import_args(r.args), channel);
            ctx.luks_uuid = i.format.luks_uuid;
            ctx.key = i.format.key;
            note = "imported " + i.source + " (" + std::to_string(i.source_bytes) + " bytes)";
            log_info("import done: disk=" + i.format.disk_id + " device=" + i.format.device + " " + note +
                     " encrypted=" + std::to_string(i.encrypted_bytes) + " zeroed=" + std::to_string(i.zeroed_bytes) +
                     " in " + std::to_string(i.copy_ms) + " ms");
            result = to_json(i);
        } else if (r.op == "rewrap") {
            const RewrapResult w = rewrap_disk(cfg, proto::rewrap_args(r.args));
            ctx.luks_uuid = w.luks_uuid;
            ctx.key = w.to;
            note = "rewrapped from " + w.from.spec() + " version " + w.from.version + " to " + w.to.spec() +
                   " version " + w.to.version;
            log_info("rewrap done: disk=" + w.disk_id + " " + note);
            result = to_json(w);
        } else if (r.op == "key") {
            const proto::KeyArgs ka = proto::key_args(r.args);
            // The event names the action: key-create, key-rotate, ...
            out.op = "key-" + std::string(key_action_name(parse_key_action(ka.action)));
            ctx.op = out.op;
            const KeyResult k = key_command(cfg, ka);
            note = "key " + std::string(key_action_name(k.action));
            if (k.action == KeyAction::list) {
                note += ": " + std::to_string(k.keys.size()) + " key(s) shown, " + std::to_string(k.hidden) +
                        " hidden (no kms.keys.list)";
            } else if (!k.keys.empty()) {
                const KeyEntry& e = k.keys.front();
                note += " " + e.key.spec();
                for (const kms::KeyVersion& v : e.info.versions) {
                    if (v.primary) {
                        note += ": primary version " + v.version + " (" + v.state + ")";
                    }
                }
                if (k.forced) {
                    note += "; forced while attached disks use it";
                }
            }
            log_info("key done: " + note + " by user " + k.user);
            result = to_json(k);
        } else if (r.op == "audit") {
            const proto::AuditArgs a = proto::audit_args(r.args);
            audit::Query q;
            if (a.disk_id) {
                validate_disk_id(*a.disk_id);
                q.disk_id = a.disk_id;
            }
            if (a.key) {
                q.key = parse_key_spec(*a.key);
            }
            if (a.since) {
                q.since = audit::parse_since(*a.since, static_cast<std::int64_t>(std::time(nullptr)));
            }
            q.after = a.after;
            const audit::Page page = audit::query(cfg.audit, q);
            json events = json::array();
            for (const auto& e : page.events) {
                // Sanitized by the reader; dumped as ASCII, so it parses back.
                events.push_back(json::parse(e.dump(-1, ' ', true, nlohmann::ordered_json::error_handler_t::replace)));
            }
            note = "read " + std::to_string(page.events.size()) + " event(s) from the " + page.source;
            result = {{"source", page.source},
                      {"events", std::move(events)},
                      {"skipped", page.skipped},
                      {"next", page.next ? json(*page.next) : json(nullptr)}};
        } else if (r.op == "check-keys") {
            const RevocationReport c = check_revocation(cfg);
            note = std::to_string(c.keys.size()) + " key(s) checked, " + std::to_string(c.revoked.size()) +
                   " disk(s) revoked, " + std::to_string(c.restored.size()) + " restored, " +
                   std::to_string(c.failed.size()) + " failed";
            log_info("check-keys done: " + note);
            result = to_json(c);
        } else if (r.op == "decrypt") {
            const proto::DecryptArgs a = proto::decrypt_args(r.args);
            validate_disk_id(a.disk_id);
            throw Error(Errc::not_supported,
                        "disk " + a.disk_id +
                            ": encryption cannot be disabled on a disk once it is enabled; no command decrypts a "
                            "disk in place",
                        "to have the data unencrypted, copy it inside the VM to an unencrypted disk");
        } else if (r.op == "recover") {
            RecoverResult rec = recover_secret(cfg, proto::recover_args(r.args));
            note = "break-glass recovery: the keyslot secret of disk " + rec.header.token.disk_id + " (" +
                   rec.header.device + ") handed to " + peer_text(peer);
            log_warning("recover done: " + note);
            result = to_json(rec);
            secret = std::move(rec.secret);
        } else if (r.op == "auto-attach") {
            const AutoAttachResult a = auto_attach(cfg, proto::auto_device_args(r.args));
            ctx.luks_uuid = a.attach.disk.luks_uuid;
            note = (a.attach.already_attached ? "already attached: " : "attached: ") + a.attach.disk.path +
                   " (serial " + a.device.serial + ", " + a.entry + ")";
            log_info("auto-attach done: disk=" + a.attach.disk.disk_id + " device=" + a.device.path +
                     " devno=" + a.device.devno + " serial=" + a.device.serial + " entry=" + a.entry +
                     " mapping=" + a.attach.disk.path + " in " + std::to_string(a.attach.elapsed_ms) + " ms");
            result = to_json(a);
        } else if (r.op == "auto-detach") {
            const AutoDetachResult d = auto_detach(cfg, proto::auto_device_args(r.args));
            note = std::string(d.device_present ? "detached" : "device gone: forced") +
                   (d.detach.deferred ? ", removal deferred until closed" : "");
            log_info("auto-detach done: disk=" + d.detach.disk.disk_id + " devno=" + d.devno + " (" + note + ")");
            result = to_json(d);
        } else if (r.op == "detach") {
            const DetachResult d = detach_disk(cfg, proto::detach_args(r.args));
            note = d.forced ? (d.deferred ? "forced, removal deferred until closed" : "forced") : "detached";
            log_info("detach done: disk=" + d.disk.disk_id + " mapping=" + d.disk.path + " (" + note + ") in " +
                     std::to_string(d.elapsed_ms) + " ms");
            result = to_json(d);
        }
        if (audited) {
            audit::emit(audit::Event{out.op, "ok", ctx, {}, note});
        }
        out.response = proto::encode_result(result);
        const std::size_t size = out.response.size() + (secret.empty() ? 0 : 1 + secret.size());
        if (size > proto::kMaxMessage) {
            throw Error(Errc::internal, "the response to " + out.op + " would be " + std::to_string(size) +
                                            " bytes, more than the protocol's " + std::to_string(proto::kMaxMessage));
        }
        if (!secret.empty()) {
            out.secret_response = SecureBuffer(size);
            std::copy(out.response.begin(), out.response.end(), out.secret_response.chars());
            out.secret_response.data()[out.response.size()] = 0;
            std::copy(secret.data(), secret.data() + secret.size(),
                      out.secret_response.data() + out.response.size() + 1);
        }
        return out;
    } catch (const Error& e) {
        if (e.code() == Errc::protocol || e.code() == Errc::permission_denied) {
            // Counted and summarised by the caller (one event per connection).
            out.refused = e.code();
            out.message = e.what();
        } else {
            log(e.code() == Errc::internal ? LogLevel::error : LogLevel::warning,
                "request " + out.op + " from " + peer_text(peer) + " failed (" + std::string(errc_name(e.code())) +
                    "): " + e.what());
            if (audited) {
                audit::emit(audit::Event{out.op, audit::is_refusal(e.code()) ? "refused" : "failed", ctx,
                                         std::string(errc_name(e.code())), e.what()});
            }
        }
        out.response = proto::encode_error(e);
        return out;
    } catch (const std::exception& e) {
        const Error err(Errc::internal, "unexpected failure: " + printable(e.what()));
        log_error("request " + out.op + " from " + peer_text(peer) + ": " + err.what());
        if (audited) {
            audit::emit(audit::Event{out.op, "failed", ctx, "internal", err.what()});
        }
        out.response = proto::encode_error(err);
        return out;
    }
}

std::string handle_request(const AgentConfig& cfg, const Peer& peer, std::string_view request,
                           std::chrono::steady_clock::time_point started)
{
    const Handled h = handle(cfg, ServerState{configured_group(cfg), started}, peer, request);
    if (h.refused) {
        report_refusals(peer, h.op, *h.refused, 1, h.message);
    }
    return h.response;
}

Server::Server(const AgentConfig& cfg, std::string socket_path)
    : start_thread_([](std::function<void()> fn) { std::thread(std::move(fn)).detach(); }),
      cfg_(cfg),
      socket_path_(std::move(socket_path)),
      state_{configured_group(cfg), std::chrono::steady_clock::now()}
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) {
        throw Error(Errc::internal, errno_text("sigprocmask", errno));
    }
    signal_fd_.reset(signalfd(-1, &mask, SFD_CLOEXEC));
    if (!signal_fd_) {
        throw Error(Errc::internal, errno_text("signalfd", errno));
    }
    (void)signal(SIGPIPE, SIG_IGN);  // NOLINT(cert-err33-c): the previous handler is not needed

    const int n = sd_listen_fds(1);
    if (n > 1) {
        throw Error(Errc::config, "systemd passed " + std::to_string(n) + " sockets; the agent takes exactly one");
    }
    if (n == 1) {
        if (sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_SEQPACKET, 1, nullptr, 0) <= 0) {
            throw Error(Errc::config, "the socket systemd passed is not a listening Unix SOCK_SEQPACKET socket",
                        "use ListenSequentialPacket= in diskcrypt-agent.socket");
        }
        listen_fd_.reset(SD_LISTEN_FDS_START);
        // The socket file decides who may connect, so it decides the status
        // group; a configuration that says otherwise is refused.
        std::string path;
        const auto from_socket = status_group_of_socket(listen_fd_.get(), path);
        state_.status_group = activated_status_group(cfg_, path, from_socket);
        log_info("listening on the socket passed by systemd" + (path.empty() ? "" : " (" + printable(path) + ")") +
                 "; status group: " +
                 (state_.status_group ? state_.status_group->name + " (from the socket file)" : "none"));
        return;
    }

    // The socket is bound under a temporary name, given its owner and mode,
    // put into listening state, and only then renamed into place: a client
    // never finds a socket that refuses connections or has the wrong mode.
    const std::string temp_path = socket_path_ + ".new";
    sockaddr_un addr{};
    sockaddr_un temp_addr{};
    addr.sun_family = AF_UNIX;
    temp_addr.sun_family = AF_UNIX;
    if (socket_path_.empty() || socket_path_.front() != '/' || temp_path.size() >= sizeof(addr.sun_path)) {
        throw Error(Errc::config, "socket path '" + socket_path_ + "' must be absolute and shorter than " +
                                      std::to_string(sizeof(addr.sun_path) - 4) + " bytes");
    }
    std::copy(socket_path_.begin(), socket_path_.end(), &addr.sun_path[0]);
    std::copy(temp_path.begin(), temp_path.end(), &temp_addr.sun_path[0]);

    // The parent directory: created 0755 if missing.
    const auto slash = socket_path_.rfind('/');
    const std::string dir = slash == 0 ? "/" : socket_path_.substr(0, slash);
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
        throw Error(Errc::config, errno_text("cannot create socket directory " + dir, errno));
    }

    listen_fd_.reset(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!listen_fd_) {
        throw Error(Errc::internal, errno_text("socket", errno));
    }
    struct stat st {};
    if (lstat(socket_path_.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            throw Error(Errc::config, socket_path_ + " exists and is not a socket; refusing to replace it");
        }
        const FileDescriptor probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
        // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
        if (probe && connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
            throw Error(Errc::config, "another agent is already listening on " + socket_path_,
                        "stop it first, or use another --socket");
        }
        (void)unlink(socket_path_.c_str());  // stale socket of a dead agent
    }
    (void)unlink(temp_path.c_str());
    const mode_t old_umask = umask(0177);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
    const int b = bind(listen_fd_.get(), reinterpret_cast<const sockaddr*>(&temp_addr), sizeof(temp_addr));
    const int bind_errno = errno;
    umask(old_umask);
    if (b != 0) {
        throw Error(Errc::config, errno_text("cannot bind " + temp_path, bind_errno));
    }
    ScopeExit remove_temp([&temp_path] { (void)unlink(temp_path.c_str()); });
    if (cfg_.status_group) {
        if (chown(temp_path.c_str(), 0, cfg_.status_gid) != 0 || chmod(temp_path.c_str(), 0660) != 0) {
            throw Error(Errc::config,
                        errno_text("cannot give " + socket_path_ + " to group " + *cfg_.status_group, errno));
        }
    }
    if (listen(listen_fd_.get(), 16) != 0) {
        throw Error(Errc::internal, errno_text("listen", errno));
    }
    if (rename(temp_path.c_str(), socket_path_.c_str()) != 0) {
        throw Error(Errc::config, errno_text("cannot move the socket into place at " + socket_path_, errno));
    }
    remove_temp.dismiss();
    created_socket_ = true;
    log_info("listening on " + socket_path_);
}

Server::~Server()
{
    if (created_socket_) {
        (void)unlink(socket_path_.c_str());
    }
}

void Server::reload_policy()
{
    if (!cfg_.policy_source) {
        log_info("SIGHUP: no access policy is configured ([agent] policy), nothing to reload");
        return;
    }
    log_info("SIGHUP: reloading the access policy (" + cfg_.policy_source->describe() + ")");
    try {
        cfg_.policy_source->reload();  // a load or a refusal is audited by the source's observer
    } catch (const std::exception& e) {
        log_error("reloading the access policy: " + printable(e.what()));
    }
}

int Server::run()
{
    // The periodic key-state check of attached disks (its first check runs
    // now: it finds disks an earlier agent process revoked).
    RevocationMonitor monitor(cfg_);
    (void)sd_notify(0, "READY=1\nSTATUS=serving");
    // systemd's watchdog (WatchdogSec= in the unit): WATCHDOG=1 at half the
    // interval, from this loop, so a stuck accept loop is restarted.
    const Watchdog watchdog = Watchdog::from_environment();
    auto next_ping = std::chrono::steady_clock::now();
    std::array<pollfd, 2> fds{{{listen_fd_.get(), POLLIN, 0}, {signal_fd_.get(), POLLIN, 0}}};
    int rc = 0;
    for (;;) {
        if (watchdog.enabled()) {
            const auto now = std::chrono::steady_clock::now();
            if (now >= next_ping) {
                (void)sd_notify(0, "WATCHDOG=1");
                next_ping = now + watchdog.half_interval();
            }
        }
        const int timeout = watchdog.enabled() ? Watchdog::poll_timeout_ms(next_ping) : -1;
        const int ready = poll(fds.data(), fds.size(), timeout);
        if (ready == 0) {
            continue;
        }
        if (ready < 0) {
            if (errno == EINTR) {
                continue;
            }
            log_error(errno_text("poll", errno));
            rc = 1;
            break;
        }
        if ((fds[1].revents & POLLIN) != 0) {
            signalfd_siginfo si{};
            [[maybe_unused]] const ssize_t got = read(signal_fd_.get(), &si, sizeof(si));
            if (si.ssi_signo == SIGHUP) {
                reload_policy();
                continue;
            }
            log_info("signal " + std::to_string(si.ssi_signo) + " received, stopping");
            break;
        }
        if ((fds[0].revents & POLLIN) != 0) {
            FileDescriptor conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (!conn) {
                if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
                    log_warning(errno_text("accept", errno));
                }
                continue;
            }
            try {
                start_connection(std::move(conn));
            } catch (const std::exception& e) {  // never out of the accept loop
                log_error("cannot serve a connection: " + printable(e.what()));
            }
        }
    }
    (void)sd_notify(0, "STOPPING=1\nSTATUS=finishing running requests");
    // Waits for a disk lock end at once; idle connections are woken up and
    // end; running requests get kStopGraceSeconds.
    stop_disk_lock_waits();
    std::unique_lock lock(mutex_);
    stopping_ = true;
    for (const auto& [fd, c] : connections_) {
        (void)shutdown(fd, SHUT_RD);
    }
    if (idle_.wait_for(lock, std::chrono::seconds(kStopGraceSeconds), [this] { return connections_.empty(); })) {
        lock.unlock();
        if (monitor.stop(std::chrono::seconds(kStopGraceSeconds))) {
            return rc;
        }
        // A key check still waits for a KMS or a suspend: exit without it.
        log_error("the key-state check still runs " + std::to_string(kStopGraceSeconds) +
                  " s after the stop request; exiting without it");
        if (created_socket_) {
            (void)unlink(socket_path_.c_str());
        }
        std::_Exit(rc);
    }
    // Requests still running (a KMS call, a slow device): their callers are
    // told, and the agent exits without them. The kernel releases their disk
    // locks; agent/README.md ("Stopping") says what can be left.
    const std::string abandoned = proto::encode_error(
        Error(Errc::agent_unavailable,
              "the agent stopped before this request finished (" + std::to_string(kStopGraceSeconds) +
                  " s after SIGTERM); it may be half done",
              "run it again when the agent is back: attach and detach finish or repeat what was begun"));
    std::size_t running = 0;
    for (auto& [fd, c] : connections_) {
        if (c.in_request && !c.abandoned) {
            c.abandoned = true;
            ++running;
            (void)send(fd, abandoned.data(), abandoned.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        }
    }
    log_error(std::to_string(running) + " request(s) still running " + std::to_string(kStopGraceSeconds) +
              " s after the stop request; exiting without them");
    if (created_socket_) {
        (void)unlink(socket_path_.c_str());
    }
    // Not a return through main(): other threads still use the configuration
    // and the providers, which static and main()'s destructors would free.
    std::_Exit(rc);
}

void Server::refuse_connection(const FileDescriptor& conn, const Error& why)
{
    const std::string busy = proto::encode_error(why);
    (void)send(conn.get(), busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    // A request already sent is read and dropped: closing a socket with
    // unread data resets the peer, which would then lose the answer.
    std::array<char, 512> sink{};
    while (recv(conn.get(), sink.data(), sink.size(), MSG_DONTWAIT | MSG_TRUNC) > 0) {
    }
    std::size_t n = 0;
    {
        const std::lock_guard lock(mutex_);
        n = ++refused_connections_;
    }
    // Logged at 1, 2, 4, 8, ... refusals: a flood of connections is seen
    // without flooding the log.
    if ((n & (n - 1)) == 0) {
        log_warning("refused a connection (" + std::to_string(n) + " so far): " + why.what());
    }
}

void Server::start_connection(FileDescriptor conn)
{
    Peer peer;
    try {
        peer = peer_of(conn.get());
    } catch (const Error& e) {
        log_warning(std::string("dropping a connection: ") + e.what());
        return;
    }
    const bool root = peer.uid == 0;
    std::optional<Error> refusal;
    {
        const std::lock_guard lock(mutex_);
        const auto held = per_uid_.find(peer.uid);
        if (stopping_) {
            refusal.emplace(Errc::agent_unavailable, "the agent is stopping", "retry when it is back");
        } else if (connections_.size() >= kMaxConnections) {
            refusal.emplace(Errc::busy, "the agent is serving " + std::to_string(kMaxConnections) + " connections",
                            "retry shortly");
        } else if (!root && non_root_ >= kMaxConnections - kRootConnections) {
            refusal.emplace(Errc::busy,
                            "the agent is serving " + std::to_string(non_root_) +
                                " connections of non-root callers, all it allows (" + std::to_string(kRootConnections) +
                                " are kept for root)",
                            "retry shortly");
        } else if (!root && held != per_uid_.end() && held->second >= kMaxConnectionsPerUid) {
            refusal.emplace(Errc::busy,
                            "uid " + std::to_string(peer.uid) + " already holds " +
                                std::to_string(kMaxConnectionsPerUid) + " connections to the agent, all one uid may",
                            "close a connection, or retry shortly");
        } else {
            connections_.emplace(conn.get(), Connection{peer.uid, false, false});
            if (!root) {
                ++non_root_;
                ++per_uid_[peer.uid];
            }
        }
    }
    if (refusal) {
        refuse_connection(conn, *refusal);
        return;
    }
    // One thread per connection, so that different disks are served in
    // parallel (the disk lock serialises operations on one disk). run() waits
    // for every connection before the server goes away. The descriptor is
    // shared with this frame so that a thread that cannot start is answered.
    const auto shared = std::make_shared<FileDescriptor>(std::move(conn));
    const int fd = shared->get();
    auto release = [this, fd, uid = peer.uid, root] {
        const std::lock_guard done(mutex_);
        connections_.erase(fd);
        if (!root) {
            --non_root_;
            if (--per_uid_[uid] == 0) {
                per_uid_.erase(uid);
            }
        }
    };
    try {
        start_thread_([this, shared, peer, release]() {
            try {
                serve_connection(*shared, peer);
            } catch (...) {  // the last resort: this connection ends, the agent serves on
                try {
                    log_error("a connection of " + peer_text(peer) + " ended by an unexpected failure");
                } catch (...) {  // NOLINT(bugprone-empty-catch): nothing more can be done
                }
            }
            release();
            {
                const std::lock_guard done(mutex_);
                shared->reset();  // closed only after it left the set that run() shuts down
                idle_.notify_all();
            }
        });
    } catch (const std::system_error& e) {
        release();
        refuse_connection(
            *shared, Error(Errc::busy, "the agent cannot start a thread for this connection: " + printable(e.what()),
                           "retry shortly; check the agent's limits (LimitNPROC=, TasksMax=)"));
    }
}

bool Server::enter_request(int fd)
{
    const std::lock_guard lock(mutex_);
    auto& c = connections_.at(fd);
    c.in_request = true;
    return !stopping_;
}

bool Server::leave_request(int fd)
{
    const std::lock_guard lock(mutex_);
    auto& c = connections_.at(fd);
    c.in_request = false;
    return !c.abandoned;
}

namespace {

// A connection's channel: progress messages sent without waiting (dropped
// when the client does not read them), a hang-up is a cancellation.
class ConnectionChannel final : public OpChannel {
public:
    explicit ConnectionChannel(int fd) : fd_(fd) {}

    void progress(const json& update) override
    {
        const std::string msg = proto::encode_progress(update);
        (void)send(fd_, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }

    [[nodiscard]] bool cancelled() override
    {
        pollfd p{fd_, POLLRDHUP, 0};
        return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
    }

private:
    int fd_;
};

}  // namespace

void Server::serve_connection(const FileDescriptor& conn, const Peer& peer)
{
    const auto accepted = std::chrono::steady_clock::now();
    const bool root = peer.uid == 0;
    const auto deadline = accepted + std::chrono::seconds(kNonRootLifetimeSeconds);
    const timeval send_tv{kIdleTimeoutSeconds, 0};
    (void)setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &send_tv, sizeof(send_tv));
    std::map<Errc, RefusalCount> refusals;
    ScopeExit summary([&refusals, &peer] {
        for (const auto& [code, r] : refusals) {
            report_refusals(peer, r.op, code, r.count, r.message);
        }
    });
    std::vector<char> buf(proto::kMaxMessage + 1);
    for (;;) {
        // Root's connection: the idle timer. Anyone else's: also its lifetime.
        auto wait = std::chrono::microseconds(std::chrono::seconds(kIdleTimeoutSeconds));
        if (!root) {
            const auto left =
                std::chrono::duration_cast<std::chrono::microseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) {
                log_debug("closing the connection of " + peer_text(peer) + ": its " +
                          std::to_string(kNonRootLifetimeSeconds) + " s are up");
                return;
            }
            wait = std::min(wait, left);
        }
        const timeval tv{static_cast<time_t>(wait.count() / 1000000),
                         static_cast<suseconds_t>(std::max<long long>(wait.count() % 1000000, 1))};
        (void)setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        const ssize_t n = recv(conn.get(), buf.data(), buf.size(), MSG_TRUNC);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;  // peer closed, idle timeout, lifetime over, stopping, or error
        }
        Handled h;
        if (!enter_request(conn.get())) {
            h.response = proto::encode_error(
                Error(Errc::agent_unavailable, "the agent is stopping", "run it again when the agent is back"));
        } else if (static_cast<std::size_t>(n) > proto::kMaxMessage) {
            h.refused = Errc::protocol;
            h.message = "request is larger than " + std::to_string(proto::kMaxMessage) + " bytes";
            h.response = proto::encode_error(Error(Errc::protocol, h.message));
        } else {
            try {
                ConnectionChannel channel(conn.get());
                h = handle(cfg_, state_, peer, std::string_view(buf.data(), static_cast<std::size_t>(n)), channel);
            } catch (...) {  // the last resort: answer, log, serve on
                h = Handled{};
                h.response = proto::encode_error(Error(Errc::internal, "unexpected failure handling the request",
                                                       "the agent's log may say more; please report it"));
                log_error("request from " + peer_text(peer) + ": unexpected failure");
            }
        }
        if (h.refused) {
            RefusalCount& r = refusals[*h.refused];
            if (r.count++ == 0) {
                r.op = h.op.empty() ? "?" : h.op;
                r.message = h.message;
            }
        }
        if (!leave_request(conn.get())) {
            return;  // the stop path has answered this caller
        }
        const bool with_secret = !h.secret_response.empty();
        const void* data = with_secret ? static_cast<const void*>(h.secret_response.data()) : h.response.data();
        const std::size_t size = with_secret ? h.secret_response.size() : h.response.size();
        if (send(conn.get(), data, size, MSG_NOSIGNAL) < 0) {
            log_warning(errno_text("sending a response to " + peer_text(peer), errno));
            return;
        }
    }
}

}  // namespace diskcrypt
