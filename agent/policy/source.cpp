#include "agent/policy/source.hpp"

#include <sys/stat.h>

#include <utility>

#include "agent/error.hpp"
#include "agent/trusted_file.hpp"

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
    struct stat st {};
    try {
        TrustedFile f = read_trusted_file(path_, "access policy", kMaxPolicyBytes, &st);
        identity = Identity{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
        return std::make_shared<const Policy>(Policy::parse(f.text, path_));
    } catch (const Error&) {
        identity = Identity{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
        throw;
    }
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
