#include "agent/ops/key.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <utility>

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/dm.hpp"
#include "agent/error.hpp"
#include "agent/log.hpp"
#include "agent/ops/attach.hpp"
#include "agent/policy/policy.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

constexpr std::array kKeyActions{
    std::pair{KeyAction::create, std::string_view("create")},
    std::pair{KeyAction::list, std::string_view("list")},
    std::pair{KeyAction::rotate, std::string_view("rotate")},
    std::pair{KeyAction::disable, std::string_view("disable")},
    std::pair{KeyAction::enable, std::string_view("enable")},
    std::pair{KeyAction::destroy, std::string_view("destroy")},
};

policy::Permission permission_for(KeyAction action)
{
    switch (action) {
        case KeyAction::create:
            return policy::Permission::keys_create;
        case KeyAction::list:
            return policy::Permission::keys_list;
        case KeyAction::rotate:
        case KeyAction::disable:
        case KeyAction::enable:
            return policy::Permission::keys_update;
        case KeyAction::destroy:
            return policy::Permission::keys_destroy;
    }
    return policy::Permission::keys_destroy;
}

KeyEntry entry(const kms::Provider& p, std::string key_id, kms::KeyInfo info)
{
    KeyEntry e;
    e.key.provider = p.name();
    e.key.key_id = std::move(key_id);
    e.provider_type = std::string(p.type());
    e.info = std::move(info);
    return e;
}

void refuse_default_key(const AgentConfig& cfg, const KeyRef& key, KeyAction action)
{
    if (cfg.default_key && cfg.default_key->spec() == key.spec()) {
        throw Error(Errc::not_supported,
                    "key " + key.spec() + " is this host's default key ([agent] default_key in " + cfg.source +
                        "): it cannot be " + (action == KeyAction::disable ? "disabled" : "destroyed"),
                    "the default key serves every disk formatted without --key; rotate it instead, or make "
                    "another key the default first");
    }
}

std::vector<KeyEntry> list_visible(const AgentConfig& cfg, const proto::KeyArgs& args, std::size_t& hidden)
{
    const auto policy = cfg.policy();
    if (audit::Context* ctx = audit::current()) {
        ctx->policy_revision = policy->revision();
    }
    const policy::Subject user = policy::Subject::user_account(args.user);
    std::vector<KeyEntry> out;
    for (const auto& [name, provider] : cfg.providers) {
        if (args.provider && *args.provider != name) {
            continue;
        }
        std::vector<kms::KeyInfo> keys = provider->list_keys();
        for (kms::KeyInfo& k : keys) {
            std::string id = k.key_id;  // before k is moved from
            KeyEntry e = entry(*provider, std::move(id), std::move(k));
            if (policy->check(user, policy::Permission::keys_list, policy::Resource::key(e.key.spec())).allowed) {
                out.push_back(std::move(e));
            } else {
                ++hidden;
            }
        }
    }
    std::sort(out.begin(), out.end(), [](const KeyEntry& a, const KeyEntry& b) { return a.key.spec() < b.key.spec(); });
    return out;
}

}  // namespace

KeyAction parse_key_action(std::string_view action)
{
    for (const auto& [a, name] : kKeyActions) {
        if (name == action) {
            return a;
        }
    }
    throw Error(Errc::usage, "unknown key action '" + printable(action, 32) + "'",
                "use create, list, rotate, disable, enable or destroy");
}

std::string_view key_action_name(KeyAction action)
{
    for (const auto& [a, name] : kKeyActions) {
        if (a == action) {
            return name;
        }
    }
    return "unknown";
}

std::vector<std::string> disks_using_key(const KeyRef& key)
{
    std::vector<std::string> out;
    if (!dm::available()) {
        return out;  // no mapping can exist
    }
    for (const DiskInfo& d : list_disks(true)) {
        if (d.key && d.key->spec() == key.spec()) {
            out.push_back(d.disk_id);
        }
    }
    return out;
}

