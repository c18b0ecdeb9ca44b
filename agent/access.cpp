#include "agent/access.hpp"

#include "agent/audit.hpp"
#include "agent/error.hpp"
#include "agent/log.hpp"

namespace diskcrypt {

using policy::Permission;
using policy::Resource;
using policy::Subject;

std::vector<AccessCheck> format_checks(std::string_view user, std::string_view service_account, const KeyRef& key)
{
    const Subject u = Subject::user_account(user);
    const Subject sa = Subject::service_account(service_account);
    const Resource k = Resource::key(key.spec());
    return {
        {u, Permission::service_accounts_use, Resource::service_account(service_account)},
        {u, Permission::keys_get, k},
        {sa, Permission::keys_encrypt, k},
    };
}

std::vector<AccessCheck> unwrap_checks(std::string_view service_account, const KeyRef& key)
{
    return {{Subject::service_account(service_account), Permission::keys_decrypt, Resource::key(key.spec())}};
}

std::string authorize(const AgentConfig& cfg, std::span<const AccessCheck> checks)
{
    const auto policy = cfg.policy();
    audit::Context* ctx = audit::current();
    if (ctx != nullptr) {
        ctx->policy_revision = policy->revision();
    }
    std::string denied;
    std::string hint;
    for (const AccessCheck& c : checks) {
        const policy::Decision d = policy->check(c.subject, c.permission, c.resource);
        if (ctx != nullptr) {
            audit::emit(audit::Event{"access", d.allowed ? "ok" : "refused", *ctx,
                                     d.allowed ? "" : std::string(errc_name(Errc::access_denied)), d.message});
        }
        log_debug("access " + std::string(d.allowed ? "granted" : "denied") + ": " + d.message);
        if (!d.allowed) {
            denied += (denied.empty() ? "" : "; ") + d.message;
            hint += (hint.empty() ? "" : "; ") + d.hint;
        }
    }
    if (!denied.empty()) {
        if (!cfg.policy_source) {
            hint = "this agent has no access policy ([agent] policy in " + cfg.source +
                   "), so every check is denied; " + hint;
        }
        throw Error(Errc::access_denied,
                    "access denied: " + denied + " (access policy revision " + policy->revision() + ")", hint);
    }
    return policy->revision();
}

}  // namespace diskcrypt
