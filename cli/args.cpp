#include "cli/args.hpp"

#include <CLI/CLI.hpp>
#include <filesystem>

#include "agent/error.hpp"
#include "agent/names.hpp"
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

// The checks the agent will make again, for a fast and local usage error.
void validate(Arguments& a)
{
    if (a.command == Command::format) {
        auto& f = a.format;
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

    auto* status = app.add_subcommand("status", "show the agent's status, or one attached disk's");
    std::string status_disk;
    auto* status_id = status->add_option("disk-id", status_disk, "an attached disk");

    auto* list = app.add_subcommand("list", "list the disks attached on this host");

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
