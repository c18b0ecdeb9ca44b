// Roles and the permissions they grant (agent/README.md, "Access policy",
// has the same table for users).
//
// A permission acts on one kind of resource: kms.keys.* on KMS keys,
// iam.serviceAccounts.* on service accounts. A role grants a fixed set of
// permissions; a higher role grants everything its lower roles do (the table
// lists each role's own permissions and the roles it includes, and
// permissions() closes over them). kms.auditor and kms.viewer never grant
// decrypt, and kms.keys.encrypter grants encrypt alone.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace diskcrypt::policy {

enum class ResourceKind : std::uint8_t { key, service_account, folder };

enum class Permission : std::uint8_t {
    keys_get,                  // kms.keys.get: a key's metadata and versions
    keys_list,                 // kms.keys.list: the keys of a folder
    keys_create,               // kms.keys.create: make a key
    keys_get_access_bindings,  // kms.keys.getAccessBindings: who may use a key
    keys_encrypt,              // kms.keys.encrypt: wrap a disk's secret
    keys_decrypt,              // kms.keys.decrypt: unwrap it (attach, verify)
    keys_update,               // kms.keys.update: rotate, disable, enable
    keys_destroy,              // kms.keys.destroy: schedule a key's destruction
    keys_set_access_bindings,  // kms.keys.setAccessBindings: change who may use a key
    service_accounts_get,      // iam.serviceAccounts.get: see a service account
    service_accounts_use,      // iam.serviceAccounts.use: act with it (format a disk for it)
};

enum class Role : std::uint8_t {
    kms_keys_encrypter,
    kms_keys_decrypter,
    kms_keys_encrypter_decrypter,
    kms_auditor,
    kms_viewer,
    kms_editor,
    kms_admin,
    iam_service_accounts_user,
    viewer,
    editor,
    admin,
};

// The permission's name, e.g. "kms.keys.decrypt".
std::string_view permission_name(Permission permission);
// The kind of resource it acts on (key or service account).
ResourceKind permission_resource(Permission permission);
// Every permission, in declaration order.
std::span<const Permission> all_permissions();

// The role's name, e.g. "kms.keys.encrypterDecrypter".
std::string_view role_name(Role role);
std::optional<Role> role_from_name(std::string_view name);
// Every role, in the documented order.
std::span<const Role> all_roles();
// "kms.keys.encrypter, kms.keys.decrypter, ..." (for errors).
std::string role_names();

// Whether the role grants the permission, itself or through a role it includes.
bool grants(Role role, Permission permission);
// Whether the role may be bound on a resource of this kind: kms.* roles on
// keys and folders, iam.serviceAccounts.user on service accounts and
// folders, the primitive roles (viewer, editor, admin) on all three.
bool bindable(Role role, ResourceKind kind);
// The roles that grant a permission, lowest first: "kms.keys.decrypter,
// kms.keys.encrypterDecrypter, ... or admin" (for a denial's hint).
std::string roles_granting(Permission permission);

}  // namespace diskcrypt::policy
