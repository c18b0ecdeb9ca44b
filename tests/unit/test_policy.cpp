// The access policy: roles and what they grant, the decision matrix
// (subject x role x resource x operation, folders, groups, primitive roles),
// every refusal of a policy file with its line, and the file source's reload
// (a change picked up on the next decision, a broken file refused while the
// last good policy stays in force, each reported once).
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/config.hpp"
#include "agent/error.hpp"
#include "agent/policy/policy.hpp"
#include "agent/policy/roles.hpp"
#include "agent/policy/source.hpp"
#include "tests/support/support.hpp"

using diskcrypt::Errc;
using diskcrypt::Error;
using diskcrypt::policy::all_permissions;
using diskcrypt::policy::all_roles;
using diskcrypt::policy::bindable;
using diskcrypt::policy::FilePolicySource;
using diskcrypt::policy::grants;
using diskcrypt::policy::Permission;
using diskcrypt::policy::Policy;
using diskcrypt::policy::ReloadEvent;
using diskcrypt::policy::Resource;
using diskcrypt::policy::ResourceKind;
using diskcrypt::policy::Role;
using diskcrypt::policy::role_from_name;
using diskcrypt::policy::role_name;
using diskcrypt::policy::Subject;

// A named namespace: in the unity build this file shares a unit with other
// tests, whose helpers have the same names.
namespace policy_test {

// Every subject and resource kind, both folders, a key in no folder, groups.
const std::string kPolicy = R"(
[keys."hsm:disk-key"]
folder = "prod"

[keys."hsm:other-key"]
folder = "dev"

[service_accounts.vm-disks]
folder = "prod"

[service_accounts.vm-cloud]
folder = "prod"

[service_accounts.dev-disks]
folder = "dev"

[groups.storage-admins]
members = ["userAccount:alice", "serviceAccount:ops-bot"]

[groups.auditors]
members = ["userAccount:carol"]

[[bindings]]
subject = "serviceAccount:vm-disks"
role = "kms.keys.encrypterDecrypter"
resource = "key:hsm:disk-key"

[[bindings]]
subject = "serviceAccount:vm-cloud"
role = "viewer"
resource = "folder:prod"

[[bindings]]
subject = "userAccount:bob"
role = "iam.serviceAccounts.user"
resource = "serviceAccount:vm-disks"

[[bindings]]
subject = "userAccount:bob"
role = "kms.viewer"
resource = "key:hsm:disk-key"

[[bindings]]
subject = "group:storage-admins"
role = "kms.admin"
resource = "folder:prod"

[[bindings]]
subject = "group:auditors"
role = "kms.auditor"
resource = "folder:prod"

[[bindings]]
subject = "serviceAccount:enc-only"
role = "kms.keys.encrypter"
resource = "key:hsm:disk-key"

[[bindings]]
subject = "serviceAccount:dec-only"
role = "kms.keys.decrypter"
resource = "key:hsm:disk-key"

[[bindings]]
subject = "userAccount:dave"
role = "viewer"
resource = "folder:prod"

[[bindings]]
subject = "userAccount:erin"
role = "editor"
resource = "folder:prod"

[[bindings]]
subject = "userAccount:frank"
role = "admin"
resource = "folder:dev"

[[bindings]]
subject = "serviceAccount:dev-disks"
role = "kms.keys.encrypterDecrypter"
resource = "folder:dev"

[[bindings]]
subject = "serviceAccount:loose-disks"
role = "kms.keys.decrypter"
resource = "key:hsm:loose-key"

[[bindings]]
subject = "userAccount:gina"
role = "kms.editor"
resource = "key:hsm:disk-key"
)";

struct Case {
    const char* subject;
    Permission permission;
    const char* resource;
    bool allowed;
    const char* why;  // a part of the decision's message
};

using P = Permission;

