// The access policy: who may do what with which KMS key and service account
// (agent/README.md, "Access policy", documents the file with a complete
// example; agent/policy.toml.example is that example).
//
// A policy is a set of access bindings (subject, role, resource):
//  - subjects: serviceAccount:ID, userAccount:ID, group:ID (a group's
//    members are listed in the same policy, and are service or user
//    accounts, never groups);
//  - resources: key:PROVIDER:KEY_ID, serviceAccount:ID, folder:ID. A key or a
//    service account belongs to at most one folder, and a binding on a folder
//    applies to everything in it.
// A subject holds a permission on a resource when a binding of the subject
// or of one of its groups, on the resource or its folder, has a role that
// grants the permission. Nothing else grants anything: no binding, no access.
//
// Parsing refuses the whole file on the first problem, with "FILE:LINE:
// reason" (Error(config)); a policy in force is always a complete, valid one.
// Its revision is the SHA-256 of the file's bytes: every decision carries it.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/policy/roles.hpp"

namespace diskcrypt::policy {

enum class SubjectKind : std::uint8_t { service_account, user_account, group };

struct Subject {
    SubjectKind kind;
    std::string id;

    // "serviceAccount:ID", "userAccount:ID" or "group:ID".
    [[nodiscard]] std::string str() const;
    // Parses and validates that form; Error(usage) names what is wrong.
    static Subject parse(std::string_view text);
    static Subject service_account(std::string_view id);
    static Subject user_account(std::string_view id);

    friend bool operator==(const Subject&, const Subject&) = default;
};

struct Resource {
    ResourceKind kind;
    std::string id;  // key: "PROVIDER:KEY_ID"

    // "key:PROVIDER:KEY_ID", "serviceAccount:ID" or "folder:ID".
    [[nodiscard]] std::string str() const;
    static Resource parse(std::string_view text);
    static Resource key(std::string_view provider_and_id);
    static Resource service_account(std::string_view id);

    friend bool operator==(const Resource&, const Resource&) = default;
};

struct Binding {
    Subject subject;
    Role role = Role::viewer;
    Resource resource;
    unsigned line = 0;  // in the policy file
};

// A decision, as the audit records it.
struct Decision {
    bool allowed = false;
    std::string revision;  // the policy's, "sha256:HEX"
    // Allowed: which binding granted it. Denied: which subject lacks which
    // permission on which resource.
    std::string message;
    // Denied: which roles would grant it, and where they may be bound.
    std::string hint;
};

class Policy {
public:
    // Parses policy text; `source` names it in errors ("FILE:LINE: reason").
    static Policy parse(std::string_view text, const std::string& source);
    // The policy of a host with no policy file: no bindings, so every check
    // is denied.
    static Policy empty();

    // Whether `subject` holds `permission` on `resource`. The permission must
    // act on the resource's kind (a key permission on a key): anything else
    // is a bug in the caller, Error(internal).
    [[nodiscard]] Decision check(const Subject& subject, Permission permission, const Resource& resource) const;

    [[nodiscard]] const std::string& revision() const { return revision_; }
    [[nodiscard]] std::size_t binding_count() const { return binding_count_; }

private:
    Policy() = default;

    std::string revision_;
    std::size_t binding_count_ = 0;
    std::map<std::string, std::string, std::less<>> folder_of_;               // resource -> folder id
    std::map<std::string, std::vector<std::string>, std::less<>> groups_of_;  // member -> group ids
    std::map<std::string, std::vector<Binding>, std::less<>> by_subject_;     // subject -> its bindings
};

// Limits on a policy file: a larger one is refused.
inline constexpr std::size_t kMaxPolicyBytes = std::size_t{4} << 20;
inline constexpr std::size_t kMaxBindings = 100000;

// "sha256:" and the lower-case hex digest of the text.
std::string content_revision(std::string_view text);

}  // namespace diskcrypt::policy
