#include "agent/credentials.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "agent/error.hpp"
#include "agent/raii.hpp"

namespace diskcrypt {

namespace {

std::string octal_mode(mode_t mode)
{
    std::ostringstream s;
    s << '0' << std::oct << (mode & 07777U);
    return s.str();
}

Error read_error(const std::string& what, const std::string& path, int errnum)
{
    return {Errc::kms_auth, errno_text("cannot read " + what + " " + path, errnum)};
}

}  // namespace

SecureBuffer read_credential_file(const std::string& path, std::string_view what, std::size_t max_size)
{
    const std::string w(what);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
    FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY));
    if (!fd) {
        const int e = errno;
        if (e == ELOOP) {
            throw Error(Errc::kms_auth, w + " " + path +
                                            " is a symbolic link; diskcrypt reads credentials only from "
                                            "regular files");
        }
        throw Error(Errc::kms_auth, errno_text("cannot read " + w + " " + path, e),
                    "create it as a root-owned file with mode 0600, or use a systemd credential");
    }
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) {
        throw Error(Errc::kms_auth, errno_text("cannot stat " + w + " " + path, errno));
    }
    if (!S_ISREG(st.st_mode)) {
        throw Error(Errc::kms_auth, w + " " + path + " is not a regular file");
    }
    if (st.st_uid != geteuid()) {
        throw Error(Errc::kms_auth,
                    w + " " + path + " is owned by uid " + std::to_string(st.st_uid) + ", not by the agent's uid " +
                        std::to_string(geteuid()),
                    "chown root:root " + path);
    }
    if ((st.st_mode & 077U) != 0) {
        throw Error(Errc::kms_auth,
                    w + " " + path + " is accessible by group or others (mode " + octal_mode(st.st_mode) +
                        "); refusing to use it",
                    "chmod 600 " + path);
    }
    SecureBuffer buf(max_size + 1);
    std::size_t got = 0;
    while (got < buf.size()) {
        const ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            throw read_error(w, path, errno);
        }
        if (n == 0) {
            break;
        }
        got += static_cast<std::size_t>(n);
    }
    if (got > max_size) {
        throw Error(Errc::kms_auth, w + " " + path + " is longer than " + std::to_string(max_size) + " bytes");
    }
    if (got > 0 && buf.data()[got - 1] == '\n') {
        --got;
        if (got > 0 && buf.data()[got - 1] == '\r') {
            --got;
        }
    }
    if (got == 0) {
        throw Error(Errc::kms_auth, w + " " + path + " is empty");
    }
    buf.truncate(got);
    return buf;
}

std::string systemd_credential_path(std::string_view name)
{
    const char* dir = std::getenv("CREDENTIALS_DIRECTORY");
    if (dir == nullptr || *dir != '/') {
        throw Error(Errc::kms_auth,
                    "credential '" + std::string(name) + "' is configured but $CREDENTIALS_DIRECTORY is not set",
                    "start the agent with LoadCredential=" + std::string(name) +
                        ":PATH (or SetCredentialEncrypted=) in its unit, or use pin_file");
    }
    return std::string(dir) + "/" + std::string(name);
}

bool is_credential_name(std::string_view name)
{
    const bool chars_ok = std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
               c == '-';
    });
    return chars_ok && !name.empty() && name.size() <= 64 && name != "." && name != "..";
}

}  // namespace diskcrypt
