// KMIP's transport: TTLV messages over mutual TLS (TLS 1.2 or later) on TCP,
// with a deadline on every step (connect, handshake, write, read).
//
// Sockets are non-blocking and every wait is a poll() bounded by the earlier
// of the step's own timeout and the request's deadline, so a server that
// accepts and never answers costs a request its deadline, not a hang. A
// failure is a TransportError whose kind says what failed (the provider
// retries and fails over on these; the KMS's own answers are not transport
// failures) and whose text is printable and names no secret.
#pragma once

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "agent/raii.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt::kms::kmip {

using Clock = std::chrono::steady_clock;

// host:port, [v6-address]:port, or a host alone (port 5696, KMIP's).
struct Endpoint {
    std::string host;
    std::uint16_t port = 5696;
    [[nodiscard]] std::string text() const;
};
// Throws std::invalid_argument with the reason (the config names the line).
Endpoint parse_endpoint(std::string_view text);

enum class Failure {
    unreachable,  // name resolution, refused, no route
    timeout,      // a step ran out of time
    tls,          // handshake refused (by either side), or a TLS error
    certificate,  // the server's certificate failed verification
    closed,       // the server closed the connection
    protocol,     // the server sent something that is not a KMIP response
};
std::string_view failure_name(Failure f);

class TransportError : public std::runtime_error {
public:
    TransportError(Failure kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
    [[nodiscard]] Failure kind() const { return kind_; }

private:
    Failure kind_;
};

struct SslCtxDeleter {
    void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
struct SslDeleter {
    void operator()(SSL* ssl) const { SSL_free(ssl); }
};

// The TLS client context of one provider: the CA that signs the servers'
// certificates, the client certificate and its private key (PEM, read by the
// caller from a root-only file or a systemd credential). Errors are
// diskcrypt::Error(kms_auth) naming the file.
class TlsContext {
public:
    TlsContext(const std::string& ca_file, const std::string& cert_file, const SecureBuffer& key_pem,
               const std::string& key_source);
    [[nodiscard]] SSL_CTX* get() const { return ctx_.get(); }

private:
    std::unique_ptr<SSL_CTX, SslCtxDeleter> ctx_;
};

// One TLS connection to one KMIP server.
class Connection {
public:
    // Connects and completes the TLS handshake before `deadline`, verifying
    // the server's certificate against the context's CA and `server_name` (a
    // DNS name or an IP address literal).
    static std::unique_ptr<Connection> open(const TlsContext& tls, const Endpoint& endpoint,
                                            const std::string& server_name, Clock::time_point deadline);

    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    Connection(Connection&&) = delete;
    Connection& operator=(Connection&&) = delete;
    ~Connection();

    // Sends one request and reads one response message (at most
    // max_response bytes, into locked memory).
    SecureBuffer round_trip(std::span<const std::uint8_t> request, std::size_t max_response,
                            Clock::time_point deadline);

    // False when the server closed the connection or sent unasked bytes
    // while it was idle (checked without waiting).
    [[nodiscard]] bool idle_ok() const;

    // The negotiated protocol and cipher, e.g. "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384".
    [[nodiscard]] std::string cipher() const;
    // Whether the negotiated key exchange is forward secret (ECDHE, DHE, TLS 1.3).
    [[nodiscard]] bool forward_secret() const;

private:
    Connection(FileDescriptor fd, std::unique_ptr<SSL, SslDeleter> ssl);
    void handshake(Clock::time_point deadline, const std::string& where);
    template <typename Op>
    void transfer(std::size_t total, Op op, Clock::time_point deadline, const char* step);
    void write_all(std::span<const std::uint8_t> data, Clock::time_point deadline);
    void read_exact(std::span<std::uint8_t> out, Clock::time_point deadline);

    FileDescriptor fd_;
    std::unique_ptr<SSL, SslDeleter> ssl_;
    bool broken_ = false;
};

}  // namespace diskcrypt::kms::kmip
