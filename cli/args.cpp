#include "cli/args.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <filesystem>
#include <string_view>

#include "agent/error.hpp"
#include "agent/names.hpp"
#include "agent/text.hpp"
#include "cli/output.hpp"

namespace diskcrypt::cli {

namespace {

std::string exit_code_table()
{
    std::string s = "Exit status:\n";
    s += "  0   success\n";
    for (const auto& info : errc_table()) {
        std::string code = std::to_string(info.exit_status);
        code.resize(4, ' ');
        s += "  " + code + std::string(info.summary) + " (" + std::string(info.name) + ")\n";
    }
    return s;
}

std::string absolute(const std::string& path)
{
    if (path.empty() || path.front() == '/') {
        return path;
    }
    std::error_code ec;
    const auto abs = std::filesystem::absolute(path, ec);
    return ec ? path : abs.lexically_normal().string();
}

// "MAJOR:MINOR" as given, or that of the block device at a path.
std::string device_number(const std::string& arg)
{
    const auto colon = arg.find(':');
    auto digits = [](std::string_view v) {
        return !v.empty() && v.size() <= 10 && v.find_first_not_of("0123456789") == std::string_view::npos;
    };
    if (colon != std::string::npos && digits(std::string_view(arg).substr(0, colon)) &&
        digits(std::string_view(arg).substr(colon + 1))) {
        return arg;
    }
    struct stat st {};
    if (stat(arg.c_str(), &st) != 0) {
        throw Error(Errc::device, errno_text("cannot find block device '" + printable(arg) + "'", errno),
                    "name it as MAJOR:MINOR when it is gone");
    }
    if (!S_ISBLK(st.st_mode)) {
        throw Error(Errc::device, "'" + printable(arg) + "' is not a block device");
    }
    return std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
}

void validate_format(proto::FormatArgs& f)
{
    f.device = absolute(f.device);
    validate_disk_id(f.disk_id);
    const DiskType& type = encryptable_disk_type(f.type);
    validate_sector_size(f.sector_size.value_or(type.profile.sector_size));
    if (f.key) {
        (void)parse_key_spec(*f.key);
    }
    validate_service_account(f.service_account);
    validate_user_account(f.user);
    if (f.lineage) {
        validate_disk_id(*f.lineage, "lineage id");
    }
}

// The checks the agent will make again, for a fast and local usage error.
void validate(Arguments& a)
{
    if (a.command == Command::format) {
        validate_format(a.format);
    } else if (a.command == Command::verify) {
        auto& v = a.verify;
        v.device = absolute(v.device);
        validate_disk_id(v.disk_id);
        if (v.type) {
            (void)encryptable_disk_type(*v.type);
        }
        (void)parse_key_spec(v.key);
        validate_service_account(v.service_account);
    } else if (a.command == Command::attach) {
        auto& t = a.attach;
        t.device = absolute(t.device);
        validate_disk_id(t.disk_id);
        (void)encryptable_disk_type(t.type);
        (void)parse_key_spec(t.key);
        validate_service_account(t.service_account);
    } else if (a.command == Command::copy) {
        auto& c = a.copy;
        c.device = absolute(c.device);
        c.target_device = absolute(c.target_device);
        validate_disk_id(c.disk_id);
        validate_disk_id(c.target_id, "target id");
        (void)parse_key_spec(c.key);
        validate_service_account(c.service_account);
        validate_user_account(c.user);
        if (c.target_type) {
            (void)encryptable_disk_type(*c.target_type);
        }
        if (c.target_service_account) {
            validate_service_account(*c.target_service_account, "target service account");
        }
    } else if (a.command == Command::rewrap) {
        auto& w = a.rewrap;
        w.device = absolute(w.device);
        validate_disk_id(w.disk_id);
        if (w.type) {
            (void)encryptable_disk_type(*w.type);
        }
        (void)parse_key_spec(w.key);
        if (w.to_key) {
            (void)parse_key_spec(*w.to_key);
        }
        validate_service_account(w.service_account);
        validate_user_account(w.user);
    } else if (a.command == Command::import_image) {
        validate_format(a.import.format);
        a.import.source = absolute(a.import.source);
    } else if (a.command == Command::decrypt) {
        validate_disk_id(a.decrypt.disk_id);
        if (a.decrypt.device) {
            a.decrypt.device = absolute(*a.decrypt.device);
        }
    } else if (a.command == Command::auto_attach || a.command == Command::auto_detach) {
        a.autodev.devno = device_number(a.autodev.devno);
    } else if (a.command == Command::audit) {
        if (a.audit.disk_id) {
            validate_disk_id(*a.audit.disk_id);
        }
        if (a.audit.key) {
            (void)parse_key_spec(*a.audit.key);
        }
    } else if (a.command == Command::key) {
        if (a.key.key) {
            (void)parse_key_spec(*a.key.key);
        }
        if (a.key.provider) {
            validate_provider_name(*a.key.provider);
        }
        validate_user_account(a.key.user);
    } else if (a.command == Command::detach) {
        validate_disk_id(a.detach.disk_id);
    } else if (a.command == Command::status && a.status.disk_id) {
        validate_disk_id(*a.status.disk_id);
    }
}

}  // namespace

std::optional<Arguments> parse_arguments(int argc, const char* const* argv, std::ostream& out, std::ostream& err,
                                         int& exit_code)
{
    Arguments a;
    CLI::App app{"diskcrypt: encrypted cloud disks with KMS-wrapped keys (a client of diskcrypt-agent)", "diskcrypt"};
    app.require_subcommand(1);
    app.fallthrough();
    app.footer(exit_code_table());
    app.add_option("--socket", a.socket, "agent socket")->capture_default_str();
    app.add_flag("--json", a.json, "print the result (or the error) as JSON on stdout");

    unsigned sector_size = 0;
    auto* format = app.add_subcommand("format", "make DEVICE a diskcrypt disk (LUKS2, AES-256-XTS, KMS-wrapped key)");
    format->add_option("device", a.format.device, "block device or regular file")->required();
    format->add_option("--disk-id", a.format.disk_id, "the control plane's disk id ([A-Za-z0-9._-]{1,100})")
        ->required();
    format
        ->add_option("--type", a.format.type,
                     "disk type: network-hdd, network-ssd, network-ssd-nonreplicated, network-ssd-io-m3")
        ->required();
    format->add_option("--key", a.format.key, "KMS key as PROVIDER:KEY_ID (default: the agent's default_key)");
    format
        ->add_option("--service-account", a.format.service_account,
                     "the disk's service account: it must hold kms.keys.encrypt on the key, and "
                     "kms.keys.decrypt to attach the disk later")
        ->required();
    format
        ->add_option("--user", a.format.user,
                     "the user creating the disk (the control plane asserts it): needs iam.serviceAccounts.use on "
                     "the service account and kms.keys.get on the key")
        ->required();
    format->add_option("--lineage", a.format.lineage, "id of the volume this disk descends from (default: itself)");
    auto* ss = format->add_option("--sector-size", sector_size, "encryption sector size (default: by disk type)");
    format->add_flag("--force", a.format.force, "overwrite a device that holds a LUKS header or a filesystem");

    auto* verify = app.add_subcommand("verify", "check that this host can unwrap DEVICE's key for DISK-ID");
    verify->add_option("device", a.verify.device, "block device or regular file")->required();
    verify->add_option("--disk-id", a.verify.disk_id, "the disk id the caller expects")->required();
    verify->add_option("--type", a.verify.type, "the disk's type (checked against the header when given)");
    verify->add_option("--key", a.verify.key, "the disk's KMS key, PROVIDER:KEY_ID (checked against the header)")
        ->required();
    verify
        ->add_option("--service-account", a.verify.service_account,
                     "the disk's service account: it must hold kms.keys.decrypt on the key")
        ->required();

    auto* attach = app.add_subcommand(
        "attach", "open DEVICE for disk DISK-ID through the kernel target; prints /dev/mapper/diskcrypt-DISK-ID");
    attach->add_option("device", a.attach.device, "block device holding the disk's diskcrypt header")->required();
    attach->add_option("--disk-id", a.attach.disk_id, "the control plane's disk id (checked against the header)")
        ->required();
    attach
        ->add_option("--type", a.attach.type,
                     "the disk's type, as the control plane records it (must equal the header's)")
        ->required();
    attach
        ->add_option("--key", a.attach.key,
                     "the disk's KMS key as the control plane records it, PROVIDER:KEY_ID; a header wrapped under "
                     "another key is refused before the KMS is asked")
        ->required();
    attach
        ->add_option("--service-account", a.attach.service_account,
                     "the disk's service account ([A-Za-z0-9._@-]{1,128}): it must hold kms.keys.decrypt on the "
                     "key; audited")
        ->required();
    attach->add_flag("--allow-discards", a.attach.allow_discards,
                     "pass discards (TRIM) to the storage, which learns the guest's free-space map; only for disk "
                     "types whose profile permits it; never taken from the header");

    auto* detach = app.add_subcommand("detach", "remove the mapping of DISK-ID");
    detach->add_option("disk-id", a.detach.disk_id, "the disk id")->required();
    detach->add_flag("--force", a.detach.force,
                     "even if it is in use: replace the table with dm-error (all further I/O fails, the key "
                     "leaves the kernel), then remove the mapping when its last user closes it");

    std::string auto_device;
    auto* auto_attach =
        app.add_subcommand("auto-attach",
                           "attach the disk on DEVICE as host provisioning's entry for its serial says (udev's "
                           "diskcrypt-attach@.service runs it); a device without an entry is refused");
    auto_attach->add_option("device", auto_device, "the block device, as a path or MAJOR:MINOR")->required();
    auto* auto_detach = app.add_subcommand(
        "auto-detach",
        "detach the mapping backed by DEVICE (forced when the device is gone); udev's diskcrypt-attach@.service "
        "runs it when the device goes or the unit stops");
    auto_detach->add_option("device", auto_device, "the block device, as a path or MAJOR:MINOR")->required();

    auto* status = app.add_subcommand("status", "show the agent's status, or one attached disk's");
    std::string status_disk;
    auto* status_id = status->add_option("disk-id", status_disk, "an attached disk");

    auto* list = app.add_subcommand("list", "list the disks attached on this host");

    auto* copy = app.add_subcommand(
        "copy",
        "make an encrypted snapshot or image of a detached disk, or a disk from an encrypted snapshot or image: the "
        "header and ciphertext copied, the same DEK and KMS key, the secret re-wrapped for the copy's id");
    copy->add_option("device", a.copy.device, "the source: block device or regular file")->required();
    copy->add_option("--disk-id", a.copy.disk_id, "the source's id (disk, snapshot or image)")->required();
    copy->add_option("--key", a.copy.key, "the source's KMS key as the control plane records it, PROVIDER:KEY_ID")
        ->required();
    copy->add_option("--service-account", a.copy.service_account,
                     "the source's service account: it must hold kms.keys.decrypt on the key")
        ->required();
    copy->add_option("--user", a.copy.user,
                     "the user making the copy: needs iam.serviceAccounts.use on the copy's service account and "
                     "kms.keys.get on the key")
        ->required();
    copy->add_option("--to", a.copy.target_device, "the target: block device or regular file, at least as large")
        ->required();
    copy->add_option("--to-id", a.copy.target_id, "the copy's id")->required();
    copy->add_option("--to-kind", a.copy.target_kind, "disk, snapshot or image")
        ->required()
        ->check(CLI::IsMember({"disk", "snapshot", "image"}));
    copy->add_option("--type", a.copy.target_type, "a disk's type (only with --to-kind disk, and required there)");
    copy->add_option("--to-service-account", a.copy.target_service_account,
                     "the copy's service account (default: the source's); it must hold kms.keys.encrypt on the key");
    copy->add_flag("--force", a.copy.force, "overwrite a target that holds a LUKS header or a filesystem");

    auto* rewrap = app.add_subcommand(
        "rewrap",
        "wrap DEVICE's secret again: under the key's current version, or another key (--to-key); data "
        "untouched, the disk may be attached");
    rewrap->add_option("device", a.rewrap.device, "block device or regular file")->required();
    rewrap->add_option("--disk-id", a.rewrap.disk_id, "the disk id")->required();
    rewrap->add_option("--type", a.rewrap.type, "the disk's type (checked against the header when given)");
    rewrap->add_option("--key", a.rewrap.key, "the disk's current KMS key, PROVIDER:KEY_ID")->required();
    rewrap
        ->add_option("--service-account", a.rewrap.service_account,
                     "the disk's service account: kms.keys.decrypt on the current key, kms.keys.encrypt on the new")
        ->required();
    rewrap->add_option("--user", a.rewrap.user, "the acting user (kms.keys.get on the new key)")->required();
    rewrap->add_option("--to-key", a.rewrap.to_key, "the new key, PROVIDER:KEY_ID (default: --key's current version)");

    unsigned import_sector_size = 0;
    auto* imp = app.add_subcommand(
        "import",
        "make DEVICE an encrypted disk holding the unencrypted image SOURCE (a raw file or block device): "
        "formatted as by format, the image written through the kernel target");
    imp->add_option("device", a.import.format.device, "the new disk's block device")->required();
    imp->add_option("--image", a.import.source, "the unencrypted source: a raw image file or block device")->required();
    imp->add_option("--disk-id", a.import.format.disk_id, "the new disk's id")->required();
    imp->add_option("--type", a.import.format.type,
                    "disk type: network-hdd, network-ssd, network-ssd-nonreplicated, network-ssd-io-m3")
        ->required();
    imp->add_option("--key", a.import.format.key, "KMS key as PROVIDER:KEY_ID (default: the agent's default_key)");
    imp->add_option("--service-account", a.import.format.service_account,
                    "the disk's service account (kms.keys.encrypt on the key)")
        ->required();
    imp->add_option("--user", a.import.format.user,
                    "the acting user (iam.serviceAccounts.use on the service account, kms.keys.get on the key)")
        ->required();
    imp->add_option("--lineage", a.import.format.lineage, "id of the image or snapshot the disk comes from");
    auto* imp_ss = imp->add_option("--sector-size", import_sector_size, "encryption sector size (default: by type)");
    imp->add_flag("--force", a.import.format.force, "overwrite a device that holds a LUKS header or a filesystem");

    auto* decrypt = app.add_subcommand("decrypt", "refused: encryption cannot be disabled on a disk");
    std::string decrypt_device;
    decrypt->add_option("disk-id", a.decrypt.disk_id, "the disk id")->required();
    auto* decrypt_dev = decrypt->add_option("--device", decrypt_device, "its device");

    auto* key = app.add_subcommand("key", "manage KMS keys: create, list, rotate, disable, enable, destroy");
    key->require_subcommand(1);
    std::string key_provider;
    std::string key_spec;
    struct KeySub {
        CLI::App* app;
        std::string_view action;
    };
    std::vector<KeySub> key_subs;
    for (const auto& [action, help] :
         {std::pair{"create", "create a key (version 1) on its provider (kms.keys.create: kms.editor)"},
          std::pair{"rotate", "make a new primary version; older versions still unwrap (kms.editor)"},
          std::pair{"disable", "stop every version from wrapping and unwrapping (kms.editor)"},
          std::pair{"enable", "let a disabled key work again, where the provider allows it (kms.editor)"},
          std::pair{"destroy", "destroy every version of a key, irreversibly (kms.keys.destroy: kms.admin)"}}) {
        auto* sub = key->add_subcommand(action, help);
        sub->add_option("key", key_spec, "the key, PROVIDER:KEY_ID")->required();
        sub->add_option("--user", a.key.user, "the acting user, as the control plane asserts it")->required();
        if (std::string_view(action) == "destroy") {
            sub->add_flag("--force", a.key.force, "destroy even though disks attached on this host use the key");
        }
        key_subs.push_back({sub, action});
    }
    auto* key_list = key->add_subcommand("list", "list the keys the user may see (kms.keys.list: kms.viewer)");
    auto* key_list_provider = key_list->add_option("provider", key_provider, "only this provider's keys");
    key_list->add_option("--user", a.key.user, "the acting user, as the control plane asserts it")->required();

    auto* check_keys = app.add_subcommand(
        "check-keys", "check now the KMS state of the keys of attached disks; revoke or restore per [revocation]");

    auto* audit =
        app.add_subcommand("audit", "show the key-use audit trail (the agent's audit file or journal), oldest first");
    std::string audit_disk;
    std::string audit_key;
    std::string audit_since;
    auto* audit_disk_opt = audit->add_option("--disk", audit_disk, "only events of this disk id");
    auto* audit_key_opt =
        audit->add_option("--key", audit_key, "only events of this key, PROVIDER:KEY_ID (any version)");
    auto* audit_since_opt = audit->add_option(
        "--since", audit_since, "only events at or after T: 2026-12-03T15:48:07Z, 2026-12-03, @EPOCH, -2h, -30m, -7d");

    exit_code = 0;
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        exit_code = app.exit(e, out, err) == 0 ? 0 : exit_status(Errc::usage);
        return std::nullopt;
    }
    if (format->parsed()) {
        a.command = Command::format;
        if (ss->count() > 0) {
            a.format.sector_size = sector_size;
        }
    } else if (verify->parsed()) {
        a.command = Command::verify;
    } else if (status->parsed()) {
        a.command = Command::status;
        if (status_id->count() > 0) {
            a.status.disk_id = status_disk;
        }
    } else if (attach->parsed()) {
        a.command = Command::attach;
    } else if (detach->parsed()) {
        a.command = Command::detach;
    } else if (list->parsed()) {
        a.command = Command::list;
    } else if (copy->parsed()) {
        a.command = Command::copy;
    } else if (rewrap->parsed()) {
        a.command = Command::rewrap;
    } else if (imp->parsed()) {
        a.command = Command::import_image;
        if (imp_ss->count() > 0) {
            a.import.format.sector_size = import_sector_size;
        }
    } else if (auto_attach->parsed() || auto_detach->parsed()) {
        a.command = auto_attach->parsed() ? Command::auto_attach : Command::auto_detach;
        a.autodev.devno = auto_device;
    } else if (audit->parsed()) {
        a.command = Command::audit;
        if (audit_disk_opt->count() > 0) {
            a.audit.disk_id = audit_disk;
        }
        if (audit_key_opt->count() > 0) {
            a.audit.key = audit_key;
        }
        if (audit_since_opt->count() > 0) {
            a.audit.since = audit_since;
        }
    } else if (check_keys->parsed()) {
        a.command = Command::check_keys;
    } else if (key->parsed()) {
        a.command = Command::key;
        if (key_list->parsed()) {
            a.key.action = "list";
            if (key_list_provider->count() > 0) {
                a.key.provider = key_provider;
            }
        }
        for (const KeySub& k : key_subs) {
            if (k.app->parsed()) {
                a.key.action = std::string(k.action);
                a.key.key = key_spec;
            }
        }
    } else if (decrypt->parsed()) {
        a.command = Command::decrypt;
        if (decrypt_dev->count() > 0) {
            a.decrypt.device = decrypt_device;
        }
    }
    try {
        validate(a);
    } catch (const Error& e) {
        print_error(e.code(), e.what(), e.hint(), a.json, out, err);
        exit_code = exit_status(e.code());
        return std::nullopt;
    }
    return a;
}

}  // namespace diskcrypt::cli
