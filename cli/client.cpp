#include "cli/client.hpp"

#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "agent/error.hpp"
#include "agent/raii.hpp"

namespace diskcrypt::cli {

proto::Response call_agent(const std::string& socket_path, const std::string& request,
                           const std::function<void(const nlohmann::json&)>& on_progress)
{
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
        throw Error(Errc::usage, "socket path '" + socket_path + "' is empty or too long");
    }
    std::copy(socket_path.begin(), socket_path.end(), &addr.sun_path[0]);
    const FileDescriptor fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!fd) {
        throw Error(Errc::internal, errno_text("socket", errno));
    }
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
    if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        const int e = errno;
        if (e == EACCES || e == EPERM) {
            throw Error(Errc::permission_denied, errno_text("cannot connect to the agent at " + socket_path, e),
                        "run as root (or, for status, as a member of the agent's status_group)");
        }
        throw Error(Errc::agent_unavailable, errno_text("cannot reach diskcrypt-agent at " + socket_path, e),
                    "start it (systemctl start diskcrypt-agent.socket) or pass --socket PATH");
    }
    const timeval tv{kResponseTimeoutSeconds, 0};
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::vector<char> buf(proto::kMaxMessage + 1);
    ssize_t n = 0;
    if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) < 0) {
        const int e = errno;
        // An agent that refuses the connection (busy, stopping) answers and
        // closes before it reads: its answer is waiting.
        n = recv(fd.get(), buf.data(), buf.size(), MSG_TRUNC | MSG_DONTWAIT);
        if (n <= 0) {
            throw Error(Errc::agent_unavailable, errno_text("sending the request to " + socket_path, e));
        }
    } else {
        do {
            n = recv(fd.get(), buf.data(), buf.size(), MSG_TRUNC);
        } while (n < 0 && errno == EINTR);
    }
    // Progress messages come before the response.
    for (;;) {
        if (n <= 0 || static_cast<std::size_t>(n) > proto::kMaxMessage) {
            break;
        }
        proto::Response r = proto::parse_response(std::string_view(buf.data(), static_cast<std::size_t>(n)));
        if (!r.progress) {
            return r;
        }
        if (on_progress) {
            on_progress(*r.progress);
        }
        do {
            n = recv(fd.get(), buf.data(), buf.size(), MSG_TRUNC);
        } while (n < 0 && errno == EINTR);
    }
    if (n < 0) {
        const int e = errno;
        throw Error(Errc::agent_unavailable,
                    e == EAGAIN || e == EWOULDBLOCK
                        ? "the agent did not answer within " + std::to_string(kResponseTimeoutSeconds) + " s"
                        : errno_text("reading the agent's response", e),
                    "check the agent's log (journalctl -u diskcrypt-agent)");
    }
    if (n == 0) {
        throw Error(Errc::agent_unavailable, "the agent closed the connection without answering",
                    "check the agent's log (journalctl -u diskcrypt-agent)");
    }
    if (static_cast<std::size_t>(n) > proto::kMaxMessage) {
        throw Error(Errc::protocol,
                    "the agent's response is larger than " + std::to_string(proto::kMaxMessage) + " bytes");
    }
    throw Error(Errc::protocol, "unreachable: a response was neither returned nor refused");
}

proto::Response list_all(const std::function<proto::Response(const std::string& request)>& call)
{
    proto::ListArgs args;
    nlohmann::json disks = nlohmann::json::array();
    for (;;) {
        proto::Response r = call(proto::encode_request("list", proto::to_json(args)));
        if (!r.ok) {
            return r;
        }
        const auto page = r.result.find("disks");
        if (page == r.result.end() || !page->is_array()) {
            throw Error(Errc::protocol, "the agent's list response has no 'disks' array");
        }
        for (auto& d : *page) {
            disks.push_back(std::move(d));
        }
        const auto next = r.result.find("next");
        if (next == r.result.end() || next->is_null()) {
            r.result = {{"disks", std::move(disks)}};
            return r;
        }
        if (!next->is_string() || page->empty() || (args.after && next->get<std::string>() <= *args.after)) {
            throw Error(Errc::protocol, "the agent's list page does not advance (its 'next' is not after the last)");
        }
        args.after = next->get<std::string>();
    }
}

proto::Response audit_all(proto::AuditArgs args, const std::function<proto::Response(const std::string& request)>& call,
                          const std::function<void(nlohmann::json& page)>& page)
{
    for (;;) {
        proto::Response r = call(proto::encode_request("audit", proto::to_json(args)));
        if (!r.ok) {
            return r;
        }
        const auto events = r.result.find("events");
        if (events == r.result.end() || !events->is_array()) {
            throw Error(Errc::protocol, "the agent's audit response has no 'events' array");
        }
        page(r.result);
        const auto next = r.result.find("next");
        if (next == r.result.end() || next->is_null()) {
            r.result["events"] = nlohmann::json::array();
            return r;
        }
        if (!next->is_string() || (args.after && next->get<std::string>() == *args.after)) {
            throw Error(Errc::protocol, "the agent's audit page does not advance (its 'next' is the cursor sent)");
        }
        args.after = next->get<std::string>();
    }
}

}  // namespace diskcrypt::cli
