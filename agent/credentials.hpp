// Reading credentials (the HSM PIN, later client keys) from files only root
// can read, or from systemd credentials ($CREDENTIALS_DIRECTORY/NAME).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "agent/secure_buffer.hpp"

namespace diskcrypt {

// Reads a credential file into locked memory. Refuses (Error(kms_auth)) a
// file that is missing, not a regular file, a symlink, not owned by the
// agent's user, readable or writable by group or others, empty, or longer
// than `max_size`. One trailing newline is removed.
SecureBuffer read_credential_file(const std::string& path, std::string_view what, std::size_t max_size);

// Resolves a systemd credential name to $CREDENTIALS_DIRECTORY/NAME; refuses
// (Error(kms_auth)) when the agent was not started with credentials.
std::string systemd_credential_path(std::string_view name);

// Whether `name` is a valid systemd credential name as configured here:
// 1-64 characters from A-Z a-z 0-9 . _ -, and not "." or "..".
bool is_credential_name(std::string_view name);

}  // namespace diskcrypt
