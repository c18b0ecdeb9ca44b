#include "agent/policy/source.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "agent/error.hpp"
#include "agent/raii.hpp"

namespace diskcrypt::policy {

FilePolicySource::FilePolicySource(std::string path, Observer observer)
    : path_(std::move(path)), observer_(std::move(observer))
{
    Identity identity;
    policy_ = read(identity);
    seen_ = identity;
}

std::shared_ptr<const Policy> FilePolicySource::read(Identity& identity) const
{
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open is a C vararg API
    FileDescriptor fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK));
    if (!fd) {
        const int e = errno;
        if (e == ELOOP) {
            throw Error(Errc::config, "access policy " + path_ + " is a symbolic link; name the file itself");
        }
        throw Error(Errc::config, errno_text("cannot read access policy " + path_, e));
    }
    struct stat st {};
    if (fstat(fd.get(), &st) != 0) {
        throw Error(Errc::config, errno_text("cannot stat access policy " + path_, errno));
    }
    identity = Identity{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
    if (!S_ISREG(st.st_mode)) {
        throw Error(Errc::config, "access policy " + path_ + " is not a regular file");
    }
    if (st.st_uid != 0 && st.st_uid != geteuid()) {
        throw Error(Errc::config,
                    "access policy " + path_ + " is owned by uid " + std::to_string(st.st_uid) +
                        ", not by root or the agent's user; whoever owns it decides who gets keys",
                    "chown root:root " + path_);
    }
    if ((st.st_mode & 022U) != 0) {
        throw Error(Errc::config,
                    "access policy " + path_ +
                        " is writable by group or others; whoever can write it decides "
                        "who gets keys",
                    "chmod go-w " + path_);
    }
    if (static_cast<std::size_t>(st.st_size) > kMaxPolicyBytes) {
        throw Error(Errc::config,
                    "access policy " + path_ + " is larger than " + std::to_string(kMaxPolicyBytes >> 20) + " MiB");
    }
    std::string text(kMaxPolicyBytes + 1, '\0');
    std::size_t got = 0;
    while (got < text.size()) {
        const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            throw Error(Errc::config, errno_text("cannot read access policy " + path_, errno));
        }
        if (n == 0) {
            break;
        }
        got += static_cast<std::size_t>(n);
    }
    text.resize(got);
    return std::make_shared<const Policy>(Policy::parse(text, path_));
}

void FilePolicySource::refresh(bool force)
{
    if (!force && seen_) {
        struct stat st {};
        if (::lstat(path_.c_str(), &st) == 0 &&
            Identity{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim} == *seen_) {
            return;
        }
    }
    Identity identity;
    ReloadEvent event;
    try {
        auto next = read(identity);
        seen_ = identity;
        if (next->revision() == policy_->revision()) {
            return;  // touched, or written back unchanged
        }
        policy_ = std::move(next);
        event.loaded = true;
        event.message = "access policy " + path_ + " loaded: " + std::to_string(policy_->binding_count()) + " bindings";
    } catch (const Error& e) {
        const bool repeat = seen_ && identity == *seen_ && !force;
        seen_ = identity;
        if (repeat) {
            return;
        }
        event.message = std::string(e.what()) + "; the policy in force stays";
    }
    event.revision = policy_->revision();
    if (observer_) {
        observer_(event);
    }
}

std::shared_ptr<const Policy> FilePolicySource::current()
{
    const std::lock_guard lock(mutex_);
    refresh(false);
    return policy_;
}

void FilePolicySource::reload()
{
    const std::lock_guard lock(mutex_);
    refresh(true);
}

}  // namespace diskcrypt::policy
