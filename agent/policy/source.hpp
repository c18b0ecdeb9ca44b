// Where the access policy comes from: a narrow interface, so that a fleet's
// distributed source can stand beside the file source later.
//
// FilePolicySource reads a TOML file (agent/README.md, "Access policy"). It
// notices a change on the next decision (current() compares the file's
// identity: device, inode, size, modification and change times) and
// re-reads on reload() (SIGHUP). A file that cannot be read or parsed is
// refused: the last good policy stays in force. Each new policy and each
// refusal is reported once to the observer (the agent audits it).
#pragma once

#include <sys/stat.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "agent/policy/policy.hpp"

namespace diskcrypt::policy {

class PolicySource {
public:
    PolicySource() = default;
    PolicySource(const PolicySource&) = delete;
    PolicySource& operator=(const PolicySource&) = delete;
    PolicySource(PolicySource&&) = delete;
    PolicySource& operator=(PolicySource&&) = delete;
    virtual ~PolicySource() = default;

    // The policy in force (never null), after picking up a change.
    virtual std::shared_ptr<const Policy> current() = 0;
    // Re-reads the source now, whether or not it looks changed.
    virtual void reload() = 0;
    // What the audit calls it, e.g. "file /etc/diskcrypt/policy.toml".
    [[nodiscard]] virtual std::string describe() const = 0;
};

struct ReloadEvent {
    bool loaded = false;   // a new policy is in force; false: refused, the last good one stays
    std::string revision;  // the revision in force after the event
    std::string message;   // what was loaded, or why it was refused ("FILE:LINE: reason")
};

class FilePolicySource final : public PolicySource {
public:
    using Observer = std::function<void(const ReloadEvent&)>;

    // Reads the file now: one that cannot be read or parsed is Error(config)
    // (the agent does not start on a broken policy). The file must be a
    // regular file owned by root or the agent's user and writable by no one
    // else.
    FilePolicySource(std::string path, Observer observer);

    std::shared_ptr<const Policy> current() override;
    void reload() override;
    [[nodiscard]] std::string describe() const override { return "file " + path_; }

private:
    struct Identity {
        dev_t dev = 0;
        ino_t ino = 0;
        off_t size = 0;
        struct timespec mtime {};
        struct timespec ctime {};
        friend bool operator==(const Identity& a, const Identity& b)
        {
            return a.dev == b.dev && a.ino == b.ino && a.size == b.size && a.mtime.tv_sec == b.mtime.tv_sec &&
                   a.mtime.tv_nsec == b.mtime.tv_nsec && a.ctime.tv_sec == b.ctime.tv_sec &&
                   a.ctime.tv_nsec == b.ctime.tv_nsec;
        }
    };

    // Reads and parses the file; throws Error(config).
    std::shared_ptr<const Policy> read(Identity& identity) const;
    void refresh(bool force);

    std::string path_;
    Observer observer_;
    std::mutex mutex_;
    std::shared_ptr<const Policy> policy_;
    std::optional<Identity> seen_;  // of the last read, good or refused
};

}  // namespace diskcrypt::policy
