#include "agent/kms/kmip/transport.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <memory>

#include "agent/error.hpp"
#include "agent/kms/kmip/ttlv.hpp"
#include "agent/text.hpp"

namespace diskcrypt::kms::kmip {

namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

// Forward-secret suites first (TLS 1.2; TLS 1.3 suites are all forward
// secret), then AEAD and SHA-2 suites without it for servers that offer
// nothing else (Connection::forward_secret() tells, and the provider warns).
constexpr const char* kCiphers =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:DHE-RSA-AES256-SHA256:DHE-RSA-AES128-SHA256:"
    "AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256";

// Keeps a write to a connection the server closed from killing the process
// with SIGPIPE, whatever the process's disposition (the agent ignores it; a
// test or tool linking the provider may not): SIGPIPE is blocked in this
// thread while OpenSSL writes, and one it raised meanwhile is consumed (the
// write itself fails with EPIPE and is reported).
class SigpipeGuard {
public:
    SigpipeGuard() : was_pending_(pending()), blocked_(block(pipe_, old_)) {}
    SigpipeGuard(const SigpipeGuard&) = delete;
    SigpipeGuard& operator=(const SigpipeGuard&) = delete;
    SigpipeGuard(SigpipeGuard&&) = delete;
    SigpipeGuard& operator=(SigpipeGuard&&) = delete;
    ~SigpipeGuard()
    {
        if (!blocked_) {
            return;
        }
        if (!was_pending_ && pending()) {
            const timespec now{0, 0};
            while (sigtimedwait(&pipe_, nullptr, &now) == -1 && errno == EINTR) {
            }
        }
        (void)pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    }

private:
    static bool pending()
    {
        sigset_t set;
        sigemptyset(&set);
        return sigpending(&set) == 0 && sigismember(&set, SIGPIPE) == 1;
    }
    static bool block(sigset_t& pipe, sigset_t& old)
    {
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        return pthread_sigmask(SIG_BLOCK, &pipe, &old) == 0;
    }

    sigset_t pipe_{};
    sigset_t old_{};
    bool was_pending_;
    bool blocked_;
};

int remaining_ms(Clock::time_point deadline)
{
    const auto left = duration_cast<milliseconds>(deadline - Clock::now()).count();
    return static_cast<int>(std::clamp<long long>(left, 0, 60LL * 60 * 1000));
}

// The OpenSSL error queue as one printable line (and emptied). `eof` tells
// whether the peer closed the TCP connection without a TLS alert: a server
// that stopped behind a proxy or port forward looks like that.
std::string ssl_errors(bool* eof = nullptr)
{
    std::string out;
    while (const unsigned long e = ERR_get_error()) {
        if (eof != nullptr && ERR_GET_LIB(e) == ERR_LIB_SSL &&
            ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            *eof = true;
        }
        std::array<char, 256> buf{};
        ERR_error_string_n(e, buf.data(), buf.size());
        // "error:0A000086:SSL routines::certificate verify failed": keep the reason.
        std::string_view text(buf.data());
        if (const auto colon = text.rfind(':'); colon != std::string_view::npos) {
            text.remove_prefix(colon + 1);
        }
        out += (out.empty() ? "" : "; ") + std::string(text);
    }
    return printable(out, 512);
}

// Waits until the socket is ready for what OpenSSL wants, or the deadline.
void wait_io(int fd, bool for_read, Clock::time_point deadline, const char* step)
{
    pollfd p{fd, static_cast<short>(for_read ? POLLIN : POLLOUT), 0};
    for (;;) {
        const int ms = remaining_ms(deadline);
        if (ms <= 0) {
            throw TransportError(Failure::timeout, std::string(step) + " timed out");
        }
        const int n = ::poll(&p, 1, ms);
        if (n > 0) {
            return;
        }
        if (n == 0) {
            throw TransportError(Failure::timeout, std::string(step) + " timed out");
        }
        if (errno != EINTR) {
            throw TransportError(Failure::unreachable, std::string(step) + ": poll: " + std::strerror(errno));
        }
    }
}

struct AddrInfoDeleter {
    void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};

bool is_ip_literal(const std::string& host)
{
    std::array<unsigned char, sizeof(in6_addr)> buf{};
    return inet_pton(AF_INET, host.c_str(), buf.data()) == 1 || inet_pton(AF_INET6, host.c_str(), buf.data()) == 1;
}

FileDescriptor connect_tcp(const Endpoint& ep, Clock::time_point deadline)
{
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    addrinfo* raw = nullptr;
    const std::string port = std::to_string(ep.port);
    const int rc = getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &raw);
    const std::unique_ptr<addrinfo, AddrInfoDeleter> list(raw);
    if (rc != 0) {
        throw TransportError(Failure::unreachable, std::string("cannot resolve the name: ") + gai_strerror(rc));
    }
    std::string last = "no address";
    for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
        FileDescriptor fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
        if (!fd) {
            last = std::string("socket: ") + std::strerror(errno);
            continue;
        }
        if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                last = std::string("connect: ") + std::strerror(errno);
                continue;
            }
            wait_io(fd.get(), false, deadline, "connect");
            int err = 0;
            socklen_t len = sizeof(err);
            if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
                last = std::string("connect: ") + std::strerror(err != 0 ? err : errno);
                continue;
            }
        }
        const int one = 1;
        (void)::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return fd;
    }
    throw TransportError(Failure::unreachable, last);
}

}  // namespace

