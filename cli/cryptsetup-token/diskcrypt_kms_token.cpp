// libcryptsetup-token-diskcrypt-kms.so: the token handler stock cryptsetup
// loads for a LUKS2 token of type "diskcrypt-kms" (cryptsetup's external
// token ABI, CRYPTSETUP_TOKEN_1.0; libcryptsetup.h). It is the break-glass
// path: `cryptsetup open --token-only DEVICE NAME` opens a diskcrypt disk
// with dm-crypt when an operator needs it without the diskcrypt target.
//
// open asks the agent (request "recover" on its socket; DISKCRYPT_SOCKET
// overrides /run/diskcrypt/agent.sock), which hands out the keyslot secret
// only if the host enables recovery, only to root, after attach's access
// check, with an audit event. The secret arrives after the response's JSON
// text and a NUL byte, into locked memory, and goes to libcryptsetup in a
// locked buffer that buffer_free wipes. validate checks the token with the
// agent's own parser; dump prints its fields, escaped, without the wrapped
// secret. Nothing here throws across the C boundary.
#include <libcryptsetup.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>

#include "agent/disk/token.hpp"
#include "agent/error.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/raii.hpp"
#include "agent/secure_buffer.hpp"
#include "agent/text.hpp"

namespace {

using diskcrypt::Errc;
using diskcrypt::Error;

// How long open waits for the agent: an unwrap through a network KMS with
// its retries, well under cryptsetup's own patience.
constexpr int kResponseTimeoutSeconds = 60;

// cryptsetup prints CRYPT_LOG_ERROR lines on stderr; every value from the
// agent or the header is escaped first.
void log_line(crypt_device* cd, int level, const std::string& text)
{
    crypt_log(cd, level, (diskcrypt::sanitize(text) + "\n").c_str());
}

std::string socket_path()
{
    const char* env = secure_getenv("DISKCRYPT_SOCKET");
    return env != nullptr && *env != '\0' ? std::string(env) : std::string(diskcrypt::proto::kDefaultSocketPath);
}

// The response to "recover"; `secret` gets the secret after it (when ok).
diskcrypt::proto::Response ask_agent(const std::string& device, diskcrypt::SecureBuffer& secret)
{
    const std::string path = socket_path();
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) {
        throw Error(Errc::usage, "DISKCRYPT_SOCKET is longer than a socket path may be");
    }
    std::copy(path.begin(), path.end(), &addr.sun_path[0]);
    const diskcrypt::FileDescriptor fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!fd) {
        throw Error(Errc::internal, diskcrypt::errno_text("socket", errno));
    }
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
    if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        throw Error(Errc::agent_unavailable, diskcrypt::errno_text("cannot reach diskcrypt-agent at " + path, errno),
                    "start it (systemctl start diskcrypt-agent.socket), or set DISKCRYPT_SOCKET to its socket");
    }
    const timeval tv{kResponseTimeoutSeconds, 0};
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    const std::string request =
        diskcrypt::proto::encode_request("recover", diskcrypt::proto::to_json(diskcrypt::proto::RecoverArgs{device}));
    if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) < 0) {
        throw Error(Errc::agent_unavailable, diskcrypt::errno_text("sending the request to " + path, errno));
    }
    diskcrypt::SecureBuffer buf(diskcrypt::proto::kMaxMessage + 1);
    ssize_t n = 0;
    do {
        n = recv(fd.get(), buf.data(), buf.size(), MSG_TRUNC);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        const int e = n < 0 ? errno : 0;
        throw Error(Errc::agent_unavailable,
                    e == EAGAIN || e == EWOULDBLOCK
                        ? "diskcrypt-agent did not answer within " + std::to_string(kResponseTimeoutSeconds) + " s"
                        : diskcrypt::errno_text("diskcrypt-agent closed the connection", e == 0 ? ECONNRESET : e));
    }
    const auto size = static_cast<std::size_t>(n);
    if (size > diskcrypt::proto::kMaxMessage) {
        throw Error(Errc::protocol, "the agent's response is larger than the protocol allows");
    }
    std::span<const std::uint8_t> received;
    diskcrypt::proto::Response r =
        diskcrypt::proto::parse_recover_response(std::span<const std::uint8_t>(buf.data(), size), received);
    if (r.ok) {
        secret = diskcrypt::SecureBuffer(received.size());
        std::copy(received.begin(), received.end(), secret.data());
    }
    return r;
}

// An errno for libcryptsetup: -EAGAIN when the agent or the KMS is not
// there ("a resource is missing": cryptsetup tries the next unlock method),
// -EPERM for a refusal, -EINVAL for a header or token that is not right.
int errno_of(Errc code)
{
    switch (code) {
        case Errc::agent_unavailable:
        case Errc::kms_unavailable:
            return -EAGAIN;
        case Errc::header:
        case Errc::binding:
        case Errc::incomplete:
        case Errc::protocol:
            return -EINVAL;
        case Errc::internal:
            return -EIO;
        default:
            return -EPERM;
    }
}

std::string device_of(crypt_device* cd)
{
    const char* name = crypt_get_device_name(cd);
    if (name == nullptr) {
        throw Error(Errc::usage, "libcryptsetup names no device");
    }
    // The agent takes absolute paths; it opens and checks the device itself.
    std::string path(PATH_MAX, '\0');
    if (realpath(name, path.data()) == nullptr) {
        throw Error(Errc::device, diskcrypt::errno_text("cannot resolve " + diskcrypt::printable(name), errno));
    }
    path.resize(std::strlen(path.c_str()));
    return path;
}

