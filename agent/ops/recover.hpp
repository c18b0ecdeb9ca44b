// `recover`: break-glass recovery through stock cryptsetup. The token plugin
// (cli/cryptsetup-token/) asks for a disk's keyslot secret so that
// `cryptsetup open --token-only` can open the disk with dm-crypt when an
// operator needs it without the diskcrypt target.
//
// Order of work: the host's configuration must enable it ([recovery]
// enabled = true; otherwise Error(not_supported), audited); the caller is
// root (the server's rule for every op but status and list); the device is
// opened once and its header read with every check of read_header(); the
// claims are the header's own (disk id, type, key, service account: a
// header names no other disk's claims and still unwraps, the associated data
// binds them), and an interrupted copy or import is refused (19); the access
// check is attach's (the disk's service account needs kms.keys.decrypt on
// the key); the secret is unwrapped and must open the token's keyslot.
//
// The secret leaves the agent only in the response to this request, after
// the JSON text and a NUL byte, from locked memory (see the protocol in
// agent/README.md); every recovery is a warning in the log and an audit
// event naming the caller's pid and uid.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "agent/config.hpp"
#include "agent/disk/header.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {

struct RecoverResult {
    DiskHeader header;
    std::string policy_revision;
    SecureBuffer secret;  // the keyslot passphrase
};

RecoverResult recover_secret(const AgentConfig& cfg, const proto::RecoverArgs& args);

// The result's JSON (no secret in it: "passphrase_bytes" says how many bytes
// follow the JSON text and its NUL).
nlohmann::json to_json(const RecoverResult& r);

}  // namespace diskcrypt