// clang-format off
const std::vector<Case> kMatrix = {
    // The disk's service account: decrypt and encrypt on its key, nothing else.
    {"serviceAccount:vm-disks", P::keys_decrypt, "key:hsm:disk-key", true, "through role kms.keys.encrypterDecrypter bound on key:hsm:disk-key (policy line 23)"},
    {"serviceAccount:vm-disks", P::keys_encrypt, "key:hsm:disk-key", true, "kms.keys.encrypterDecrypter"},
    {"serviceAccount:vm-disks", P::keys_decrypt, "key:hsm:other-key", false, "lacks kms.keys.decrypt on key:hsm:other-key"},
    {"serviceAccount:vm-disks", P::keys_destroy, "key:hsm:disk-key", false, "lacks kms.keys.destroy"},
    {"serviceAccount:vm-disks", P::service_accounts_use, "serviceAccount:vm-disks", false, "lacks iam.serviceAccounts.use"},
    // The VM's other service account: viewer on the folder never decrypts.
    {"serviceAccount:vm-cloud", P::keys_decrypt, "key:hsm:disk-key", false, "lacks kms.keys.decrypt"},
    {"serviceAccount:vm-cloud", P::keys_get, "key:hsm:disk-key", true, "through role viewer bound on folder:prod"},
    {"serviceAccount:vm-cloud", P::service_accounts_use, "serviceAccount:vm-disks", false, "lacks"},
    // The user who creates disks.
    {"userAccount:bob", P::service_accounts_use, "serviceAccount:vm-disks", true, "iam.serviceAccounts.user bound on serviceAccount:vm-disks"},
    {"userAccount:bob", P::keys_get, "key:hsm:disk-key", true, "through role kms.viewer"},
    {"userAccount:bob", P::keys_list, "key:hsm:disk-key", true, "kms.viewer"},
    {"userAccount:bob", P::keys_decrypt, "key:hsm:disk-key", false, "lacks kms.keys.decrypt"},
    {"userAccount:bob", P::keys_encrypt, "key:hsm:disk-key", false, "lacks kms.keys.encrypt"},
    {"userAccount:bob", P::service_accounts_use, "serviceAccount:vm-cloud", false, "lacks iam.serviceAccounts.use on serviceAccount:vm-cloud"},
    // Groups, and kms.admin on a folder.
    {"userAccount:alice", P::keys_decrypt, "key:hsm:disk-key", true, "as a member of group:storage-admins through role kms.admin bound on folder:prod"},
    {"userAccount:alice", P::keys_destroy, "key:hsm:disk-key", true, "kms.admin"},
    {"userAccount:alice", P::keys_set_access_bindings, "key:hsm:disk-key", true, "kms.admin"},
    {"userAccount:alice", P::keys_destroy, "key:hsm:other-key", false, "lacks kms.keys.destroy on key:hsm:other-key"},
    {"userAccount:alice", P::service_accounts_use, "serviceAccount:vm-disks", false, "lacks iam.serviceAccounts.use"},
    {"serviceAccount:ops-bot", P::keys_update, "key:hsm:disk-key", true, "as a member of group:storage-admins"},
    {"group:storage-admins", P::keys_decrypt, "key:hsm:disk-key", true, "through role kms.admin"},
    // kms.auditor: metadata and bindings only.
    {"userAccount:carol", P::keys_get_access_bindings, "key:hsm:disk-key", true, "as a member of group:auditors"},
    {"userAccount:carol", P::keys_get, "key:hsm:disk-key", true, "kms.auditor"},
    {"userAccount:carol", P::keys_decrypt, "key:hsm:disk-key", false, "lacks kms.keys.decrypt"},
    {"userAccount:carol", P::keys_encrypt, "key:hsm:disk-key", false, "lacks kms.keys.encrypt"},
    {"userAccount:carol", P::keys_list, "key:hsm:disk-key", false, "lacks kms.keys.list"},
    // Encrypter alone never decrypts, decrypter alone never encrypts.
    {"serviceAccount:enc-only", P::keys_encrypt, "key:hsm:disk-key", true, "kms.keys.encrypter bound"},
    {"serviceAccount:enc-only", P::keys_decrypt, "key:hsm:disk-key", false, "lacks kms.keys.decrypt"},
    {"serviceAccount:dec-only", P::keys_decrypt, "key:hsm:disk-key", true, "kms.keys.decrypter bound"},
    {"serviceAccount:dec-only", P::keys_encrypt, "key:hsm:disk-key", false, "lacks kms.keys.encrypt"},
    // Primitive roles on folders.
    {"userAccount:dave", P::keys_get, "key:hsm:disk-key", true, "through role viewer bound on folder:prod"},
    {"userAccount:dave", P::keys_decrypt, "key:hsm:disk-key", false, "lacks kms.keys.decrypt"},
    {"userAccount:dave", P::service_accounts_get, "serviceAccount:vm-disks", true, "viewer"},
    {"userAccount:dave", P::service_accounts_use, "serviceAccount:vm-disks", false, "lacks iam.serviceAccounts.use"},
    {"userAccount:erin", P::keys_decrypt, "key:hsm:disk-key", true, "through role editor bound on folder:prod"},
    {"userAccount:erin", P::service_accounts_use, "serviceAccount:vm-disks", true, "editor"},
    {"userAccount:erin", P::keys_update, "key:hsm:disk-key", true, "editor"},
    {"userAccount:erin", P::keys_destroy, "key:hsm:disk-key", false, "lacks kms.keys.destroy"},
    {"userAccount:erin", P::keys_decrypt, "key:hsm:other-key", false, "lacks kms.keys.decrypt on key:hsm:other-key"},
    {"userAccount:frank", P::keys_destroy, "key:hsm:other-key", true, "through role admin bound on folder:dev"},
    {"userAccount:frank", P::service_accounts_use, "serviceAccount:dev-disks", true, "admin"},
    {"userAccount:frank", P::keys_decrypt, "key:hsm:disk-key", false, "lacks"},
    // A role on a folder applies to the folder's keys only.
    {"serviceAccount:dev-disks", P::keys_decrypt, "key:hsm:other-key", true, "bound on folder:dev"},
    {"serviceAccount:dev-disks", P::keys_decrypt, "key:hsm:disk-key", false, "lacks"},
    {"serviceAccount:dev-disks", P::keys_decrypt, "key:hsm:loose-key", false, "lacks"},
    // A key in no folder: only bindings on the key itself.
    {"serviceAccount:loose-disks", P::keys_decrypt, "key:hsm:loose-key", true, "bound on key:hsm:loose-key"},
    {"userAccount:erin", P::keys_decrypt, "key:hsm:loose-key", false, "lacks"},
    // kms.editor on a key: encrypt and decrypt, not destroy.
    {"userAccount:gina", P::keys_decrypt, "key:hsm:disk-key", true, "kms.editor"},
    {"userAccount:gina", P::keys_destroy, "key:hsm:disk-key", false, "lacks kms.keys.destroy"},
    // Nobody else: no binding, no access; kinds of subject do not mix.
    {"userAccount:zed", P::keys_get, "key:hsm:disk-key", false, "userAccount:zed lacks kms.keys.get on key:hsm:disk-key"},
    {"userAccount:vm-disks", P::keys_decrypt, "key:hsm:disk-key", false, "lacks"},
    {"group:auditors", P::keys_decrypt, "key:hsm:disk-key", false, "lacks"},
    {"serviceAccount:vm-disks", P::keys_decrypt, "key:other:disk-key", false, "lacks"},
};
// clang-format on

