// `rewrap`: a disk's keyslot secret wrapped again, without touching data or
// the keyslot: to the key's current version (after a rotation), to another
// key, or to a key on another provider, and from associated-data version 1
// to the current one. The disk may be attached (only the token changes).
//
// Order of work: the claims (as verify), the access checks (the disk's
// service account needs kms.keys.decrypt on the current key; the acting
// user and the service account need what format needs on the new key), the
// disk's lock; the header read and checked against the claim; the secret
// unwrapped; wrapped under the new key with a round trip (nothing written
// yet); the token replaced in one LUKS2 metadata update; the header read back
// and the keyslot opened with the secret.
//
// Crash safety is LUKS2's: libcryptsetup writes the metadata's two copies one
// after the other, each with a checksum and a sequence id, and a reader takes
// the valid copy with the higher id. A crash at any point leaves either the
// old token or the new one, each of which opens the disk (tests/e2e kill the
// agent at every write).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "agent/config.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/names.hpp"

namespace diskcrypt {

struct RewrapResult {
    std::string device;
    std::string disk_id;
    std::string luks_uuid;
    KeyRef from;
    unsigned from_ad_version = 0;
    KeyRef to;
    unsigned to_ad_version = 0;
    std::string service_account;
    std::string user;
    std::string policy_revision;
    long long elapsed_ms = 0;
};

RewrapResult rewrap_disk(const AgentConfig& cfg, const proto::RewrapArgs& args);
nlohmann::json to_json(const RewrapResult& r);

}  // namespace diskcrypt
