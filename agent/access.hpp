// The access checks of format, attach and verify (agent/README.md, "Access
// policy"). The control plane (the local root caller) asserts who acts, for
// which service account, with which key; the policy decides whether that is
// allowed. Every check of one request is made under one snapshot of the
// policy, before the device is opened and before any KMS call; each decision
// is an audit event ("access", with the policy revision), and a denial is
// Error(access_denied) naming every subject that lacks which permission on
// which resource.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "agent/config.hpp"
#include "agent/names.hpp"
#include "agent/policy/policy.hpp"

namespace diskcrypt {

struct AccessCheck {
    policy::Subject subject;
    policy::Permission permission{};
    policy::Resource resource;
};

// format: the acting user needs iam.serviceAccounts.use on the service
// account and kms.keys.get on the key; the service account needs
// kms.keys.encrypt on the key.
std::vector<AccessCheck> format_checks(std::string_view user, std::string_view service_account, const KeyRef& key);

// attach and verify: the disk's service account needs kms.keys.decrypt on
// the key. Nobody else's permission counts (not the VM's other service
// account, not the caller's).
std::vector<AccessCheck> unwrap_checks(std::string_view service_account, const KeyRef& key);

// Decides every check under the policy in force; audits each decision and
// records the revision in the request's audit context. Throws
// Error(access_denied) if any is denied. Returns the revision.
std::string authorize(const AgentConfig& cfg, std::span<const AccessCheck> checks);

}  // namespace diskcrypt