Policy policy() { return Policy::parse(kPolicy, "policy.toml"); }

// Parsing must fail with Error(config) whose message is exactly `message`.
void policy_refused(const std::string& text, const std::string& message)
{
    INFO("policy:\n" << text);
    try {
        (void)Policy::parse(text, "policy.toml");
        FAIL("accepted an invalid policy");
    } catch (const Error& e) {
        CHECK(e.code() == Errc::config);
        CHECK(std::string(e.what()) == message);
    }
}

const std::string kBinding = "[[bindings]]\nsubject = \"serviceAccount:sa\"\nrole = \"kms.keys.decrypter\"\n";

void write_file(const std::string& path, const std::string& text, mode_t mode = 0600)
{
    {
        std::ofstream out(path, std::ios::trunc);
        out << text;
        REQUIRE(out);
    }
    REQUIRE(::chmod(path.c_str(), mode) == 0);
}

}  // namespace policy_test

using namespace policy_test;

TEST_CASE("policy: the decision matrix", "[policy]")
{
    const Policy p = policy();
    REQUIRE(kMatrix.size() >= 40);
    for (const Case& c : kMatrix) {
        const auto d = p.check(Subject::parse(c.subject), c.permission, Resource::parse(c.resource));
        INFO(c.subject << " " << diskcrypt::policy::permission_name(c.permission) << " " << c.resource << ": "
                       << d.message);
        CHECK(d.allowed == c.allowed);
        CHECK(d.message.find(c.why) != std::string::npos);
        CHECK(d.revision == p.revision());
        CHECK(d.hint.empty() == c.allowed);
    }
}

