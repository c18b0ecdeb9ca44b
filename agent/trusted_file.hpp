// Files whose writer decides who gets keys (the access policy, the
// auto-attach provisioning entries): read only when they are regular files,
// not symbolic links, owned by root or the agent's user and writable by
// nobody else, and no larger than a bound.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace diskcrypt {

struct TrustedFile {
    std::string text;
    struct stat st {};
};

// The file's bytes and its stat, or Error(config) naming `what` and `path`
// (e.g. "access policy /etc/diskcrypt/policy.toml is writable by group or
// others; whoever can write it decides who gets keys", hint "chmod go-w ...").
// The stat is filled as far as the file was opened, also when it is refused.
TrustedFile read_trusted_file(const std::string& path, std::string_view what, std::size_t max_bytes,
                              struct stat* seen = nullptr);

}  // namespace diskcrypt