std::string Endpoint::text() const
{
    return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Endpoint parse_endpoint(std::string_view text)
{
    Endpoint ep;
    std::string_view host = text;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos) {
            throw std::invalid_argument("an IPv6 address needs a closing ']'");
        }
        host = text.substr(1, close - 1);
        const std::string_view rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                throw std::invalid_argument("expected ':PORT' after ']'");
            }
            port = rest.substr(1);
        }
    } else if (const auto colon = text.rfind(':'); colon != std::string_view::npos) {
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) {
            throw std::invalid_argument("write an IPv6 address in brackets: [ADDRESS]:PORT");
        }
    }
    if (host.empty() || host.size() > 253) {
        throw std::invalid_argument("the host name is empty or longer than 253 characters");
    }
    for (const char c : host) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                        c == '-' || c == ':' || c == '_';
        if (!ok) {
            throw std::invalid_argument("the host has a character other than A-Z a-z 0-9 . - _ (or : in brackets)");
        }
    }
    ep.host = std::string(host);
    if (!port.empty() || text.back() == ':') {
        unsigned value = 0;
        const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
        if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535) {
            throw std::invalid_argument("the port must be a number from 1 to 65535");
        }
        ep.port = static_cast<std::uint16_t>(value);
    }
    return ep;
}

std::string_view failure_name(Failure f)
{
    switch (f) {
        case Failure::unreachable:
            return "unreachable";
        case Failure::timeout:
            return "timeout";
        case Failure::tls:
            return "TLS refused";
        case Failure::certificate:
            return "certificate refused";
        case Failure::closed:
            return "connection closed";
        case Failure::protocol:
            return "not KMIP";
    }
    return "unknown";
}

