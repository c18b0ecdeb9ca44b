#include "agent/server.hpp"

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
#include <csignal>
#include <cstring>

#include "agent/attach.hpp"
#include "agent/audit.hpp"
#include "agent/dm.hpp"
#include "agent/format.hpp"
#include "agent/log.hpp"
#include "agent/protocol.hpp"
#include "agent/secure_buffer.hpp"
#include "agent/verify.hpp"

namespace diskcrypt {

namespace {

using nlohmann::json;

bool may(const AgentConfig& cfg, const Peer& peer, const std::string& op)
{
    if (peer.uid == 0) {
        return true;
    }
    if ((op == "status" || op == "list") && cfg.status_group) {
        return peer.gid == cfg.status_gid ||
               std::find(peer.groups.begin(), peer.groups.end(), cfg.status_gid) != peer.groups.end();
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

json status(const AgentConfig& cfg, std::chrono::steady_clock::time_point started)
{
    json providers = json::array();
    for (const auto& [name, p] : cfg.providers) {
        providers.push_back({{"name", name}, {"type", p->type()}});
    }
    const auto up = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
    return {
        {"agent", "diskcrypt-agent"},
        {"version", kAgentVersion},
        {"protocol", proto::kVersion},
        {"pid", getpid()},
        {"uptime_s", up.count()},
        {"dumpable", process_dumpable()},
        {"config", cfg.source},
        {"socket", cfg.socket_path},
        {"default_key", cfg.default_key ? json(cfg.default_key->spec()) : json(nullptr)},
        {"providers", providers},
        {"device_mapper", dm::available()},
        {"attached", attached_count()},
    };
}

std::string describe_args(const proto::Request& r)
{
    std::string out;
    for (const char* key : {"device", "disk_id", "type", "key", "service_account"}) {
        if (const auto it = r.args.find(key); it != r.args.end() && it->is_string()) {
            // Values are logged with their quotes from json::dump (escapes control characters).
            out += std::string(" ") + key + "=" + it->dump();
        }
    }
    return out;
}

std::string peer_text(const Peer& p) { return "uid=" + std::to_string(p.uid) + " pid=" + std::to_string(p.pid); }

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

std::string handle_request(const AgentConfig& cfg, const Peer& peer, std::string_view request,
                           std::chrono::steady_clock::time_point started)
{
    std::string op = "?";
    audit::Scope scope(audit::Context{"", peer.uid, peer.pid, {}, {}, {}, {}, {}});
    audit::Context& ctx = scope.context();
    bool audited = false;  // whether an outcome of this op is an audit event
    try {
        const proto::Request r = proto::parse_request(request);
        op = r.op;
        ctx.op = r.op;
        for (const auto& [field, target] :
             {std::pair{"disk_id", &ctx.disk_id}, std::pair{"service_account", &ctx.service_account},
              std::pair{"device", &ctx.device}}) {
            if (const auto it = r.args.find(field); it != r.args.end() && it->is_string()) {
                *target = it->get<std::string>();
            }
        }
        audited = r.op != "status" && r.op != "list";
        if (!may(cfg, peer, r.op)) {
            audited = true;
            throw Error(Errc::permission_denied,
                        "op '" + r.op + "' is not allowed for uid " + std::to_string(peer.uid) + " (pid " +
                            std::to_string(peer.pid) + ")",
                        r.op == "status" || r.op == "list"
                            ? "status and list are open to root and to members of the agent's status_group"
                            : "run it as root");
        }
        if (audited) {
            log_info("request " + r.op + " from " + peer_text(peer) + describe_args(r));
        }
        json result;
        std::string note;
        if (r.op == "status") {
            const proto::StatusArgs a = proto::status_args(r.args);
            result = a.disk_id ? to_json(disk_status(*a.disk_id)) : status(cfg, started);
        } else if (r.op == "list") {
            json disks = json::array();
            for (const auto& d : list_disks()) {
                disks.push_back(to_json(d));
            }
            result = {{"disks", disks}};
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
        } else if (r.op == "detach") {
            const DetachResult d = detach_disk(cfg, proto::detach_args(r.args));
            note = d.forced ? (d.deferred ? "forced, removal deferred until closed" : "forced") : "detached";
            log_info("detach done: disk=" + d.disk.disk_id + " mapping=" + d.disk.path + " (" + note + ") in " +
                     std::to_string(d.elapsed_ms) + " ms");
            result = to_json(d);
        }
        if (audited) {
            audit::emit(audit::Event{op, "ok", ctx, {}, note});
        }
        return proto::encode_result(result);
    } catch (const Error& e) {
        log(e.code() == Errc::internal ? LogLevel::error : LogLevel::warning,
            "request " + op + " from " + peer_text(peer) + " failed (" + std::string(errc_name(e.code())) +
                "): " + e.what());
        if (audited || e.code() == Errc::protocol) {
            audit::emit(audit::Event{op == "?" ? "request" : op, audit::is_refusal(e.code()) ? "refused" : "failed",
                                     ctx, std::string(errc_name(e.code())), e.what()});
        }
        return proto::encode_error(e);
    } catch (const std::exception& e) {
        const Error err(Errc::internal, std::string("unexpected failure: ") + e.what());
        log_error("request " + op + " from " + peer_text(peer) + ": " + err.what());
        if (audited) {
            audit::emit(audit::Event{op, "failed", ctx, "internal", err.what()});
        }
        return proto::encode_error(err);
    }
}

Server::Server(const AgentConfig& cfg, std::string socket_path)
    : cfg_(cfg), socket_path_(std::move(socket_path)), started_(std::chrono::steady_clock::now())
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
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
        log_info("listening on the socket passed by systemd");
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

int Server::run()
{
    (void)sd_notify(0, "READY=1\nSTATUS=serving");
    std::array<pollfd, 2> fds{{{listen_fd_.get(), POLLIN, 0}, {signal_fd_.get(), POLLIN, 0}}};
    int rc = 0;
    for (;;) {
        if (poll(fds.data(), fds.size(), -1) < 0) {
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
            start_connection(std::move(conn));
        }
    }
    (void)sd_notify(0, "STOPPING=1\nSTATUS=finishing running requests");
    // Requests in progress finish; idle connections are woken up and end.
    std::unique_lock lock(mutex_);
    stopping_ = true;
    for (const int fd : connections_) {
        (void)shutdown(fd, SHUT_RD);
    }
    idle_.wait(lock, [this] { return connections_.empty(); });
    return rc;
}

void Server::start_connection(FileDescriptor conn)
{
    const std::lock_guard lock(mutex_);
    if (stopping_ || connections_.size() >= kMaxConnections) {
        const std::string busy = proto::encode_error(Error(
            Errc::busy, "the agent is serving " + std::to_string(kMaxConnections) + " connections", "retry shortly"));
        (void)send(conn.get(), busy.data(), busy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        return;
    }
    connections_.insert(conn.get());
    // One thread per connection, so that different disks are served in
    // parallel (the disk lock serialises operations on one disk). run() waits
    // for every connection before the server goes away.
    std::thread([this, c = std::move(conn)]() mutable {
        serve_connection(c);
        const std::lock_guard done(mutex_);
        connections_.erase(c.get());
        c.reset();  // closed only after it left the set that run() shuts down
        idle_.notify_all();
    }).detach();
}

void Server::serve_connection(const FileDescriptor& conn)
{
    const timeval tv{kIdleTimeoutSeconds, 0};
    (void)setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    Peer peer;
    try {
        peer = peer_of(conn.get());
    } catch (const Error& e) {
        log_warning(std::string("dropping a connection: ") + e.what());
        return;
    }
    std::vector<char> buf(proto::kMaxMessage + 1);
    for (;;) {
        const ssize_t n = recv(conn.get(), buf.data(), buf.size(), MSG_TRUNC);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;  // peer closed, idle timeout, or error
        }
        std::string response;
        if (static_cast<std::size_t>(n) > proto::kMaxMessage) {
            response = proto::encode_error(
                Error(Errc::protocol, "request is larger than " + std::to_string(proto::kMaxMessage) + " bytes"));
        } else {
            response = handle_request(cfg_, peer, std::string_view(buf.data(), static_cast<std::size_t>(n)), started_);
        }
        if (send(conn.get(), response.data(), response.size(), MSG_NOSIGNAL) < 0) {
            log_warning(errno_text("sending a response to " + peer_text(peer), errno));
            return;
        }
    }
}

}  // namespace diskcrypt
