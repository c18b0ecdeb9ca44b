#include "agent/config.hpp"

#include <grp.h>

#include <array>
#include <climits>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "agent/text.hpp"

namespace diskcrypt {

namespace {

std::string type_name(const toml::node& node)
{
    switch (node.type()) {
        case toml::node_type::string:
            return "a string";
        case toml::node_type::integer:
            return "an integer";
        case toml::node_type::floating_point:
            return "a number";
        case toml::node_type::boolean:
            return "a boolean";
        case toml::node_type::table:
            return "a table";
        case toml::node_type::array:
            return "an array";
        default:
            return "a date or time";
    }
}

std::string unknown_section(const std::string& name)
{
    return "unknown section '" + name +
           "' (known: [agent], [audit], [auto_attach], [disk_types.TYPE], [providers.NAME], [recovery], [revocation])";
}

std::string must_be_table(const std::string& name) { return "'" + name + "' must be a table ([" + name + "])"; }

std::optional<gid_t> lookup_group(const std::string& name)
{
    group grp{};
    group* result = nullptr;
    std::vector<char> buf(16384);
    if (getgrnam_r(name.c_str(), &grp, buf.data(), buf.size(), &result) != 0 || result == nullptr) {
        return std::nullopt;
    }
    return result->gr_gid;
}

void parse_agent_section(ConfigSection& s, AgentConfig& cfg)
{
    if (auto socket = s.optional_path("socket")) {
        if (socket->size() > 103) {
            throw s.error_at("socket",
                             "socket path is longer than 103 bytes (a Unix socket address holds 107, and "
                             "the agent binds PATH.new first)");
        }
        cfg.socket_path = *socket;
    }
    if (auto group = s.optional_string("status_group")) {
        const auto gid = lookup_group(*group);
        if (!gid) {
            throw s.error_at("status_group", "group '" + *group + "' does not exist");
        }
        cfg.status_group = *group;
        cfg.status_gid = *gid;
    }
    if (auto key = s.optional_string("default_key")) {
        try {
            cfg.default_key = parse_key_spec(*key);
        } catch (const Error& e) {
            throw s.error_at("default_key", e.what());
        }
    }
    if (auto dir = s.optional_path("lock_dir")) {
        cfg.lock_dir = *dir;
    }
    cfg.policy_path = s.optional_path("policy");
    if (auto level = s.optional_string("log_level")) {
        if (!parse_log_level(*level, cfg.log_level)) {
            throw s.error_at("log_level",
                             "log_level must be one of error, warning, info, debug (not '" + *level + "')");
        }
    }
    s.finish();
}

// Calls fn(NAME, section) for each [GROUP.NAME] table; anything else under
// GROUP is refused at its line.
template <typename F>
void for_each_named_section(const toml::table& root, const std::string& group, const std::string& source, F&& fn)
{
    const auto* tables = root.get_as<toml::table>(group);
    if (tables == nullptr) {
        return;
    }
    for (const auto& [key, node] : *tables) {
        // Outside text: escaped where it enters (a name that is not text is
        // refused by its validator, and reported escaped).
        const std::string name = printable(key.str());
        std::string section = group;
        section += ".";
        section += name;
        const auto* table = node.as_table();
        if (table == nullptr) {
            throw config_error_at(source, node, must_be_table(section));
        }
        ConfigSection s(*table, source, section);
        fn(name, s);
    }
}

// [disk_types.TYPE]: the host's overrides of an encryptable type's profile.
void parse_disk_type_section(ConfigSection& s, const std::string& name, AgentConfig& cfg)
{
    const DiskType* type = nullptr;
    try {
        type = &encryptable_disk_type(name);
    } catch (const Error& e) {
        throw s.error(e.what() + (e.hint().empty() ? "" : " (" + e.hint() + ")"));
    }
    DiskProfile& p = cfg.disk_profiles.try_emplace(std::string(type->name), type->profile).first->second;
    if (const auto ss = s.optional_unsigned("sector_size", 4096)) {
        try {
            validate_sector_size(*ss);
        } catch (const Error& e) {
            throw s.error_at("sector_size", e.what());
        }
        p.sector_size = *ss;
    }
    p.discards = s.optional_bool("discards").value_or(p.discards);
    p.zero_unwritten = s.optional_bool("zero_unwritten").value_or(p.zero_unwritten);
    p.read_workqueue = s.optional_bool("read_workqueue").value_or(p.read_workqueue);
    p.write_workqueue = s.optional_bool("write_workqueue").value_or(p.write_workqueue);
    if (const auto depth = s.optional_unsigned("inline_depth", kMaxInlineDepth)) {
        p.inline_depth = *depth;
    }
    s.finish();
}

void parse_audit_section(ConfigSection& s, AgentConfig& cfg)
{
    cfg.audit.file = s.optional_path("file");
    if (auto journal = s.optional_string("journal")) {
        if (*journal == "auto") {
            cfg.audit.journal = audit::Journal::automatic;
        } else if (*journal == "always") {
            cfg.audit.journal = audit::Journal::always;
        } else if (*journal == "never") {
            cfg.audit.journal = audit::Journal::never;
        } else {
            throw s.error_at("journal", "journal must be one of auto, always, never (not '" + *journal + "')");
        }
    }
    s.finish();
}

}  // namespace

ConfigSection::ConfigSection(const toml::table& table, std::string source, std::string name)
    : table_(table), source_(std::move(source)), name_(std::move(name))
{
}

const toml::node* ConfigSection::get(std::string_view key)
{
    used_.emplace(key);
    return table_.get(key);
}

std::string ConfigSection::location(const toml::source_region& where) const
{
    return source_ + ":" + std::to_string(where.begin.line);
}

Error ConfigSection::error_at(std::string_view key, const std::string& reason) const
{
    const toml::node* node = table_.get(key);
    const auto& where = node != nullptr ? node->source() : table_.source();
    return {Errc::config, location(where) + ": " + section_text() + std::string(key) + ": " + reason};
}

Error ConfigSection::error(const std::string& reason) const
{
    return {Errc::config, location(table_.source()) + ": " + section_text(true) + reason};
}

std::optional<std::string> ConfigSection::optional_string(std::string_view key)
{
    const toml::node* node = get(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    const auto* value = node->as_string();
    if (value == nullptr) {
        throw error_at(key, "expected a string, found " + type_name(*node));
    }
    const std::string& text = value->get();
    if (text.empty()) {
        throw error_at(key, "must not be empty");
    }
    if (text.find('\0') != std::string::npos) {
        throw error_at(key, "must not contain NUL bytes");
    }
    return text;
}

std::string ConfigSection::required_string(std::string_view key)
{
    auto value = optional_string(key);
    if (!value) {
        throw error("missing required key '" + std::string(key) + "'");
    }
    return *value;
}

std::optional<bool> ConfigSection::optional_bool(std::string_view key)
{
    const toml::node* node = get(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    const auto* value = node->as_boolean();
    if (value == nullptr) {
        throw error_at(key, "expected a boolean (true or false), found " + type_name(*node));
    }
    return value->get();
}

std::optional<unsigned> ConfigSection::optional_unsigned(std::string_view key, unsigned max)
{
    const toml::node* node = get(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    const auto* value = node->as_integer();
    if (value == nullptr) {
        throw error_at(key, "expected an integer, found " + type_name(*node));
    }
    if (value->get() < 0 || value->get() > max) {
        throw error_at(key, "must be from 0 to " + std::to_string(max) + " (not " + std::to_string(value->get()) + ")");
    }
    return static_cast<unsigned>(value->get());
}

std::optional<std::vector<std::string>> ConfigSection::optional_string_list(std::string_view key)
{
    const toml::node* node = get(key);
    if (node == nullptr) {
        return std::nullopt;
    }
    const auto* array = node->as_array();
    if (array == nullptr) {
        throw error_at(key, "expected an array of strings, found " + type_name(*node));
    }
    std::vector<std::string> out;
    out.reserve(array->size());
    for (const toml::node& item : *array) {
        const auto* value = item.as_string();
        if (value == nullptr) {
            throw error_at(key, "expected an array of strings, found " + type_name(item) + " in it");
        }
        const std::string& text = value->get();
        if (text.empty() || text.find('\0') != std::string::npos) {
            throw error_at(key, "its strings must be non-empty and must not contain NUL bytes");
        }
        out.push_back(text);
    }
    return out;
}

std::optional<std::string> ConfigSection::optional_path(std::string_view key)
{
    auto value = optional_string(key);
    if (value && (value->front() != '/' || value->size() >= PATH_MAX)) {
        throw error_at(key, "must be an absolute path (starting with '/')");
    }
    return value;
}

std::string ConfigSection::required_path(std::string_view key)
{
    auto value = optional_path(key);
    if (!value) {
        throw error("missing required key '" + std::string(key) + "'");
    }
    return *value;
}

void ConfigSection::finish() const
{
    for (const auto& [key, node] : table_) {
        if (!used_.contains(key.str())) {
            throw Error(Errc::config, location(node.source()) + ": " + section_text(true) + "unknown key '" +
                                          printable(key.str()) + "'");
        }
    }
}

kms::Provider* AgentConfig::provider(std::string_view name) const
{
    const auto it = providers.find(name);
    return it == providers.end() ? nullptr : it->second.get();
}

toml::table parse_toml(std::string_view text, const std::string& source)
{
    try {
        return toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        throw Error(Errc::config,
                    source + ":" + std::to_string(e.source().begin.line) + ": " + sanitize(e.description()));
    }
}

Error config_error_at(const std::string& source, const toml::node& node, const std::string& text)
{
    std::string msg = source;
    msg += ":";
    msg += std::to_string(node.source().begin.line);
    msg += ": ";
    msg += text;
    return {Errc::config, msg};
}

const DiskProfile& AgentConfig::profile(std::string_view type) const
{
    const DiskType& t = encryptable_disk_type(type);
    const auto it = disk_profiles.find(t.name);
    return it == disk_profiles.end() ? t.profile : it->second;
}

kms::Provider& require_provider(const AgentConfig& cfg, const KeyRef& key)
{
    if (kms::Provider* p = cfg.provider(key.provider)) {
        return *p;
    }
    std::string known;
    for (const auto& [name, p] : cfg.providers) {
        known += (known.empty() ? "" : ", ") + name;
    }
    throw Error(Errc::usage, "key " + key.spec() + " names provider '" + key.provider +
                                 "', which this agent does not configure (configured: " + known + ")");
}

std::shared_ptr<const policy::Policy> AgentConfig::policy() const
{
    static const auto kEmpty = std::make_shared<const policy::Policy>(policy::Policy::empty());
    return policy_source ? policy_source->current() : kEmpty;
}

void open_policy(AgentConfig& cfg)
{
    if (!cfg.policy_path) {
        log_warning("no access policy ([agent] policy in " + cfg.source +
                    "): every format, attach and verify will be denied");
        return;
    }
    const std::string path = *cfg.policy_path;
    const auto report = [](const policy::ReloadEvent& e) {
        audit::Event ev{"policy", e.loaded ? "ok" : "refused", {}, e.loaded ? "" : "config", e.message};
        ev.context.policy_revision = e.revision;
        if (e.loaded) {
            log_info(e.message + " (revision " + e.revision + ")");
        } else {
            log_warning(e.message + " (revision " + e.revision + " stays in force)");
        }
        audit::emit(ev);
    };
    cfg.policy_source = std::make_unique<policy::FilePolicySource>(path, report);
    const auto p = cfg.policy_source->current();
    report({true, p->revision(),
            "access policy " + path + " loaded at start: " + std::to_string(p->binding_count()) + " bindings"});
}

std::string_view revocation_mode_name(RevocationMode mode)
{
    return mode == RevocationMode::revoke ? "revoke" : "keep";
}

RevocationMode RevocationSettings::mode_for(const KeyRef& key) const
{
    const auto it = keys.find(key.spec());
    return it != keys.end() ? it->second : mode;
}

namespace {

// [revocation]: mode, interval, and the keys listed under revoke and keep.
// Runs after the providers are known: a listed key must name one.
void parse_revocation_section(ConfigSection& s, AgentConfig& cfg)
{
    RevocationSettings& r = cfg.revocation;
    if (const auto mode = s.optional_string("mode")) {
        if (*mode == "keep" || *mode == "revoke") {
            r.mode = *mode == "revoke" ? RevocationMode::revoke : RevocationMode::keep;
        } else {
            throw s.error_at("mode", R"(must be "keep" or "revoke", not ")" + printable(*mode, 32) + "\"");
        }
    }
    if (const auto interval = s.optional_unsigned("interval", 86400)) {
        if (*interval < 1) {
            throw s.error_at("interval", "must be at least 1 (seconds between key-state checks)");
        }
        r.interval = std::chrono::seconds(*interval);
    }
    for (const auto& [list, mode] :
         {std::pair{"revoke", RevocationMode::revoke}, std::pair{"keep", RevocationMode::keep}}) {
        for (const std::string& spec : s.optional_string_list(list).value_or(std::vector<std::string>{})) {
            KeyRef key;
            try {
                key = parse_key_spec(spec);
            } catch (const Error& e) {
                throw s.error_at(list, e.what());
            }
            if (cfg.provider(key.provider) == nullptr) {
                throw s.error_at(
                    list, "key " + key.spec() + " names provider '" + key.provider + "', which is not configured");
            }
            if (!r.keys.emplace(key.spec(), mode).second) {
                throw s.error_at(list,
                                 "key " + key.spec() + " is listed twice (under revoke and keep, or twice in one)");
            }
        }
    }
    s.finish();
}

}  // namespace

AgentConfig parse_config(std::string_view text, const std::string& source)
{
    const toml::table root = parse_toml(text, source);

    AgentConfig cfg;
    cfg.source = source;
    for (const auto& [key, node] : root) {
        const std::string k = printable(key.str());
        if (k != "agent" && k != "providers" && k != "audit" && k != "disk_types" && k != "recovery" &&
            k != "auto_attach" && k != "revocation") {
            throw config_error_at(source, node, unknown_section(k));
        }
        if (!node.is_table()) {
            throw config_error_at(source, node, must_be_table(k));
        }
    }

    if (const auto* agent = root.get_as<toml::table>("agent")) {
        ConfigSection s(*agent, source, "agent");
        parse_agent_section(s, cfg);
    }
    if (const auto* audit_table = root.get_as<toml::table>("audit")) {
        ConfigSection s(*audit_table, source, "audit");
        parse_audit_section(s, cfg);
    }
    if (const auto* recovery = root.get_as<toml::table>("recovery")) {
        ConfigSection s(*recovery, source, "recovery");
        cfg.recovery = s.optional_bool("enabled").value_or(false);
        s.finish();
    }
    if (const auto* auto_attach = root.get_as<toml::table>("auto_attach")) {
        ConfigSection s(*auto_attach, source, "auto_attach");
        if (auto dir = s.optional_path("directory")) {
            cfg.auto_attach_dir = *dir;
        }
        s.finish();
    }

    for_each_named_section(root, "disk_types", source, [&cfg](const std::string& name, ConfigSection& s) {
        parse_disk_type_section(s, name, cfg);
    });
    for_each_named_section(root, "providers", source, [&cfg](const std::string& name, ConfigSection& s) {
        try {
            validate_provider_name(name);
        } catch (const Error& e) {
            throw s.error(e.what());
        }
        const std::string type = s.required_string("type");
        cfg.providers.emplace(name, kms::create_provider(type, name, s));
        s.finish();
    });
    if (cfg.providers.empty()) {
        throw Error(Errc::config, source + ":1: no KMS provider is configured: add a [providers.NAME] section");
    }
    if (const auto* revocation = root.get_as<toml::table>("revocation")) {
        ConfigSection s(*revocation, source, "revocation");
        parse_revocation_section(s, cfg);
    }
    if (cfg.default_key && cfg.provider(cfg.default_key->provider) == nullptr) {
        const auto* agent = root.get_as<toml::table>("agent");
        ConfigSection s(*agent, source, "agent");
        throw s.error_at("default_key", "names provider '" + cfg.default_key->provider +
                                            "', which is not configured (add [providers." + cfg.default_key->provider +
                                            "])");
    }
    return cfg;
}

AgentConfig load_config(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw Error(Errc::config, "cannot read configuration file " + path,
                    "create it (see agent/agent.toml.example) or pass --config PATH");
    }
    std::ostringstream text;
    text << in.rdbuf();
    constexpr std::size_t kMaxConfig = 1U << 20U;
    if (text.str().size() > kMaxConfig) {
        throw Error(Errc::config, path + ": configuration file is larger than 1 MiB");
    }
    return parse_config(text.str(), path);
}

}  // namespace diskcrypt
