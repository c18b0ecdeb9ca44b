// A PyKMIP 0.10 server of its own for one test (python3-pykmip): a test PKI
// (tests/support/kmip-pki.sh), a configuration, database, policy folder and
// log in the test's tmpfs folder, a free port on 127.0.0.1, and keys
// administered with PyKMIP's own client (tests/support/pykmip_admin.py).
//
// The server offers TLS 1.2 only and requires a client certificate from the
// test CA with extendedKeyUsage clientAuth; a client's KMIP identity is its
// certificate's CN, and under the default policy one identity cannot see
// another's keys. Keys are numbered "1", "2", ... by the server.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/support.hpp"

namespace diskcrypt::test {

// A client certificate and its key (PEM files).
struct KmipIdentity {
    std::string cert;
    std::string key;
};

// The files kmip-pki.sh writes into one folder (EC P-256 keys, mode 0600).
class KmipPki {
public:
    // An existing PKI in `dir`.
    explicit KmipPki(std::string dir) : dir_(std::move(dir)) {}
    // Makes a fresh PKI in `dir` (created if missing) with kmip-pki.sh.
    static KmipPki make(const std::string& dir);

    [[nodiscard]] const std::string& dir() const { return dir_; }
    // CA "diskcrypt test KMIP CA": signs the server and every client below
    // except rogue().
    [[nodiscard]] std::string ca() const { return dir_ + "/ca.pem"; }
    // A second, unrelated CA (rogue()'s issuer).
    [[nodiscard]] std::string other_ca() const { return dir_ + "/other-ca.pem"; }
    // CN kmip.test, SAN DNS:kmip.test and IP:127.0.0.1, serverAuth.
    [[nodiscard]] std::string server_cert() const { return dir_ + "/server.pem"; }
    [[nodiscard]] std::string server_key() const { return dir_ + "/server.key"; }
    // CN diskcrypt-agent, clientAuth: the agent's identity.
    [[nodiscard]] KmipIdentity client() const { return identity("client"); }
    // CN other-tenant, clientAuth: another owner on the same server.
    [[nodiscard]] KmipIdentity client2() const { return identity("client2"); }
    // CN diskcrypt-agent, clientAuth, issued by other_ca(): the server's
    // handshake fails (alert unknown_ca).
    [[nodiscard]] KmipIdentity rogue() const { return identity("rogue"); }
    // CN diskcrypt-agent from ca() without any extendedKeyUsage: the handshake
    // succeeds and every request gets Result Reason Authentication Not
    // Successful (3) from PyKMIP.
    [[nodiscard]] KmipIdentity noauth() const { return identity("noauth"); }

private:
    [[nodiscard]] KmipIdentity identity(const std::string& name) const
    {
        return {dir_ + "/" + name + ".pem", dir_ + "/" + name + ".key"};
    }
    std::string dir_;
};

struct PyKmipOptions {
    // Share this PKI (e.g. another server's) instead of making one in DIR/pki.
    std::optional<KmipPki> pki;
    // Log at DEBUG: every request and response encoding in hex.
    bool debug_log = false;
};

class PyKmipServer {
public:
    // Starts the server (files in a fresh folder DIR/pykmip-XXXXXX) and waits
    // until it listens; throws std::runtime_error with the log's tail if it
    // does not within 15 s.
    explicit PyKmipServer(const TempDir& dir, PyKmipOptions options = {});
    PyKmipServer(const PyKmipServer&) = delete;
    PyKmipServer& operator=(const PyKmipServer&) = delete;
    PyKmipServer(PyKmipServer&&) = delete;
    PyKmipServer& operator=(PyKmipServer&&) = delete;
    ~PyKmipServer();