TEST_CASE("policy: the matrix through authorize(), each decision one audit event with the revision", "[policy][audit]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir.path() + "/policy.toml";
    const std::string audit_file = dir.path() + "/audit.jsonl";
    write_file(path, kPolicy, 0644);
    diskcrypt::AgentConfig cfg;
    cfg.policy_source = std::make_unique<FilePolicySource>(path, nullptr);
    const std::string revision = cfg.policy()->revision();
    diskcrypt::audit::configure(diskcrypt::audit::Settings{audit_file, diskcrypt::audit::Journal::never});
    std::size_t seen = 0;
    for (const Case& c : kMatrix) {
        const Subject subject = Subject::parse(c.subject);
        if (subject.kind == diskcrypt::policy::SubjectKind::group) {
            continue;  // the control plane names accounts, never groups
        }
        const diskcrypt::AccessCheck check{subject, c.permission, Resource::parse(c.resource)};
        INFO(c.subject << " " << diskcrypt::policy::permission_name(c.permission) << " " << c.resource);
        diskcrypt::audit::Context ctx;
        ctx.op = "attach";
        diskcrypt::audit::Scope scope(ctx);
        std::string message;
        try {
            const std::string used = diskcrypt::authorize(cfg, std::span(&check, 1));
            CHECK(used == revision);
            CHECK(c.allowed);
        } catch (const Error& e) {
            CHECK_FALSE(c.allowed);
            CHECK(e.code() == Errc::access_denied);
            message = e.what();
            CHECK(message.find(c.why) != std::string::npos);
            CHECK(message.ends_with("(access policy revision " + revision + ")"));
        }
        CHECK(scope.context().policy_revision == revision);
        const auto events = diskcrypt::test::audit_events(audit_file);
        REQUIRE(events.size() == seen + 1);
        const auto& ev = events.back();
        CHECK(ev.at("event") == "access");
        CHECK(ev.at("result") == (c.allowed ? "ok" : "refused"));
        CHECK(ev.at("reason") == (c.allowed ? nlohmann::json(nullptr) : nlohmann::json("access-denied")));
        CHECK(ev.at("policy_revision") == revision);
        CHECK(ev.at("op") == "attach");
        CHECK(ev.at("message").get<std::string>().find(c.why) != std::string::npos);
        ++seen;
    }
    CHECK(seen >= 40);
    diskcrypt::audit::configure(diskcrypt::audit::Settings{});
}