void dump_token(crypt_device* cd, const char* json)
{
    const diskcrypt::Token t = diskcrypt::decode_token(json);
    // As luksDump prints its own rows: a tab, the name, the value escaped.
    auto row = [cd](const std::string& name, const std::string& value) {
        const std::string pad(name.size() < 15 ? 15 - name.size() : 1, ' ');
        crypt_log(cd, CRYPT_LOG_NORMAL, ("\t" + name + ":" + pad + diskcrypt::sanitize(value) + "\n").c_str());
    };
    row("disk id", t.disk_id);
    row("disk type", t.disk_type);
    row("kind", std::string(diskcrypt::kind_name(t.kind)));
    row("service account", t.service_account.value_or("(none)"));
    row("KMS key", t.key.spec() + " version " + t.key.version + " (" + t.provider_type + ")");
    row("wrapped", std::to_string(t.wrapped.ciphertext.size()) + "-byte secret, AES-GCM, associated data v" +
                       std::to_string(t.ad_version));
    row("keyslot", std::to_string(t.keyslot));
    row("lineage", t.lineage_id);
    row("created", t.created);
    if (t.origin) {
        row("origin", std::string(diskcrypt::kind_name(t.origin->kind)) + " " + t.origin->id + " (LUKS2 UUID " +
                          t.origin->luks_uuid + ")");
    }
    if (t.incomplete) {
        row("incomplete", "an interrupted " + t.incomplete->operation + ", " + std::to_string(t.incomplete->done) +
                              " of " + std::to_string(t.incomplete->total) + " bytes: it does not open");
    }
}

}  // namespace

// The exported ABI: C linkage, versioned CRYPTSETUP_TOKEN_1.0 by
// cryptsetup-token.map; everything else stays local.
extern "C" {

#define DISKCRYPT_TOKEN_ABI __attribute__((visibility("default")))
DISKCRYPT_TOKEN_ABI int cryptsetup_token_open(crypt_device* cd, int token, char** buffer, size_t* buffer_len,
                                              void* usrptr);
DISKCRYPT_TOKEN_ABI void cryptsetup_token_buffer_free(void* buffer, size_t buffer_len);
DISKCRYPT_TOKEN_ABI int cryptsetup_token_validate(crypt_device* cd, const char* json);
DISKCRYPT_TOKEN_ABI void cryptsetup_token_dump(crypt_device* cd, const char* json);
DISKCRYPT_TOKEN_ABI const char* cryptsetup_token_version(void);

int cryptsetup_token_open(crypt_device* cd, int token, char** buffer, size_t* buffer_len, void* /*usrptr*/)
{
    try {
        const std::string device = device_of(cd);
        diskcrypt::SecureBuffer secret;
        const diskcrypt::proto::Response r = ask_agent(device, secret);
        if (!r.ok) {
            std::string text = "diskcrypt: token " + std::to_string(token) + " of " + device + ": " + r.message + " (" +
                               std::string(diskcrypt::errc_name(r.code)) + ")";
            if (!r.hint.empty()) {
                text += "; " + r.hint;
            }
            log_line(cd, CRYPT_LOG_ERROR, text);
            return errno_of(r.code);
        }
        // A buffer libcryptsetup frees through buffer_free: locked, wiped.
        // NOLINTNEXTLINE(cppcoreguidelines-no-malloc, cppcoreguidelines-owning-memory): the ABI hands it over
        auto* out = static_cast<char*>(std::malloc(secret.size()));
        if (out == nullptr) {
            return -ENOMEM;
        }
        (void)mlock(out, secret.size());
        std::copy(secret.chars(), secret.chars() + secret.size(), out);
        *buffer = out;
        *buffer_len = secret.size();
        log_line(cd, CRYPT_LOG_VERBOSE,
                 "diskcrypt: the agent handed out the keyslot secret of disk " +
                     r.result.value("disk_id", std::string("?")) + " (break-glass recovery, audited)");
        return 0;
    } catch (const Error& e) {
        std::string text = "diskcrypt: token " + std::to_string(token) + ": " + e.what();
        if (!e.hint().empty()) {
            text += "; " + e.hint();
        }
        log_line(cd, CRYPT_LOG_ERROR, text);
        return errno_of(e.code());
    } catch (const std::exception& e) {
        log_line(cd, CRYPT_LOG_ERROR, std::string("diskcrypt: token ") + std::to_string(token) + ": " + e.what());
        return -EIO;
    }
}

void cryptsetup_token_buffer_free(void* buffer, size_t buffer_len)
{
    if (buffer == nullptr) {
        return;
    }
    explicit_bzero(buffer, buffer_len);
    (void)munlock(buffer, buffer_len);
    // NOLINTNEXTLINE(cppcoreguidelines-no-malloc, cppcoreguidelines-owning-memory): allocated by open
    std::free(buffer);
}

int cryptsetup_token_validate(crypt_device* cd, const char* json)
{
    try {
        (void)diskcrypt::decode_token(json == nullptr ? "" : json);
        return 0;
    } catch (const std::exception& e) {
        log_line(cd, CRYPT_LOG_DEBUG, std::string("diskcrypt: invalid token: ") + e.what());
        return -EINVAL;
    }
}

void cryptsetup_token_dump(crypt_device* cd, const char* json)
{
    try {
        dump_token(cd, json == nullptr ? "" : json);
    } catch (const std::exception& e) {
        crypt_log(cd, CRYPT_LOG_NORMAL, ("\tinvalid diskcrypt token: " + diskcrypt::sanitize(e.what()) + "\n").c_str());
    }
}

const char* cryptsetup_token_version(void) { return "diskcrypt-kms token 1"; }

}  // extern "C"
