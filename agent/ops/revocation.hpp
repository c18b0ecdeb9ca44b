// Revocation of attached disks when their key is disabled or destroyed
// ([revocation] in agent.toml; agent/README.md, "Revocation of attached
// disks").
//
// Per key (or for all): `keep` (attached disks keep working until detached)
// or `revoke` (within `interval` seconds of the KMS reporting the version a
// disk uses as not active, the disk's mapping is suspended and its kernel key
// wiped, so its I/O waits; when the KMS reports the version active again the
// disk is re-keyed from its header through the KMS and resumed).
//
// A check asks each provider once per key (version_states), never per disk,
// and only for keys whose disks could change: keys in `revoke` mode, and keys
// of disks that are revoked now. A KMS that cannot answer (down, slow, TLS
// or credentials refused) never revokes anything: the check logs it and the
// disks keep their state. Every revocation and restoration is an audit event
// ("revoke", "restore"). The agent keeps no state a restart loses: a revoked
// disk is a suspended diskcrypt mapping whose key is wiped, which the next
// check finds again.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "agent/config.hpp"
#include "agent/kms/provider.hpp"
#include "agent/names.hpp"

namespace diskcrypt {

// Why a disk is revoked, as this agent process knows it.
struct RevokedDisk {
    KeyRef key;          // with the version the disk uses
    std::string state;   // the KMS's state of that version
    std::string since;   // UTC time of the revocation, or of the check that found it
    bool found = false;  // found already revoked (by an earlier agent process), not revoked by this one
};

struct KeyCheck {
    KeyRef key;  // provider and id
    RevocationMode mode = RevocationMode::keep;
    std::vector<std::string> disks;  // attached disks using it
    kms::VersionStates states;       // when the KMS answered
    std::string error;               // when it did not: nothing changed for this key's disks
};

struct RevocationReport {
    std::string time;  // UTC, when the check started
    std::vector<KeyCheck> keys;
    std::vector<std::string> revoked;                         // disks revoked by this check
    std::vector<std::string> restored;                        // disks re-keyed and resumed
    std::vector<std::pair<std::string, std::string>> failed;  // disk, why (retried at the next check)
    long long elapsed_ms = 0;
};

// One check, now (serialised with the periodic one).
RevocationReport check_revocation(const AgentConfig& cfg);
nlohmann::json to_json(const RevocationReport& r);

// Why a disk is revoked, if this process revoked it or found it revoked.
std::optional<RevokedDisk> revoked_disk(const std::string& disk_id);
nlohmann::json to_json(const RevokedDisk& r);
// The last check's time and outcome (for status), or nothing before the first.
std::optional<std::string> last_revocation_check();

// The periodic check: a thread that runs check_revocation every
// cfg.revocation.interval while the agent serves.
class RevocationMonitor {
public:
    explicit RevocationMonitor(const AgentConfig& cfg);
    RevocationMonitor(const RevocationMonitor&) = delete;
    RevocationMonitor& operator=(const RevocationMonitor&) = delete;
    RevocationMonitor(RevocationMonitor&&) = delete;
    RevocationMonitor& operator=(RevocationMonitor&&) = delete;
    // Stops the thread; a check in progress (a KMS call, a suspend waiting
    // for the backing device) is waited for at most `grace`. Returns whether
    // the thread ended; if not it is detached (the caller must then exit
    // the process without destroying the configuration).
    bool stop(std::chrono::seconds grace);
    ~RevocationMonitor();

private:
    void loop();

    const AgentConfig& cfg_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable done_;
    bool stopping_ = false;
    bool finished_ = false;
    std::thread thread_;
};

}  // namespace diskcrypt
