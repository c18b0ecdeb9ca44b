#include "agent/policy/roles.hpp"

#include <array>
#include <cstddef>
#include <initializer_list>

namespace diskcrypt::policy {

namespace {

using Mask = std::uint32_t;

constexpr Mask bit(Permission p) { return Mask{1} << static_cast<unsigned>(p); }

constexpr Mask bits(std::initializer_list<Permission> ps)
{
    Mask m = 0;
    for (const Permission p : ps) {
        m |= bit(p);
    }
    return m;
}

constexpr Mask kind_bit(ResourceKind k) { return Mask{1} << static_cast<unsigned>(k); }

struct PermissionInfo {
    Permission permission;
    std::string_view name;
    ResourceKind resource;
};

constexpr std::array kPermissions{
    PermissionInfo{Permission::keys_get, "kms.keys.get", ResourceKind::key},
    PermissionInfo{Permission::keys_list, "kms.keys.list", ResourceKind::key},
    PermissionInfo{Permission::keys_create, "kms.keys.create", ResourceKind::key},
    PermissionInfo{Permission::keys_get_access_bindings, "kms.keys.getAccessBindings", ResourceKind::key},
    PermissionInfo{Permission::keys_encrypt, "kms.keys.encrypt", ResourceKind::key},
    PermissionInfo{Permission::keys_decrypt, "kms.keys.decrypt", ResourceKind::key},
    PermissionInfo{Permission::keys_update, "kms.keys.update", ResourceKind::key},
    PermissionInfo{Permission::keys_destroy, "kms.keys.destroy", ResourceKind::key},
    PermissionInfo{Permission::keys_set_access_bindings, "kms.keys.setAccessBindings", ResourceKind::key},
    PermissionInfo{Permission::service_accounts_get, "iam.serviceAccounts.get", ResourceKind::service_account},
    PermissionInfo{Permission::service_accounts_use, "iam.serviceAccounts.use", ResourceKind::service_account},
};

constexpr std::array kAllPermissions{
    Permission::keys_get,
    Permission::keys_list,
    Permission::keys_create,
    Permission::keys_get_access_bindings,
    Permission::keys_encrypt,
    Permission::keys_decrypt,
    Permission::keys_update,
    Permission::keys_destroy,
    Permission::keys_set_access_bindings,
    Permission::service_accounts_get,
    Permission::service_accounts_use,
};

struct RoleInfo {
    Role role;
    std::string_view name;
    Mask own;                      // permissions granted by this role itself
    std::array<Role, 3> includes;  // lower roles whose permissions it also grants
    std::size_t n_includes;
    Mask kinds;  // resource kinds it may be bound on
};

constexpr Mask kKeyOrFolder = kind_bit(ResourceKind::key) | kind_bit(ResourceKind::folder);
constexpr Mask kAccountOrFolder = kind_bit(ResourceKind::service_account) | kind_bit(ResourceKind::folder);
constexpr Mask kAnywhere = kKeyOrFolder | kAccountOrFolder;

// In the documented order; a role includes only roles listed before it.
constexpr std::array kRoles{
    RoleInfo{Role::kms_keys_encrypter,
             "kms.keys.encrypter",
             bits({Permission::keys_get, Permission::keys_encrypt}),
             {},
             0,
             kKeyOrFolder},
    RoleInfo{Role::kms_keys_decrypter,
             "kms.keys.decrypter",
             bits({Permission::keys_get, Permission::keys_decrypt}),
             {},
             0,
             kKeyOrFolder},
    RoleInfo{Role::kms_keys_encrypter_decrypter,
             "kms.keys.encrypterDecrypter",
             0,
             {Role::kms_keys_encrypter, Role::kms_keys_decrypter},
             2,
             kKeyOrFolder},
    RoleInfo{Role::kms_auditor,
             "kms.auditor",
             bits({Permission::keys_get, Permission::keys_get_access_bindings}),
             {},
             0,
             kKeyOrFolder},
    RoleInfo{Role::kms_viewer, "kms.viewer", bit(Permission::keys_list), {Role::kms_auditor}, 1, kKeyOrFolder},
    RoleInfo{Role::kms_editor,
             "kms.editor",
             bits({Permission::keys_create, Permission::keys_update}),
             {Role::kms_viewer, Role::kms_keys_encrypter_decrypter},
             2,
             kKeyOrFolder},
    RoleInfo{Role::kms_admin,
             "kms.admin",
             bits({Permission::keys_destroy, Permission::keys_set_access_bindings}),
             {Role::kms_editor},
             1,
             kKeyOrFolder},
    RoleInfo{Role::iam_service_accounts_user,
             "iam.serviceAccounts.user",
             bits({Permission::service_accounts_get, Permission::service_accounts_use}),
             {},
             0,
             kAccountOrFolder},
    RoleInfo{Role::viewer, "viewer", bit(Permission::service_accounts_get), {Role::kms_viewer}, 1, kAnywhere},
    RoleInfo{
        Role::editor, "editor", 0, {Role::viewer, Role::kms_editor, Role::iam_service_accounts_user}, 3, kAnywhere},
    RoleInfo{Role::admin, "admin", 0, {Role::editor, Role::kms_admin}, 2, kAnywhere},
};

constexpr std::array kAllRoles{
    Role::kms_keys_encrypter,
    Role::kms_keys_decrypter,
    Role::kms_keys_encrypter_decrypter,
    Role::kms_auditor,
    Role::kms_viewer,
    Role::kms_editor,
    Role::kms_admin,
    Role::iam_service_accounts_user,
    Role::viewer,
    Role::editor,
    Role::admin,
};

constexpr const RoleInfo& info(Role role) { return kRoles.at(static_cast<std::size_t>(role)); }

constexpr bool table_in_order()
{
    for (std::size_t i = 0; i < kRoles.size(); ++i) {
        if (static_cast<std::size_t>(kRoles.at(i).role) != i) {
            return false;
        }
        for (std::size_t j = 0; j < kRoles.at(i).n_includes; ++j) {
            if (static_cast<std::size_t>(kRoles.at(i).includes.at(j)) >= i) {
                return false;
            }
        }
    }
    for (std::size_t i = 0; i < kPermissions.size(); ++i) {
        if (static_cast<std::size_t>(kPermissions.at(i).permission) != i) {
            return false;
        }
    }
    return true;
}
static_assert(table_in_order(), "role and permission tables follow their enums; roles include earlier roles only");

// Each role's own permissions plus those of every role it includes: in table
// order, an included role's set is complete before it is used.
constexpr std::array<Mask, kRoles.size()> kGranted = [] {
    std::array<Mask, kRoles.size()> granted{};
    for (std::size_t i = 0; i < kRoles.size(); ++i) {
        granted.at(i) = kRoles.at(i).own;
        for (std::size_t j = 0; j < kRoles.at(i).n_includes; ++j) {
            granted.at(i) |= granted.at(static_cast<std::size_t>(kRoles.at(i).includes.at(j)));
        }
    }
    return granted;
}();

constexpr Mask closure(Role role) { return kGranted.at(static_cast<std::size_t>(role)); }

static_assert((closure(Role::kms_viewer) & bit(Permission::keys_decrypt)) == 0, "kms.viewer never decrypts");
static_assert((closure(Role::kms_auditor) & bit(Permission::keys_decrypt)) == 0, "kms.auditor never decrypts");
static_assert((closure(Role::viewer) & bit(Permission::keys_decrypt)) == 0, "viewer never decrypts");
static_assert((closure(Role::kms_keys_encrypter) & bit(Permission::keys_decrypt)) == 0,
              "kms.keys.encrypter never decrypts");

}  // namespace

std::string_view permission_name(Permission permission)
{
    return kPermissions.at(static_cast<std::size_t>(permission)).name;
}

ResourceKind permission_resource(Permission permission)
{
    return kPermissions.at(static_cast<std::size_t>(permission)).resource;
}

std::span<const Permission> all_permissions() { return kAllPermissions; }

std::string_view role_name(Role role) { return info(role).name; }

std::optional<Role> role_from_name(std::string_view name)
{
    for (const RoleInfo& r : kRoles) {
        if (r.name == name) {
            return r.role;
        }
    }
    return std::nullopt;
}

std::span<const Role> all_roles() { return kAllRoles; }

std::string role_names()
{
    std::string out;
    for (const RoleInfo& r : kRoles) {
        if (!out.empty()) {
            out += ", ";
        }
        out += r.name;
    }
    return out;
}

bool grants(Role role, Permission permission) { return (closure(role) & bit(permission)) != 0; }

bool bindable(Role role, ResourceKind kind) { return (info(role).kinds & kind_bit(kind)) != 0; }

std::string roles_granting(Permission permission)
{
    std::string out;
    std::string last;
    for (const RoleInfo& r : kRoles) {
        if (!grants(r.role, permission)) {
            continue;
        }
        if (!last.empty()) {
            out += out.empty() ? "" : ", ";
            out += last;
        }
        last = r.name;
    }
    return out.empty() ? last : out + " or " + last;
}

}  // namespace diskcrypt::policy