TlsContext::TlsContext(const std::string& ca_file, const std::string& cert_file, const SecureBuffer& key_pem,
                       const std::string& key_source)
    : ctx_(SSL_CTX_new(TLS_client_method()))
{
    if (!ctx_) {
        throw Error(Errc::internal, "cannot create a TLS context: " + ssl_errors());
    }
    SSL_CTX* c = ctx_.get();
    (void)SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    if (SSL_CTX_set_cipher_list(c, kCiphers) != 1) {
        throw Error(Errc::internal, "the TLS cipher list was refused: " + ssl_errors());
    }
    // Received plaintext (an unwrapped secret) is wiped from OpenSSL's buffers.
    SSL_CTX_set_options(c, SSL_OP_CLEANSE_PLAINTEXT | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    if (SSL_CTX_load_verify_locations(c, ca_file.c_str(), nullptr) != 1) {
        throw Error(Errc::kms_auth,
                    "cannot load the KMIP servers' CA certificates from " + ca_file + ": " + ssl_errors(),
                    "ca_file must be a PEM file of the CA that signs the KMIP servers' certificates");
    }
    if (SSL_CTX_use_certificate_chain_file(c, cert_file.c_str()) != 1) {
        throw Error(Errc::kms_auth, "cannot load the KMIP client certificate " + cert_file + ": " + ssl_errors(),
                    "client_certificate must be a PEM certificate (chain) with extendedKeyUsage clientAuth");
    }
    const std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())), &BIO_free);
    const std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
        bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr, &EVP_PKEY_free);
    if (!key) {
        ERR_clear_error();  // the reason may quote the file's bytes: say what, not how
        throw Error(Errc::kms_auth, "the KMIP client key in " + key_source + " is not an unencrypted PEM private key",
                    "store the client certificate's private key as PEM without a passphrase");
    }
    if (SSL_CTX_use_PrivateKey(c, key.get()) != 1 || SSL_CTX_check_private_key(c) != 1) {
        ERR_clear_error();
        throw Error(Errc::kms_auth, "the KMIP client key in " + key_source + " does not belong to " + cert_file,
                    "configure the private key of the client certificate");
    }
}

Connection::Connection(FileDescriptor fd, std::unique_ptr<SSL, SslDeleter> ssl)
    : fd_(std::move(fd)), ssl_(std::move(ssl))
{
}

Connection::~Connection()
{
    if (ssl_ && !broken_) {
        const SigpipeGuard guard;
        (void)SSL_shutdown(ssl_.get());  // best effort close_notify; never waits
    }
    ERR_clear_error();
}

std::unique_ptr<Connection> Connection::open(const TlsContext& tls, const Endpoint& endpoint,
                                             const std::string& server_name, Clock::time_point deadline)
{
    FileDescriptor fd = connect_tcp(endpoint, deadline);
    std::unique_ptr<SSL, SslDeleter> ssl(SSL_new(tls.get()));
    if (!ssl || SSL_set_fd(ssl.get(), fd.get()) != 1) {
        throw Error(Errc::internal, "cannot create a TLS connection: " + ssl_errors());
    }
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
    if (is_ip_literal(server_name)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, server_name.c_str()) != 1) {
            throw Error(Errc::internal, "cannot set the expected server address: " + ssl_errors());
        }
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set1_host(ssl.get(), server_name.c_str()) != 1 ||
            SSL_set_tlsext_host_name(ssl.get(), server_name.c_str()) != 1) {
            throw Error(Errc::internal, "cannot set the expected server name: " + ssl_errors());
        }
    }
    std::unique_ptr<Connection> c(new Connection(std::move(fd), std::move(ssl)));
    c->handshake(deadline, server_name);
    return c;
}

void Connection::handshake(Clock::time_point deadline, const std::string& where)
{
    const SigpipeGuard guard;
    ERR_clear_error();
    for (;;) {
        const int rc = SSL_connect(ssl_.get());
        if (rc == 1) {
            return;
        }
        const int err = SSL_get_error(ssl_.get(), rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            wait_io(fd_.get(), err == SSL_ERROR_WANT_READ, deadline, "TLS handshake");
            continue;
        }
        broken_ = true;
        const long verify = SSL_get_verify_result(ssl_.get());
        if (verify != X509_V_OK) {
            ERR_clear_error();
            throw TransportError(Failure::certificate, "the server's certificate was refused for '" +
                                                           printable(where, 256) +
                                                           "': " + X509_verify_cert_error_string(verify));
        }
        bool eof = false;
        std::string why = ssl_errors(&eof);
        if (eof || (why.empty() && (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN))) {
            // No alert, just a closed connection: not a refusal (retried).
            throw TransportError(Failure::closed, "the server closed the connection during the TLS handshake");
        }
        if (why.empty()) {
            why = "error " + std::to_string(err);
        }
        throw TransportError(Failure::tls, "TLS handshake failed: " + why);
    }
}