TEST_CASE("policy: format, attach and verify ask for what the seeds say", "[policy]")
{
    const diskcrypt::KeyRef key{"hsm", "disk-key", ""};
    const auto f = diskcrypt::format_checks("alice", "vm-disks", key);
    REQUIRE(f.size() == 3);
    CHECK(f[0].subject.str() == "userAccount:alice");
    CHECK(f[0].permission == P::service_accounts_use);
    CHECK(f[0].resource.str() == "serviceAccount:vm-disks");
    CHECK(f[1].subject.str() == "userAccount:alice");
    CHECK(f[1].permission == P::keys_get);
    CHECK(f[1].resource.str() == "key:hsm:disk-key");
    CHECK(f[2].subject.str() == "serviceAccount:vm-disks");
    CHECK(f[2].permission == P::keys_encrypt);
    CHECK(f[2].resource.str() == "key:hsm:disk-key");
    const auto u = diskcrypt::unwrap_checks("vm-disks", key);
    REQUIRE(u.size() == 1);
    CHECK(u[0].subject.str() == "serviceAccount:vm-disks");
    CHECK(u[0].permission == P::keys_decrypt);
    CHECK(u[0].resource.str() == "key:hsm:disk-key");
    CHECK_THROWS_AS(diskcrypt::unwrap_checks("a b", key), Error);
    // The seeds' service key: an alias-like key id, a key like any other.
    const auto d = diskcrypt::unwrap_checks("vm-disks", diskcrypt::KeyRef{"hsm", "diskcrypt/default", ""});
    CHECK(d[0].resource.str() == "key:hsm:diskcrypt/default");
    CHECK_THROWS_AS(diskcrypt::format_checks("a;b", "vm-disks", key), Error);

    // No policy source: the empty policy, every check denied, and the hint says why.
    const diskcrypt::AgentConfig none;
    try {
        (void)diskcrypt::authorize(none, u);
        FAIL("allowed without a policy");
    } catch (const Error& e) {
        CHECK(e.code() == Errc::access_denied);
        CHECK(e.hint().starts_with("this agent has no access policy ([agent] policy in "));
    }
}

TEST_CASE("policy: a denial says who lacks what where, and which roles would grant it", "[policy]")
{
    const auto d =
        policy().check(Subject::parse("serviceAccount:vm-cloud"), P::keys_decrypt, Resource::parse("key:hsm:disk-key"));
    CHECK_FALSE(d.allowed);
    CHECK(d.message == "serviceAccount:vm-cloud lacks kms.keys.decrypt on key:hsm:disk-key");
    CHECK(d.hint ==
          "bind one of the roles kms.keys.decrypter, kms.keys.encrypterDecrypter, kms.editor, kms.admin, editor or "
          "admin to serviceAccount:vm-cloud on key:hsm:disk-key or on its folder:prod in the access policy");
    const auto loose = policy().check(Subject::parse("serviceAccount:vm-cloud"), P::keys_decrypt,
                                      Resource::parse("key:hsm:loose-key"));
    CHECK(loose.hint.find("on key:hsm:loose-key in the access policy") != std::string::npos);
}

TEST_CASE("policy: roles grant what the table says, higher roles include lower ones", "[policy]")
{
    for (const Role r : all_roles()) {
        CHECK(role_from_name(role_name(r)) == r);
    }
    CHECK_FALSE(role_from_name("kms.keys.user").has_value());
    CHECK_FALSE(role_from_name("").has_value());
    // Never decrypt.
    for (const char* name : {"kms.auditor", "kms.viewer", "kms.keys.encrypter", "viewer", "iam.serviceAccounts.user"}) {
        INFO(name);
        CHECK_FALSE(grants(*role_from_name(name), P::keys_decrypt));
    }
    // Inclusion: everything a lower role grants, the higher one does.
    const std::vector<std::pair<Role, Role>> includes = {
        {Role::kms_keys_encrypter_decrypter, Role::kms_keys_encrypter},
        {Role::kms_keys_encrypter_decrypter, Role::kms_keys_decrypter},
        {Role::kms_viewer, Role::kms_auditor},
        {Role::kms_editor, Role::kms_viewer},
        {Role::kms_editor, Role::kms_keys_encrypter_decrypter},
        {Role::kms_admin, Role::kms_editor},
        {Role::viewer, Role::kms_viewer},
        {Role::editor, Role::viewer},
        {Role::editor, Role::kms_editor},
        {Role::editor, Role::iam_service_accounts_user},
        {Role::admin, Role::editor},
        {Role::admin, Role::kms_admin},
    };
    for (const auto& [high, low] : includes) {
        for (const Permission p : all_permissions()) {
            INFO(role_name(high) << " over " << role_name(low) << ": " << diskcrypt::policy::permission_name(p));
            if (grants(low, p)) {
                CHECK(grants(high, p));
            }
        }
    }
    CHECK_FALSE(grants(Role::editor, P::keys_destroy));
    CHECK(grants(Role::admin, P::keys_destroy));
    CHECK_FALSE(grants(Role::kms_admin, P::service_accounts_use));
    CHECK(bindable(Role::kms_viewer, ResourceKind::key));
    CHECK_FALSE(bindable(Role::kms_viewer, ResourceKind::service_account));
    CHECK_FALSE(bindable(Role::iam_service_accounts_user, ResourceKind::key));
    CHECK(bindable(Role::admin, ResourceKind::service_account));
}

