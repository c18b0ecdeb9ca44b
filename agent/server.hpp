// The agent's socket server: one SOCK_SEQPACKET Unix socket, callers
// authorised by their peer credentials (SO_PEERCRED, SO_PEERGROUPS).
//
// Who may do what:
//   uid 0                                every op
//   members of [agent] status_group      "status" only (primary or supplementary group)
//   anyone else                          nothing (Error(permission_denied))
// The socket file is 0600 root, or 0660 root:status_group when a status group
// is configured, so the file mode and the check agree.
//
// Each connection is served by a thread of its own, so different disks are
// attached and detached in parallel; operations on one disk are serialised by
// the disk lock (agent/disk_lock.hpp). A connection idle for
// kIdleTimeoutSeconds is closed. SIGTERM stops accepting, lets running
// requests finish, and returns.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/config.hpp"
#include "agent/raii.hpp"

namespace diskcrypt {

inline constexpr std::string_view kAgentVersion = "0.1.0";
inline constexpr int kIdleTimeoutSeconds = 10;
inline constexpr std::size_t kMaxConnections = 64;

struct Peer {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary groups (SO_PEERGROUPS)
};

// Reads SO_PEERCRED and SO_PEERGROUPS of a connected socket.
Peer peer_of(int fd);

// Handles one request text from `peer` and returns the response text. Never
// throws: every failure becomes an error response.
std::string handle_request(const AgentConfig& cfg, const Peer& peer, std::string_view request,
                           std::chrono::steady_clock::time_point started);

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

    // Serves until SIGTERM or SIGINT. Returns the process exit status.
    int run();

private:
    void start_connection(FileDescriptor conn);
    void serve_connection(const FileDescriptor& conn);

    const AgentConfig& cfg_;
    std::string socket_path_;
    bool created_socket_ = false;
    FileDescriptor listen_fd_;
    FileDescriptor signal_fd_;
    std::chrono::steady_clock::time_point started_;
    std::mutex mutex_;
    std::condition_variable idle_;
    std::set<int> connections_;  // guarded by mutex_
    bool stopping_ = false;      // guarded by mutex_
};

}  // namespace diskcrypt