// Moves `total` bytes through `op` (SSL_write_ex or SSL_read_ex from an
// offset), waiting on the socket as OpenSSL asks, until the deadline. A
// socket error (reset, broken pipe) or an EOF means the server went away:
// Failure::closed, which the provider retries on a fresh connection; a TLS
// error or alert is Failure::tls.
template <typename Op>
void Connection::transfer(std::size_t total, Op op, Clock::time_point deadline, const char* step)
{
    const SigpipeGuard guard;
    std::size_t done = 0;
    while (done < total) {
        ERR_clear_error();
        std::size_t n = 0;
        const int rc = op(done, &n);
        if (rc == 1) {
            done += n;
            continue;
        }
        const int err = SSL_get_error(ssl_.get(), rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            wait_io(fd_.get(), err == SSL_ERROR_WANT_READ, deadline, step);
            continue;
        }
        broken_ = true;
        bool eof = false;
        const std::string why = ssl_errors(&eof);
        if (eof || err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_SYSCALL) {
            throw TransportError(Failure::closed, std::string(step) + ": the server closed the connection" +
                                                      (why.empty() ? "" : " (" + why + ")"));
        }
        throw TransportError(Failure::tls, std::string(step) + " failed: " + (why.empty() ? "TLS error" : why));
    }
}

void Connection::write_all(std::span<const std::uint8_t> data, Clock::time_point deadline)
{
    transfer(
        data.size(),
        [&](std::size_t at, std::size_t* n) { return SSL_write_ex(ssl_.get(), data.data() + at, data.size() - at, n); },
        deadline, "sending the request");
}

void Connection::read_exact(std::span<std::uint8_t> out, Clock::time_point deadline)
{
    transfer(
        out.size(),
        [&](std::size_t at, std::size_t* n) { return SSL_read_ex(ssl_.get(), out.data() + at, out.size() - at, n); },
        deadline, "waiting for the response");
}

SecureBuffer Connection::round_trip(std::span<const std::uint8_t> request, std::size_t max_response,
                                    Clock::time_point deadline)
{
    write_all(request, deadline);
    std::array<std::uint8_t, kItemHeader> header{};
    read_exact(header, deadline);
    const std::uint32_t first_tag =
        (static_cast<std::uint32_t>(header[0]) << 16U) | (static_cast<std::uint32_t>(header[1]) << 8U) | header[2];
    const std::size_t length = announced_length(header);
    if (first_tag != tag::response_message || header[3] != static_cast<std::uint8_t>(Type::structure)) {
        broken_ = true;
        throw TransportError(Failure::protocol,
                             "the server answered with " + tag_hex(first_tag) + ", not a KMIP Response Message");
    }
    if (length > max_response - kItemHeader || length % 8 != 0) {
        broken_ = true;
        throw TransportError(Failure::protocol, "the server announced a response of " + std::to_string(length) +
                                                    " bytes (the limit is " + std::to_string(max_response) +
                                                    ", and it must be a multiple of 8)");
    }
    SecureBuffer message(kItemHeader + length);
    std::copy(header.begin(), header.end(), message.data());
    read_exact(message.span().subspan(kItemHeader), deadline);
    return message;
}

bool Connection::idle_ok() const
{
    if (broken_) {
        return false;
    }
    pollfd p{fd_.get(), POLLIN, 0};
    // Anything readable on an idle connection is an EOF, a reset or bytes
    // nobody asked for: the connection cannot be trusted with a request.
    return ::poll(&p, 1, 0) == 0 && SSL_pending(ssl_.get()) == 0;
}

std::string Connection::cipher() const
{
    const char* version = SSL_get_version(ssl_.get());
    const char* name = SSL_get_cipher_name(ssl_.get());
    return std::string(version != nullptr ? version : "?") + " " + (name != nullptr ? name : "?");
}

bool Connection::forward_secret() const
{
    if (SSL_version(ssl_.get()) >= TLS1_3_VERSION) {
        return true;
    }
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
    if (c == nullptr) {
        return false;
    }
    const int kx = SSL_CIPHER_get_kx_nid(c);
    return kx == NID_kx_ecdhe || kx == NID_kx_dhe;
}

}  // namespace diskcrypt::kms::kmip