TEST_CASE("policy: subjects and resources are validated at the door", "[policy]")
{
    CHECK(Subject::parse("serviceAccount:sa-1").str() == "serviceAccount:sa-1");
    CHECK(Resource::parse("key:hsm:disk-key").str() == "key:hsm:disk-key");
    CHECK(Resource::parse("folder:prod").str() == "folder:prod");
    for (const char* bad :
         {"sa-1", "user:bob", "serviceAccount:", "serviceAccount:a b", "group:a/b", "userAccount:\x01"}) {
        INFO(bad);
        CHECK_THROWS_AS(Subject::parse(bad), Error);
    }
    for (const char* bad : {"key:nocolon", "key:HSM:k", "folder:", "bucket:b", "serviceAccount:a;b"}) {
        INFO(bad);
        CHECK_THROWS_AS(Resource::parse(bad), Error);
    }
    CHECK_THROWS_WITH(Subject::parse("userAccount:a b"), Catch::Contains("user account"));
    // A key permission on a service account is a caller's bug.
    try {
        (void)policy().check(Subject::parse("userAccount:bob"), P::keys_decrypt,
                             Resource::parse("serviceAccount:vm-disks"));
        FAIL("checked a key permission on a service account");
    } catch (const Error& e) {
        CHECK(e.code() == Errc::internal);
    }
}

TEST_CASE("policy: the example in agent/ parses and says what the README says", "[policy]")
{
    std::ifstream in(DISKCRYPT_SOURCE_DIR "/agent/policy.toml.example");
    REQUIRE(in);
    std::ostringstream s;
    s << in.rdbuf();
    const Policy p = Policy::parse(s.str(), "policy.toml.example");
    CHECK(p.binding_count() == 5);
    const auto key = Resource::parse("key:hsm:disk-key");
    CHECK(p.check(Subject::parse("serviceAccount:vm-disks"), P::keys_decrypt, key).allowed);
    CHECK_FALSE(p.check(Subject::parse("serviceAccount:vm-cloud"), P::keys_decrypt, key).allowed);
    CHECK(p.check(Subject::parse("userAccount:bob"), P::keys_get, key).allowed);
    CHECK(
        p.check(Subject::parse("userAccount:bob"), P::service_accounts_use, Resource::parse("serviceAccount:vm-disks"))
            .allowed);
    CHECK(p.check(Subject::parse("userAccount:alice"), P::keys_destroy, key).allowed);
}

