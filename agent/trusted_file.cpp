#include "agent/trusted_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "agent/error.hpp"
#include "agent/raii.hpp"

namespace diskcrypt {

TrustedFile read_trusted_file(const std::string& path, std::string_view what_view, std::size_t max_bytes,
                              struct stat* seen)
{
    const std::string what(what_view);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
    FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK));
    if (!fd) {
        const int e = errno;
        if (e == ELOOP) {
            throw Error(Errc::config, what + " " + path + " is a symbolic link; name the file itself");
        }
        throw Error(Errc::config, errno_text("cannot read " + what + " " + path, e));
    }
    TrustedFile f;
    if (fstat(fd.get(), &f.st) != 0) {
        throw Error(Errc::config, errno_text("cannot stat " + what + " " + path, errno));
    }
    if (seen != nullptr) {
        *seen = f.st;
    }
    if (!S_ISREG(f.st.st_mode)) {
        throw Error(Errc::config, what + " " + path + " is not a regular file");
    }
    if (f.st.st_uid != 0 && f.st.st_uid != geteuid()) {
        throw Error(Errc::config,
                    what + " " + path + " is owned by uid " + std::to_string(f.st.st_uid) +
                        ", not by root or the agent's user; whoever owns it decides who gets keys",
                    "chown root:root " + path);
    }
    if ((f.st.st_mode & 022U) != 0) {
        throw Error(Errc::config,
                    what + " " + path + " is writable by group or others; whoever can write it decides who gets keys",
                    "chmod go-w " + path);
    }
    const std::string limit =
        max_bytes >= (1U << 20U) ? std::to_string(max_bytes >> 20U) + " MiB" : std::to_string(max_bytes) + " bytes";
    if (static_cast<std::size_t>(f.st.st_size) > max_bytes) {
        throw Error(Errc::config, what + " " + path + " is larger than " + limit);
    }
    // One byte more than the bound: a file that grew after the stat is refused too.
    f.text.assign(max_bytes + 1, '\0');
    std::size_t got = 0;
    while (got < f.text.size()) {
        const ssize_t n = ::read(fd.get(), f.text.data() + got, f.text.size() - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            const int e = errno;
            std::string subject = "cannot read ";
            subject += what;
            subject += ' ';
            subject += path;
            throw Error(Errc::config, errno_text(subject, e));
        }
        if (n == 0) {
            break;
        }
        got += static_cast<std::size_t>(n);
    }
    if (got > max_bytes) {
        throw Error(Errc::config, what + " " + path + " is larger than " + limit);
    }
    f.text.resize(got);
    return f;
}

}  // namespace diskcrypt
