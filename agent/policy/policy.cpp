#include "agent/policy/policy.hpp"

#include <openssl/evp.h>

#include <toml++/toml.h>
#include <algorithm>
#include <array>
#include <utility>

#include "agent/config.hpp"
#include "agent/error.hpp"
#include "agent/names.hpp"
#include "agent/text.hpp"

namespace diskcrypt::policy {

namespace {

constexpr std::string_view kServiceAccountPrefix = "serviceAccount:";
constexpr std::string_view kUserAccountPrefix = "userAccount:";
constexpr std::string_view kGroupPrefix = "group:";
constexpr std::string_view kKeyPrefix = "key:";
constexpr std::string_view kFolderPrefix = "folder:";

void validate_group_id(std::string_view id) { validate_disk_id(id, "group id"); }
void validate_folder_id(std::string_view id) { validate_disk_id(id, "folder id"); }

// "PROVIDER:KEY_ID", validated as a key spec; returns it unchanged.
std::string key_resource_id(std::string_view text) { return parse_key_spec(text).spec(); }

std::string kind_name(ResourceKind kind)
{
    switch (kind) {
        case ResourceKind::key:
            return "a key";
        case ResourceKind::service_account:
            return "a service account";
        case ResourceKind::folder:
            break;
    }
    return "a folder";
}

std::string where_bindable(Role role)
{
    std::string out;
    for (const ResourceKind k : {ResourceKind::key, ResourceKind::service_account, ResourceKind::folder}) {
        if (bindable(role, k)) {
            out += out.empty() ? "" : " or ";
            out += kind_name(k);
        }
    }
    return out;
}

// Runs a validator; its Error(usage) becomes Error(config) at the key's line,
// or at the section's line when the key is empty (a problem with the
// section's own name).
template <typename F>
auto at(const ConfigSection& s, std::string_view key, F&& f)
{
    try {
        return std::forward<F>(f)();
    } catch (const Error& e) {
        if (e.code() != Errc::usage) {
            throw;
        }
        throw key.empty() ? s.error(e.what()) : s.error_at(key, e.what());
    }
}

const toml::table& table_of(const std::string& source, const toml::node& node, const std::string& name,
                            const std::string& form)
{
    const auto* t = node.as_table();
    if (t == nullptr) {
        throw config_error_at(source, node, "'" + name + "' must be a table (" + form + ")");
    }
    return *t;
}

// "SUBJECT holds PERMISSION on RESOURCE [as a member of GROUP] through role
// ROLE bound on WHERE (policy line N)".
std::string granted_by(const std::string& subject, std::string_view permission, const std::string& resource,
                       const std::string& holder, const Binding& b)
{
    std::string m = subject;
    m += " holds ";
    m += permission;
    m += " on ";
    m += resource;
    if (holder != subject) {
        m += " as a member of ";
        m += holder;
    }
    m += " through role ";
    m += role_name(b.role);
    m += " bound on ";
    m += b.resource.str();
    m += " (policy line ";
    m += std::to_string(b.line);
    m += ")";
    return m;
}

}  // namespace

std::string Subject::str() const
{
    switch (kind) {
        case SubjectKind::service_account:
            return std::string(kServiceAccountPrefix) + id;
        case SubjectKind::user_account:
            return std::string(kUserAccountPrefix) + id;
        case SubjectKind::group:
            break;
    }
    return std::string(kGroupPrefix) + id;
}

Subject Subject::parse(std::string_view text)
{
    if (text.starts_with(kServiceAccountPrefix)) {
        return service_account(text.substr(kServiceAccountPrefix.size()));
    }
    if (text.starts_with(kUserAccountPrefix)) {
        return user_account(text.substr(kUserAccountPrefix.size()));
    }
    if (text.starts_with(kGroupPrefix)) {
        const std::string_view id = text.substr(kGroupPrefix.size());
        validate_group_id(id);
        return {SubjectKind::group, std::string(id)};
    }
    throw Error(Errc::usage,
                "subject '" + printable(text, 160) + "' must be serviceAccount:ID, userAccount:ID or group:ID");
}

Subject Subject::service_account(std::string_view id)
{
    validate_service_account(id);
    return {SubjectKind::service_account, std::string(id)};
}

Subject Subject::user_account(std::string_view id)
{
    validate_user_account(id);
    return {SubjectKind::user_account, std::string(id)};
}

std::string Resource::str() const
{
    switch (kind) {
        case ResourceKind::key:
            return std::string(kKeyPrefix) + id;
        case ResourceKind::service_account:
            return std::string(kServiceAccountPrefix) + id;
        case ResourceKind::folder:
            break;
    }
    return std::string(kFolderPrefix) + id;
}

Resource Resource::parse(std::string_view text)
{
    if (text.starts_with(kKeyPrefix)) {
        return key(text.substr(kKeyPrefix.size()));
    }
    if (text.starts_with(kServiceAccountPrefix)) {
        return service_account(text.substr(kServiceAccountPrefix.size()));
    }
    if (text.starts_with(kFolderPrefix)) {
        const std::string_view id = text.substr(kFolderPrefix.size());
        validate_folder_id(id);
        return {ResourceKind::folder, std::string(id)};
    }
    throw Error(Errc::usage,
                "resource '" + printable(text, 160) + "' must be key:PROVIDER:KEY_ID, serviceAccount:ID or folder:ID");
}

Resource Resource::key(std::string_view provider_and_id)
{
    return {ResourceKind::key, key_resource_id(provider_and_id)};
}

Resource Resource::service_account(std::string_view id)
{
    validate_service_account(id);
    return {ResourceKind::service_account, std::string(id)};
}

std::string content_revision(std::string_view text)
{
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned int len = 0;
    if (EVP_Digest(text.data(), text.size(), md.data(), &len, EVP_sha256(), nullptr) != 1) {
        throw Error(Errc::internal, "SHA-256 of the access policy failed");
    }
    static constexpr std::string_view kHex = "0123456789abcdef";
    std::string out = "sha256:";
    for (unsigned int i = 0; i < len; ++i) {
        out += kHex.at(md.at(i) >> 4U);
        out += kHex.at(md.at(i) & 0xfU);
    }
    return out;
}

Policy Policy::empty()
{
    Policy p;
    p.revision_ = content_revision("");
    return p;
}

Policy Policy::parse(std::string_view text, const std::string& source)
{
    if (text.size() > kMaxPolicyBytes) {
        throw Error(Errc::config,
                    source + ": the access policy is larger than " + std::to_string(kMaxPolicyBytes >> 20) + " MiB");
    }
    const toml::table root = parse_toml(text, source);
    Policy p;
    p.revision_ = content_revision(text);
    for (const auto& [key, node] : root) {
        const std::string k(key.str());
        if (k != "keys" && k != "service_accounts" && k != "groups" && k != "bindings") {
            throw config_error_at(source, node,
                                  "unknown section '" + printable(k, 64) +
                                      "' (known: [keys.\"PROVIDER:KEY_ID\"], [service_accounts.ID], [groups.ID], "
                                      "[[bindings]])");
        }
    }

    // Folders of keys and service accounts.
    const auto folders = [&](const char* section, const char* form, auto&& resource_of) {
        const toml::node* node = root.get(section);
        if (node == nullptr) {
            return;
        }
        for (const auto& [key, entry] : table_of(source, *node, section, form)) {
            const std::string name(key.str());
            const std::string where = std::string(section) + "." + printable(name, 160);
            ConfigSection s(table_of(source, entry, where, form), source, where);
            const Resource r = at(s, "", [&] { return resource_of(name); });
            const std::string folder = s.required_string("folder");
            at(s, "folder", [&] { validate_folder_id(folder); });
            s.finish();
            p.folder_of_.emplace(r.str(), folder);
        }
    };
    folders("keys", R"([keys."PROVIDER:KEY_ID"] with folder = "ID")", Resource::key);
    folders("service_accounts", R"([service_accounts.ID] with folder = "ID")", Resource::service_account);

    // Groups and their members.
    std::map<std::string, unsigned, std::less<>> groups;
    if (const toml::node* node = root.get("groups")) {
        for (const auto& [key, entry] : table_of(source, *node, "groups", "[groups.ID] with members = [...]")) {
            const std::string id(key.str());
            const std::string where = "groups." + printable(id, 160);
            ConfigSection s(table_of(source, entry, where, "[groups.ID] with members = [...]"), source, where);
            at(s, "", [&] { validate_group_id(id); });
            const auto members = s.optional_string_list("members");
            if (!members) {
                throw s.error("missing required key 'members'");
            }
            for (const std::string& m : *members) {
                const Subject member = at(s, "members", [&] { return Subject::parse(m); });
                if (member.kind == SubjectKind::group) {
                    throw s.error_at("members", "a group's members are service and user accounts, not groups ('" +
                                                    member.str() + "')");
                }
                auto& of = p.groups_of_[member.str()];
                if (std::find(of.begin(), of.end(), id) == of.end()) {
                    of.push_back(id);
                }
            }
            s.finish();
            groups.emplace(id, entry.source().begin.line);
        }
    }

    // Bindings.
    if (const toml::node* node = root.get("bindings")) {
        const auto* list = node->as_array();
        if (list == nullptr || !list->is_array_of_tables()) {
            throw config_error_at(source, *node, "'bindings' must be an array of tables ([[bindings]])");
        }
        if (list->size() > kMaxBindings) {
            throw config_error_at(
                source, *node,
                "more than " + std::to_string(kMaxBindings) + " bindings; bind roles on folders instead");
        }
        for (const toml::node& entry : *list) {
            ConfigSection s(*entry.as_table(), source, "bindings");
            const std::string subject_text = s.required_string("subject");
            const std::string role_text = s.required_string("role");
            const std::string resource_text = s.required_string("resource");
            s.finish();
            const Subject subject = at(s, "subject", [&] { return Subject::parse(subject_text); });
            if (subject.kind == SubjectKind::group && !groups.contains(subject.id)) {
                throw s.error_at("subject", "group '" + subject.id + "' has no [groups." + subject.id +
                                                "] section with its members");
            }
            const auto role = role_from_name(role_text);
            if (!role) {
                throw s.error_at("role",
                                 "unknown role '" + printable(role_text, 64) + "' (roles: " + role_names() + ")");
            }
            const Resource resource = at(s, "resource", [&] { return Resource::parse(resource_text); });
            if (!bindable(*role, resource.kind)) {
                throw s.error_at("resource", "role " + role_text + " cannot be bound on " + kind_name(resource.kind) +
                                                 " (" + resource.str() + "); bind it on " + where_bindable(*role));
            }
            p.by_subject_[subject.str()].push_back(
                Binding{subject, *role, resource, static_cast<unsigned>(entry.source().begin.line)});
            ++p.binding_count_;
        }
    }
    return p;
}

Decision Policy::check(const Subject& subject, Permission permission, const Resource& resource) const
{
    if (permission_resource(permission) != resource.kind) {
        throw Error(Errc::internal, "access check of " + std::string(permission_name(permission)) + " on " +
                                        resource.str() + ": the permission does not act on " +
                                        kind_name(resource.kind));
    }
    const std::string res = resource.str();
    std::string folder;
    if (const auto it = folder_of_.find(res); it != folder_of_.end()) {
        folder = std::string(kFolderPrefix) + it->second;
    }

    std::vector<std::string> holders{subject.str()};
    if (subject.kind != SubjectKind::group) {
        if (const auto it = groups_of_.find(holders.front()); it != groups_of_.end()) {
            for (const std::string& g : it->second) {
                holders.push_back(std::string(kGroupPrefix) + g);
            }
        }
    }

    Decision d;
    d.revision = revision_;
    const std::string perm(permission_name(permission));
    for (const std::string& holder : holders) {
        const auto it = by_subject_.find(holder);
        if (it == by_subject_.end()) {
            continue;
        }
        for (const Binding& b : it->second) {
            const std::string on = b.resource.str();
            if (!grants(b.role, permission) || (on != res && (folder.empty() || on != folder))) {
                continue;
            }
            d.allowed = true;
            d.message = granted_by(subject.str(), perm, res, holder, b);
            return d;
        }
    }
    d.message = subject.str() + " lacks " + perm + " on " + res;
    d.hint = "bind one of the roles " + roles_granting(permission) + " to " + subject.str() + " on " + res;
    if (!folder.empty()) {
        d.hint += " or on its " + folder;
    }
    d.hint += " in the access policy";
    return d;
}

}  // namespace diskcrypt::policy