KeyResult key_command(const AgentConfig& cfg, const proto::KeyArgs& args)
{
    const auto start = std::chrono::steady_clock::now();
    KeyResult r;
    r.action = parse_key_action(args.action);
    validate_user_account(args.user);
    r.user = args.user;
    if (r.action == KeyAction::list) {
        if (args.key) {
            throw Error(Errc::usage, "key list takes no key", "name a provider to list only its keys");
        }
        if (args.provider && cfg.provider(*args.provider) == nullptr) {
            (void)require_provider(cfg, KeyRef{*args.provider, "", ""});
        }
        r.keys = list_visible(cfg, args, r.hidden);
        r.policy_revision = cfg.policy()->revision();
    } else {
        if (!args.key) {
            throw Error(Errc::usage, "key " + std::string(key_action_name(r.action)) + " needs a key",
                        "name it as PROVIDER:KEY_ID");
        }
        if (args.provider) {
            throw Error(Errc::usage, "only key list takes a provider", "name the key as PROVIDER:KEY_ID");
        }
        if (args.force && r.action != KeyAction::destroy) {
            throw Error(Errc::usage, "only key destroy takes force");
        }
        const KeyRef key = parse_key_spec(*args.key);
        kms::Provider& p = require_provider(cfg, key);
        if (audit::Context* ctx = audit::current()) {
            ctx->key = key;
        }
        const std::array checks{AccessCheck{policy::Subject::user_account(args.user), permission_for(r.action),
                                            policy::Resource::key(key.spec())}};
        r.policy_revision = authorize(cfg, checks);
        if (r.action == KeyAction::disable || r.action == KeyAction::destroy) {
            refuse_default_key(cfg, key, r.action);
        }
        if (r.action == KeyAction::destroy) {
            r.attached_disks = disks_using_key(key);
            if (!r.attached_disks.empty() && !args.force) {
                std::string ids;
                for (const std::string& id : r.attached_disks) {
                    ids += (ids.empty() ? "" : ", ") + id;
                }
                throw Error(Errc::busy,
                            "key " + key.spec() + " is used by " + std::to_string(r.attached_disks.size()) +
                                " disk(s) attached on this host: " + ids +
                                "; destroying it makes their data "
                                "unreadable once they are detached",
                            "detach them first, or re-run with --force if the data is to be lost");
            }
            r.forced = args.force && !r.attached_disks.empty();
            if (r.forced) {
                log_warning("key destroy of " + key.spec() + " forced while disks use it");
            }
        }
        kms::KeyInfo info;
        switch (r.action) {
            case KeyAction::create:
                info = p.create_key(key.key_id);
                break;
            case KeyAction::rotate:
                info = p.rotate_key(key.key_id);
                break;
            case KeyAction::disable:
                info = p.disable_key(key.key_id);
                break;
            case KeyAction::enable:
                info = p.enable_key(key.key_id);
                break;
            case KeyAction::destroy:
                p.destroy_key(key.key_id);
                info.key_id = key.key_id;
                break;
            case KeyAction::list:
                break;
        }
        r.keys.push_back(entry(p, key.key_id, std::move(info)));
    }
    r.elapsed_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    return r;
}

nlohmann::json to_json(const KeyResult& r)
{
    auto key_json = [](const KeyEntry& e) {
        nlohmann::json versions = nlohmann::json::array();
        std::string primary;
        for (const kms::KeyVersion& v : e.info.versions) {
            versions.push_back({{"version", v.version},
                                {"state", v.state},
                                {"primary", v.primary},
                                {"created", v.created > 0 ? nlohmann::json(v.created) : nlohmann::json()}});
            if (v.primary) {
                primary = v.version;
            }
        }
        nlohmann::json j = {
            {"provider", e.key.provider},
            {"provider_type", e.provider_type},
            {"id", e.key.key_id},
            {"algorithm", e.info.algorithm.empty() ? nlohmann::json() : nlohmann::json(e.info.algorithm)},
            {"primary", primary.empty() ? nlohmann::json() : nlohmann::json(primary)},
            {"versions", versions}};
        return j;
    };
    nlohmann::json j = {{"action", key_action_name(r.action)}};
    if (r.action == KeyAction::list) {
        nlohmann::json keys = nlohmann::json::array();
        for (const KeyEntry& e : r.keys) {
            keys.push_back(key_json(e));
        }
        j["keys"] = keys;
        j["hidden"] = r.hidden;
    } else if (!r.keys.empty()) {
        j["key"] = key_json(r.keys.front());
    }
    if (r.action == KeyAction::destroy) {
        j["forced"] = r.forced;
        j["attached_disks"] = r.attached_disks;
    }
    j["user"] = r.user;
    j["policy_revision"] = r.policy_revision;
    j["elapsed_ms"] = r.elapsed_ms;
    return j;
}

}  // namespace diskcrypt
