// The agent's configuration file (TOML; documented with an example in
// agent/README.md and agent/agent.toml.example).
//
// Loading validates everything that can be checked without contacting a KMS:
// an invalid file is refused at start with "FILE:LINE: reason" (Error(config)).
#pragma once

#include <sys/types.h>

#include <toml++/toml.h>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/audit.hpp"
#include "agent/error.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/kms/provider.hpp"
#include "agent/log.hpp"
#include "agent/names.hpp"
#include "agent/policy/source.hpp"

namespace diskcrypt {

inline constexpr std::string_view kDefaultConfigPath = "/etc/diskcrypt/agent.toml";

// One TOML table being read. Every getter records the key as used; finish()
// refuses the keys nobody asked for. Errors name the file and line.
class ConfigSection {
public:
    ConfigSection(const toml::table& table, std::string source, std::string name);

    // The section's name as written, e.g. "providers.hsm".
    [[nodiscard]] const std::string& name() const { return name_; }

    [[nodiscard]] std::optional<std::string> optional_string(std::string_view key);
    [[nodiscard]] std::string required_string(std::string_view key);
    [[nodiscard]] std::optional<bool> optional_bool(std::string_view key);
    // An integer from 0 to max.
    [[nodiscard]] std::optional<unsigned> optional_unsigned(std::string_view key, unsigned max);
    // An array of strings, each non-empty and without NUL bytes (the array may be empty).
    [[nodiscard]] std::optional<std::vector<std::string>> optional_string_list(std::string_view key);
    // An absolute path (starts with '/', no NUL, at most PATH_MAX).
    [[nodiscard]] std::optional<std::string> optional_path(std::string_view key);
    [[nodiscard]] std::string required_path(std::string_view key);

    // An Error(config) located at the key's line (or the section's if absent).
    [[nodiscard]] Error error_at(std::string_view key, const std::string& reason) const;
    [[nodiscard]] Error error(const std::string& reason) const;

    // Refuses keys that were never read.
    void finish() const;

private:
    [[nodiscard]] const toml::node* get(std::string_view key);
    [[nodiscard]] std::string location(const toml::source_region& where) const;
    // "[NAME] " before a key, "[NAME]: " before a reason (colon); "" for a
    // file's top level (name "", as a provisioning entry).
    [[nodiscard]] std::string section_text(bool colon = false) const
    {
        return name_.empty() ? "" : "[" + name_ + (colon ? "]: " : "] ");
    }

    const toml::table& table_;
    std::string source_;
    std::string name_;
    std::set<std::string, std::less<>> used_;
};

// [revocation]: what happens to attached disks when the KMS reports their
// key disabled or destroyed (agent/ops/revocation.hpp).
enum class RevocationMode : std::uint8_t { keep, revoke };
std::string_view revocation_mode_name(RevocationMode mode);

struct RevocationSettings {
    RevocationMode mode = RevocationMode::keep;  // for keys not listed below
    std::chrono::seconds interval{60};           // between key-state checks
    // Per key ("PROVIDER:KEY_ID"), overriding `mode`.
    std::map<std::string, RevocationMode, std::less<>> keys;
    [[nodiscard]] RevocationMode mode_for(const KeyRef& key) const;
};

struct AgentConfig {
    std::string source;  // the file it came from
    std::string socket_path = std::string(proto::kDefaultSocketPath);
    std::optional<std::string> status_group;
    gid_t status_gid = 0;
    std::optional<KeyRef> default_key;       // version empty
    std::optional<std::string> policy_path;  // [agent] policy: the access policy file
    LogLevel log_level = LogLevel::info;
    std::string lock_dir = "/run/diskcrypt/lock";  // per-disk lock files
    audit::Settings audit;                         // [audit]
    // [recovery] enabled: whether `recover` (the cryptsetup token plugin's
    // break-glass request) may hand a disk's keyslot secret to root.
    bool recovery = false;
    // [auto_attach] directory: host provisioning's entries, one file per disk
    // that may be attached when its device appears (agent/ops/auto_attach.hpp).
    std::string auto_attach_dir = "/etc/diskcrypt/disks.d";
    RevocationSettings revocation;  // [revocation]
    // The profiles of the disk types the host overrides ([disk_types.TYPE]),
    // each the built-in one with the host's changes.
    std::map<std::string, DiskProfile, std::less<>> disk_profiles;
    std::map<std::string, std::unique_ptr<kms::Provider>, std::less<>> providers;

    // Where the access policy comes from: set at start by open_policy();
    // null (no [agent] policy) means the empty policy, which denies every
    // check.
    std::unique_ptr<policy::PolicySource> policy_source;

    // The profile of an encryptable disk type; Error(usage) for a local or
    // unknown type (the message lists the valid ones).
    [[nodiscard]] const DiskProfile& profile(std::string_view type) const;
    // The configured provider, or nullptr.
    [[nodiscard]] kms::Provider* provider(std::string_view name) const;
    // The access policy in force (after picking up a change of its file).
    [[nodiscard]] std::shared_ptr<const policy::Policy> policy() const;
};

// The provider a key names; Error(usage) naming the configured ones if this
// agent does not configure it.
kms::Provider& require_provider(const AgentConfig& cfg, const KeyRef& key);

// TOML text parsed, or Error(config) "SOURCE:LINE: what the parser says".
toml::table parse_toml(std::string_view text, const std::string& source);
// Error(config) "SOURCE:LINE: text" at a node (for a node without a section).
Error config_error_at(const std::string& source, const toml::node& node, const std::string& text);

// Parses configuration text; `source` names it in errors.
AgentConfig parse_config(std::string_view text, const std::string& source);
// Reads and parses a file.
AgentConfig load_config(const std::string& path);

// Reads the access policy file named by [agent] policy (Error(config) if it
// cannot be read or parsed: the agent does not start on a broken policy) and
// sets cfg.policy_source; each later load or refusal of the file is audited
// (event "policy"). Without [agent] policy it logs that every format, attach
// and verify will be denied.
void open_policy(AgentConfig& cfg);

}  // namespace diskcrypt