    [[nodiscard]] std::uint16_t port() const { return port_; }
    // "127.0.0.1:PORT"
    [[nodiscard]] std::string endpoint() const;
    [[nodiscard]] const KmipPki& pki() const { return pki_; }
    [[nodiscard]] std::string ca() const { return pki_.ca(); }
    [[nodiscard]] std::string client_cert() const { return pki_.client().cert; }
    [[nodiscard]] std::string client_key() const { return pki_.client().key; }
    // PyKMIP's log (-l) and the process's own stdout and stderr.
    [[nodiscard]] const std::string& log() const { return log_; }
    [[nodiscard]] const std::string& output() const { return output_; }
    [[nodiscard]] const std::string& conf() const { return conf_; }
    // Operation policy JSON files put here are loaded within ~1 s.
    [[nodiscard]] const std::string& policy_dir() const { return policy_dir_; }
    // The server's PID, also its process group (it runs two children: a
    // multiprocessing manager and the policy monitor); -1 when stopped.
    [[nodiscard]] pid_t pid() const { return pid_; }
    [[nodiscard]] bool running() const { return pid_ > 0; }
    // Last lines of the log and of the output, for failure messages.
    [[nodiscard]] std::string log_tail(std::size_t lines = 40) const;

    // SIGINT to the server, which then closes its socket, joins each open
    // session for up to 10 s and stops its children: ~1 s with no client
    // connected, ~10 s more for each connection still open. After 60 s, or
    // if children outlive it, the whole process group gets SIGTERM and then
    // SIGKILL. Returns the exit status (128+signal if killed); no process of
    // the group is left. Nothing when already stopped (returns 0).
    int stop();
    // The server dies at once (SIGKILL to its process group), as when the
    // KMS host fails: open connections are reset, with no wait for them
    // (stop() waits up to 10 s for each). Returns the exit status (137).
    int crash();
    // stop() (or crash()), then start again with the same port, PKI and
    // database (keys and their states survive). About 2 s after a stop.
    void restart(bool crash_first = false);

    // pykmip_admin.py ARGS as `as` (default: pki().client()); the result,
    // whatever the status.
    [[nodiscard]] Result admin(const std::vector<std::string>& args,
                               const std::optional<KmipIdentity>& as = std::nullopt) const;
    // These throw std::runtime_error with the script's message on failure.
    // An AES-256 key usable for Encrypt and Decrypt, with Name `name` (names
    // are not unique), owned by `as`; Active unless `activate` is false.
    [[nodiscard]] std::string create_key(const std::string& name, bool activate = true,
                                         const std::optional<KmipIdentity>& as = std::nullopt) const;
    // `count` such keys (1-10) in one run of the script; with `same_second`
    // they all have the same Initial Date (whole seconds), which leaves the
    // order of versions to their Unique Identifiers.
    [[nodiscard]] std::vector<std::string> create_keys(const std::string& name, int count, bool activate = true,
                                                       bool same_second = false,
                                                       const std::optional<KmipIdentity>& as = std::nullopt) const;
    void activate(const std::string& uid, const std::optional<KmipIdentity>& as = std::nullopt) const;
    // Reason KEY_COMPROMISE (state Compromised, from Pre-Active or Active) or
    // CESSATION_OF_OPERATION (Deactivated; the key must be Active).
    void revoke(const std::string& uid, bool compromised, const std::optional<KmipIdentity>& as = std::nullopt) const;
    // Refused for an Active key: revoke it first. PyKMIP deletes the object.
    void destroy(const std::string& uid, const std::optional<KmipIdentity>& as = std::nullopt) const;
    // "PRE_ACTIVE", "ACTIVE", "DEACTIVATED", "COMPROMISED", or "NOT_FOUND"
    // (destroyed, never existed).
    [[nodiscard]] std::string state(const std::string& uid, const std::optional<KmipIdentity>& as = std::nullopt) const;

private:
    void start();
    [[nodiscard]] std::string admin_ok(const std::vector<std::string>& args,
                                       const std::optional<KmipIdentity>& as) const;

    KmipPki pki_;
    bool debug_log_ = false;
    std::string dir_;
    std::string conf_;
    std::string log_;
    std::string output_;
    std::string policy_dir_;
    std::string database_;
    std::uint16_t port_ = 0;
    pid_t pid_ = -1;
};

}  // namespace diskcrypt::test
