// The agent's socket server: one SOCK_SEQPACKET Unix socket, callers
// authorised by their peer credentials (SO_PEERCRED, SO_PEERGROUPS).
//
// Who may do what:
//   uid 0                                every op
//   members of the status group          "status" and "list" only (primary or supplementary group)
//   anyone else                          nothing (Error(permission_denied))
// The status group is [agent] status_group when the agent makes its socket
// (0600 root, or 0660 root:status_group, so the file mode and the check
// agree). Under systemd socket activation the socket file decides: its group
// is the status group when its mode gives the group read and write (0660), and
// a configured status_group that disagrees with the file is refused at start
// (Error(config)), naming what to set in diskcrypt-agent.socket.
//
// Each connection is served by a thread of its own, so different disks are
// attached and detached in parallel; operations on one disk are serialised by
// the disk lock (agent/disk_lock.hpp).
//
// Connection slots (kMaxConnections in all): kRootConnections of them are
// root's alone; every other uid holds at most kMaxConnectionsPerUid at a time.
// A connection over a limit is answered busy and closed. A connection idle for
// kIdleTimeoutSeconds is closed; a non-root connection is also closed
// kNonRootLifetimeSeconds after it was accepted, however busy its peer keeps
// it. Refused requests (protocol errors, permission denied) are audited as one
// counted event per connection and reason when the connection ends.
//
// SIGTERM or SIGINT: stop accepting, refuse further requests, end every wait
// for a disk lock at once ("the agent is stopping"), and give running requests
// kStopGraceSeconds to finish; after that the agent answers the callers still
// waiting that their request was abandoned, and exits without them.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/config.hpp"
#include "agent/error.hpp"
#include "agent/ops/channel.hpp"
#include "agent/raii.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {

inline constexpr std::string_view kAgentVersion = "0.1.0";
inline constexpr int kIdleTimeoutSeconds = 10;
inline constexpr std::size_t kMaxConnections = 64;
inline constexpr std::size_t kRootConnections = 16;      // of kMaxConnections, root's alone
inline constexpr std::size_t kMaxConnectionsPerUid = 8;  // per non-root uid
inline constexpr int kNonRootLifetimeSeconds = 30;       // a non-root connection's whole life
inline constexpr int kStopGraceSeconds = 5;              // running requests after SIGTERM

struct DiskInfo;

// The status group: who may run status and list besides root.
struct StatusGroup {
    gid_t gid = 0;
    std::string name;
};

struct Peer {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups (SO_PEERGROUPS)
};

// Reads SO_PEERCRED and SO_PEERGROUPS of a connected socket.
Peer peer_of(int fd);

// What the server knows besides the configuration.
struct ServerState {
    std::optional<StatusGroup> status_group;
    std::chrono::steady_clock::time_point started;
};

// One handled request. A refusal (a protocol error or permission denied) is
// neither logged nor audited by handle(): the connection counts them and
// reports one summary.
struct Handled {
    std::string response;
    // Sent instead of `response` when not empty: the response text, a NUL
    // byte and a secret (recover), in locked memory.
    SecureBuffer secret_response;
    std::optional<Errc> refused;  // protocol or permission_denied
    std::string op;               // the request's op, "?" if it had none
    std::string message;          // the refusal's message
};

// Handles one request text from `peer`. Never throws: every failure becomes
// an error response (an unexpected one: code internal).
// A long operation (copy) reports progress and learns of a cancellation
// through `channel`; the first form gives it none.
Handled handle(const AgentConfig& cfg, const ServerState& state, const Peer& peer, std::string_view request);
Handled handle(const AgentConfig& cfg, const ServerState& state, const Peer& peer, std::string_view request,
               OpChannel& channel);

// handle() for one request on its own: refusals are logged and audited
// (a summary of one). The status group is the configuration's.
std::string handle_request(const AgentConfig& cfg, const Peer& peer, std::string_view request,
                           std::chrono::steady_clock::time_point started);

// One page of `list`: the disks after `after` (by disk id; `disks` sorted by
// it), as many as fit in `budget` bytes of JSON text (at least one), each
// given its header information by `add_header` (only those on the page).
// {"disks": [...]} plus "next" (the last disk id on the page) when more remain.
nlohmann::json list_page(std::vector<DiskInfo> disks, const std::optional<std::string>& after, std::size_t budget,
                         const std::function<void(DiskInfo&)>& add_header);

// The status group a socket file grants: its group, when its mode gives the
// group read and write and the group is not root's; nullopt otherwise (also
// for a socket without a path).
std::optional<StatusGroup> status_group_of_socket(int listen_fd, std::string& path);

// Checks the configuration's status_group against the socket systemd passed
// (path `path`, group from status_group_of_socket): the socket file decides.
// Error(config) if a configured group disagrees.
std::optional<StatusGroup> activated_status_group(const AgentConfig& cfg, const std::string& path,
                                                  const std::optional<StatusGroup>& from_socket);

class Server {
public:
    // Takes a systemd-provided socket (LISTEN_FDS) if there is one, else
    // creates `socket_path` (refusing to replace a live agent's socket).
    Server(const AgentConfig& cfg, std::string socket_path);
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;
    Server(Server&&) = delete;
    Server& operator=(Server&&) = delete;
    ~Server();

    // Serves until SIGTERM or SIGINT; SIGHUP re-reads the access policy.
    // Returns the process exit status.
    int run();

    // A test seam: how the thread of a connection is started (std::thread by
    // default). It may throw std::system_error, as std::thread does.
    using ThreadStarter = std::function<void(std::function<void()>)>;
    void set_thread_starter(ThreadStarter starter) { start_thread_ = std::move(starter); }

private:
    void reload_policy();
    struct Connection {
        uid_t uid = 0;
        bool in_request = false;  // a request is being handled
        bool abandoned = false;   // answered by the stop path: send nothing more
    };

    void start_connection(FileDescriptor conn);
    void serve_connection(const FileDescriptor& conn, const Peer& peer);
    void refuse_connection(const FileDescriptor& conn, const Error& why);
    // Marks the connection in or out of a request; false if the stop path
    // abandoned it (then nothing more is sent on it).
    bool enter_request(int fd);
    bool leave_request(int fd);

    ThreadStarter start_thread_;
    const AgentConfig& cfg_;
    std::string socket_path_;
    bool created_socket_ = false;
    FileDescriptor listen_fd_;
    FileDescriptor signal_fd_;
    ServerState state_;
    std::mutex mutex_;
    std::condition_variable idle_;
    std::map<int, Connection> connections_;  // by fd; guarded by mutex_
    std::map<uid_t, std::size_t> per_uid_;   // non-root connections by uid; guarded by mutex_
    std::size_t non_root_ = 0;               // guarded by mutex_
    std::size_t refused_connections_ = 0;    // guarded by mutex_
    bool stopping_ = false;                  // guarded by mutex_
};

}  // namespace diskcrypt
