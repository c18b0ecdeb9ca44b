// `key`: the key lifecycle through diskcrypt (create, list, rotate, disable,
// enable, destroy) on the configured providers, as far as each provider
// allows (agent/README.md, "Key lifecycle").
//
// The KMS holds all key state: versions are KMS objects found by each
// provider's naming scheme, and the agent keeps none. The acting user (as the
// control plane asserts it, like format's --user) needs kms.keys.create
// (kms.editor) to create, kms.keys.update (kms.editor) to rotate, disable or
// enable, kms.keys.destroy (kms.admin) to destroy, and kms.keys.list
// (kms.viewer) on a key to see it in a list. The host's default key can be
// neither disabled nor destroyed; a key that a disk attached on this host
// uses is not destroyed unless forced.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "agent/config.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/kms/provider.hpp"
#include "agent/names.hpp"

namespace diskcrypt {

enum class KeyAction { create, list, rotate, disable, enable, destroy };

// "create", ...; Error(usage) for another word.
KeyAction parse_key_action(std::string_view action);
std::string_view key_action_name(KeyAction action);

struct KeyEntry {
    KeyRef key;  // provider and id (version empty)
    std::string provider_type;
    kms::KeyInfo info;
};

struct KeyResult {
    KeyAction action = KeyAction::list;
    std::vector<KeyEntry> keys;               // the key acted on (one), or the list
    std::size_t hidden = 0;                   // list: keys the user may not see (kms.keys.list)
    std::vector<std::string> attached_disks;  // destroy --force: disks on this host that used the key
    bool forced = false;
    std::string user;
    std::string policy_revision;
    long long elapsed_ms = 0;
};

KeyResult key_command(const AgentConfig& cfg, const proto::KeyArgs& args);
nlohmann::json to_json(const KeyResult& r);

// The disk ids attached on this host whose header names `key` (any version).
std::vector<std::string> disks_using_key(const KeyRef& key);

}  // namespace diskcrypt