TEST_CASE("policy: the revision is the content's SHA-256, and an empty policy denies everything", "[policy]")
{
    // SHA-256 of the empty string.
    CHECK(Policy::empty().revision() == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(Policy::parse("", "p").revision() == Policy::empty().revision());
    CHECK(policy().revision() != Policy::parse(kPolicy + "\n", "p").revision());
    const auto d = Policy::empty().check(Subject::parse("userAccount:root"), P::keys_get, Resource::parse("key:hsm:k"));
    CHECK_FALSE(d.allowed);
}

TEST_CASE("policy: a broken file is refused with its line and reason", "[policy]")
{
    policy_refused("[[bindings]\n",
                   "policy.toml:1: " + std::string("Error while parsing table header: expected ']', saw '\\n'"));
    policy_refused("colour = 1\n",
                   "policy.toml:1: unknown section 'colour' (known: [keys.\"PROVIDER:KEY_ID\"], [service_accounts.ID], "
                   "[groups.ID], [[bindings]])");
    policy_refused("\n" + kBinding + "resource = \"key:hsm:k\"\nextra = 1\n",
                   "policy.toml:6: [bindings]: unknown key 'extra'");
    policy_refused(kBinding, "policy.toml:1: [bindings]: missing required key 'resource'");
    policy_refused(
        "[[bindings]]\nsubject = \"serviceAccount:sa\"\nrole = \"kms.keys.user\"\nresource = \"key:hsm:k\"\n",
        "policy.toml:3: [bindings] role: unknown role 'kms.keys.user' (roles: kms.keys.encrypter, "
        "kms.keys.decrypter, kms.keys.encrypterDecrypter, kms.auditor, kms.viewer, kms.editor, kms.admin, "
        "iam.serviceAccounts.user, viewer, editor, admin)");
    policy_refused(kBinding + "resource = \"serviceAccount:vm\"\n",
                   "policy.toml:4: [bindings] resource: role kms.keys.decrypter cannot be bound on a service account "
                   "(serviceAccount:vm); bind it on a key or a folder");
    policy_refused(
        "[[bindings]]\nsubject = \"userAccount:bob\"\nrole = \"iam.serviceAccounts.user\"\nresource = "
        "\"key:hsm:k\"\n",
        "policy.toml:4: [bindings] resource: role iam.serviceAccounts.user cannot be bound on a key "
        "(key:hsm:k); bind it on a service account or a folder");
    policy_refused(
        "[[bindings]]\nsubject = \"sa\"\nrole = \"viewer\"\nresource = \"key:hsm:k\"\n",
        "policy.toml:2: [bindings] subject: subject 'sa' must be serviceAccount:ID, userAccount:ID or group:ID");
    policy_refused("[[bindings]]\nsubject = \"group:ops\"\nrole = \"viewer\"\nresource = \"key:hsm:k\"\n",
                   "policy.toml:2: [bindings] subject: group 'ops' has no [groups.ops] section with its members");
    policy_refused(
        kBinding + "resource = \"disk:d1\"\n",
        "policy.toml:4: [bindings] resource: resource 'disk:d1' must be key:PROVIDER:KEY_ID, serviceAccount:ID "
        "or folder:ID");
    policy_refused("bindings = 3\n", "policy.toml:1: 'bindings' must be an array of tables ([[bindings]])");
    policy_refused("[groups.ops]\nmembers = [\"group:other\"]\n",
                   "policy.toml:2: [groups.ops] members: a group's members are service and user accounts, not groups "
                   "('group:other')");
    policy_refused("[groups.ops]\nmembers = [1]\n",
                   "policy.toml:2: [groups.ops] members: expected an array of strings, found an integer in it");
    policy_refused("[groups.ops]\n", "policy.toml:1: [groups.ops]: missing required key 'members'");
    policy_refused("[keys.\"hsm:k\"]\nowner = \"x\"\n", "policy.toml:1: [keys.hsm:k]: missing required key 'folder'");
    policy_refused("[keys.\"hsm:k\"]\nfolder = \"a/b\"\n",
                   "policy.toml:2: [keys.hsm:k] folder: invalid folder id 'a/b': it must be 1-100 characters from "
                   "A-Z a-z 0-9 . _ -");
    policy_refused("[keys.nocolon]\nfolder = \"prod\"\n",
                   "policy.toml:1: [keys.nocolon]: invalid key 'nocolon': write it as PROVIDER:KEY_ID (for example "
                   "hsm:disk-key-01)");
    policy_refused("[groups.\"a b\"]\nmembers = []\n",
                   "policy.toml:1: [groups.a b]: invalid group id 'a b': it must be 1-100 characters from A-Z a-z "
                   "0-9 . _ -");
    policy_refused("keys = 1\n",
                   R"(policy.toml:1: 'keys' must be a table ([keys."PROVIDER:KEY_ID"] with folder = "ID"))");
    policy_refused(std::string(diskcrypt::policy::kMaxPolicyBytes + 1, '#'),
                   "policy.toml: the access policy is larger than 4 MiB");
}

TEST_CASE("policy: the file source picks up changes, refuses a broken file and keeps the last good", "[policy]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir.path() + "/policy.toml";
    const std::string grant =
        "[[bindings]]\nsubject = \"serviceAccount:vm\"\nrole = \"kms.keys.decrypter\"\n"
        "resource = \"key:hsm:k\"\n";
    write_file(path, "# nothing granted yet\n");
    std::vector<ReloadEvent> events;
    FilePolicySource source(path, [&](const ReloadEvent& e) { events.push_back(e); });
    CHECK(source.describe() == "file " + path);
    const auto vm = Subject::parse("serviceAccount:vm");
    const auto key = Resource::parse("key:hsm:k");
    const auto first = source.current();
    CHECK_FALSE(first->check(vm, P::keys_decrypt, key).allowed);
    CHECK(events.empty());

    // Granted: the next decision sees it, without a restart.
    write_file(path, grant);
    const auto granted = source.current();
    CHECK(granted->check(vm, P::keys_decrypt, key).allowed);
    REQUIRE(events.size() == 1);
    CHECK(events[0].loaded);
    CHECK(events[0].revision == granted->revision());
    CHECK(events[0].message == "access policy " + path + " loaded: 1 bindings");

    // Broken: refused once with its line, the grant stays in force.
    write_file(path, grant + "[[bindings]]\nsubject = \"serviceAccount:vm\"\n");
    CHECK(source.current()->check(vm, P::keys_decrypt, key).allowed);
    CHECK(source.current()->revision() == granted->revision());
    REQUIRE(events.size() == 2);
    CHECK_FALSE(events[1].loaded);
    CHECK(events[1].revision == granted->revision());
    CHECK(events[1].message == path + ":5: [bindings]: missing required key 'role'; the policy in force stays");
    // SIGHUP re-reads and reports again.
    source.reload();
    REQUIRE(events.size() == 3);
    CHECK_FALSE(events[2].loaded);

    // Revoked: the next decision is denied.
    write_file(path, "# revoked\n");
    CHECK_FALSE(source.current()->check(vm, P::keys_decrypt, key).allowed);
    REQUIRE(events.size() == 4);
    CHECK(events[3].loaded);

    // Written back unchanged: nothing to report.
    write_file(path, "# revoked\n");
    (void)source.current();
    source.reload();
    CHECK(events.size() == 4);

    // Writable by others, or gone: refused, the policy in force stays.
    write_file(path, grant, 0666);
    CHECK_FALSE(source.current()->check(vm, P::keys_decrypt, key).allowed);
    REQUIRE(events.size() == 5);
    CHECK(events[4].message == "access policy " + path +
                                   " is writable by group or others; whoever can write it decides who gets keys; "
                                   "the policy in force stays");
    REQUIRE(::unlink(path.c_str()) == 0);
    CHECK_FALSE(source.current()->check(vm, P::keys_decrypt, key).allowed);
    REQUIRE(events.size() == 6);
    CHECK(events[5].message.find("cannot read access policy " + path) == 0);
    (void)source.current();
    CHECK(events.size() == 6);
}

TEST_CASE("policy: the agent does not start on a broken, missing or unsafe policy file", "[policy]")
{
    const diskcrypt::test::TempDir dir;
    const std::string path = dir.path() + "/policy.toml";
    const auto starts = [&](const std::string& message) {
        try {
            FilePolicySource source(path, nullptr);
            FAIL("started on " << path);
        } catch (const Error& e) {
            CHECK(e.code() == Errc::config);
            CHECK(std::string(e.what()).find(message) != std::string::npos);
        }
    };
    starts("cannot read access policy " + path);
    write_file(path, "[[bindings]]\n");
    starts(path + ":1: [bindings]: missing required key 'subject'");
    write_file(path, "", 0620);
    starts("is writable by group or others");
    REQUIRE(::symlink("/dev/null", (dir.path() + "/link.toml").c_str()) == 0);
    try {
        FilePolicySource source(dir.path() + "/link.toml", nullptr);
        FAIL("followed a symbolic link");
    } catch (const Error& e) {
        CHECK(std::string(e.what()).find("is a symbolic link") != std::string::npos);
    }
}
