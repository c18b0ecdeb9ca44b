#include "cli/output.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <iomanip>
#include <sstream>
#include <vector>

#include "agent/text.hpp"

namespace diskcrypt::cli {

namespace {

using nlohmann::json;

// Every value the agent sent passes through here (or text()) before it is
// printed: sanitize() keeps printable ASCII, so a header field cannot send
// terminal escape sequences to an operator (the agent's own escapes, such as
// "\xff", are printed as they are).
std::string text(const json& v) { return sanitize(v.is_string() ? v.get<std::string>() : proto::dump_json(v)); }

// JSON for a terminal or a pipe: ASCII only (\uXXXX escapes), never throws.
std::string json_text(const json& j) { return j.dump(2, ' ', true, json::error_handler_t::replace); }

std::string str(const json& j, const char* key)
{
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        return "-";
    }
    return text(*it);
}

unsigned long long num(const json& j, const char* key)
{
    const auto it = j.find(key);
    return (it != j.end() && it->is_number_unsigned()) ? it->get<unsigned long long>() : 0ULL;
}

// A flag of the agent's: set only when it is the JSON boolean true. A missing
// key, another type, or a result that is not an object is "not set", never
// an exception (json::value() throws type_error for each of those).
bool flag(const json& j, const char* key)
{
    const auto it = j.find(key);
    return it != j.end() && it->is_boolean() && it->get<bool>();
}

void row(std::ostream& out, const std::string& name, const std::string& value)
{
    std::string n = name;
    n.resize(16, ' ');
    out << "  " << n << value << '\n';
}

std::string key_text(const json& r)
{
    const json& k = r.contains("key") ? r.at("key") : json::object();
    return str(k, "provider") + ":" + str(k, "id") + " version " + str(k, "version") + " (" + str(k, "provider_type") +
           ")";
}

std::string bytes_text(unsigned long long b) { return std::to_string(b) + " bytes (" + human_size(b) + ")"; }

std::string disk_key_text(const json& r)
{
    const auto it = r.find("key");
    if (it == r.end() || !it->is_object()) {
        return "-";
    }
    return str(*it, "provider") + ":" + str(*it, "id") + " version " + str(*it, "version");
}

std::string list_text(const json& r, const char* key)
{
    std::string s;
    if (const auto it = r.find(key); it != r.end() && it->is_array()) {
        for (const auto& h : *it) {
            s += (s.empty() ? "" : "; ") + text(h);
        }
    }
    return s.empty() ? "-" : s;
}

void disk_rows(std::ostream& out, const json& r)
{
    row(out, "backing device", str(r, "backing_device") + " (" + str(r, "backing_devno") + ")");
    row(out, "mapping",
        str(r, "mapping") + " (" + str(r, "dm_device") + ", " + str(r, "devno") + "), uuid " + str(r, "dm_uuid"));
    row(out, "size", bytes_text(num(r, "size")) + ", " + str(r, "sector_size") + "-byte sectors");
    row(out, "LUKS2 UUID", str(r, "luks_uuid"));
    row(out, "key", disk_key_text(r));
    row(out, "target", str(r, "target") + ", key " + str(r, "key_state"));
    row(out, "open count", str(r, "open_count") + (flag(r, "suspended") ? " (suspended)" : ""));
    if (const auto it = r.find("holders"); it != r.end() && it->is_array() && !it->empty()) {
        row(out, "holders", list_text(r, "holders"));
    }
    if (const auto it = r.find("state"); it != r.end() && it->is_string()) {
        row(out, "state", str(r, "state"));
    }
    if (const auto it = r.find("header_error"); it != r.end() && it->is_string()) {
        row(out, "header", "not readable: " + str(r, "header_error"));
    }
    if (const auto it = r.find("revoked"); it != r.end() && it->is_object()) {
        const json& k = it->contains("key") && it->at("key").is_object() ? it->at("key") : json::object();
        row(out, "revoked",
            (k.empty() ? std::string("key wiped")
                       : "key " + str(k, "provider") + ":" + str(k, "id") + " version " + str(k, "version") + " is " +
                             str(*it, "state")) +
                (it->at("since").is_string() ? " (since " + str(*it, "since") + ")" : "") +
                ": I/O waits until the key is active again and the disk is re-keyed");
        if (k.empty()) {
            row(out, "", str(*it, "state"));
        }
    }
}

void pad(std::ostream& out, const std::string& text, std::size_t width)
{
    out << text;
    for (std::size_t i = text.size(); i < width; ++i) {
        out << ' ';
    }
}

// Rows of cells in columns two spaces apart; the last column is not padded.
void table(std::ostream& out, const std::vector<std::vector<std::string>>& rows)
{
    std::vector<std::size_t> width;
    for (const auto& r : rows) {
        width.resize(std::max(width.size(), r.size()), 0);
        for (std::size_t i = 0; i < r.size(); ++i) {
            width[i] = std::max(width[i], r[i].size() + 2);
        }
    }
    for (const auto& r : rows) {
        for (std::size_t i = 0; i < r.size(); ++i) {
            if (i + 1 == r.size()) {
                out << r[i];
            } else {
                pad(out, r[i], width[i]);
            }
        }
        out << '\n';
    }
}

// "1 disabled, 2 active (primary)".
std::string versions_text(const json& k)
{
    std::string t;
    if (k.contains("versions") && k.at("versions").is_array()) {
        for (const json& v : k.at("versions")) {
            t += (t.empty() ? "" : ", ") + str(v, "version") + " " + str(v, "state") +
                 (v.value("primary", false) ? " (primary)" : "");
        }
    }
    return t.empty() ? "-" : t;
}

void key_table(std::ostream& out, const json& keys)
{
    if (!keys.is_array() || keys.empty()) {
        out << "No keys to show.\n";
        return;
    }
    std::vector<std::vector<std::string>> rows{{"KEY", "TYPE", "PRIMARY", "VERSIONS"}};
    for (const json& k : keys) {
        rows.push_back(
            {str(k, "provider") + ":" + str(k, "id"), str(k, "provider_type"), str(k, "primary"), versions_text(k)});
    }
    table(out, rows);
}

void disk_table(std::ostream& out, const json& disks)
{
    if (!disks.is_array() || disks.empty()) {
        out << "No diskcrypt disks are attached on this host.\n";
        return;
    }
    const std::vector<std::string> head{"DISK-ID", "MAPPED DEVICE", "BACKING", "SIZE",
                                        "SECTOR",  "OPEN",          "KEY",     "KMS KEY"};
    std::vector<std::vector<std::string>> rows{head};
    for (const auto& d : disks) {
        const bool empty = d.contains("state") && d.at("state").is_string();
        const bool unreadable = d.contains("header_error") && d.at("header_error").is_string();
        rows.push_back({str(d, "disk_id"), str(d, "path"), str(d, "backing_device"), human_size(num(d, "size")),
                        str(d, "sector_size"), str(d, "open_count"), empty ? "empty" : str(d, "key_state"),
                        unreadable ? "header unreadable" : disk_key_text(d)});
    }
    table(out, rows);
}

}  // namespace

ProgressPrinter::ProgressPrinter(bool json, bool tty, std::ostream& out, std::ostream& err)
    : json_(json), tty_(tty), out_(out), err_(err)
{
}

void ProgressPrinter::update(const json& p)
{
    if (json_) {
        out_ << proto::dump_json(json{{"progress", p}}) << '\n' << std::flush;
        return;
    }
    if (!tty_) {
        return;
    }
    const unsigned long long done = num(p, "done");
    const unsigned long long total = num(p, "total");
    constexpr int kWidth = 30;
    const double share = total > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 1.0;
    std::string bar(static_cast<std::size_t>(share * kWidth), '#');
    bar.resize(kWidth, '.');
    // Appended piece by piece: g++ 12 at -O2 warns (-Wrestrict) on
    // "literal" + std::string&&.
    std::string line = "\r";
    line += str(p, "operation");
    line += " [";
    line += bar;
    line += "] ";
    line += human_size(done);
    line += " of ";
    line += human_size(total);
    line += ", ";
    line += human_size(num(p, "rate_bytes_per_s"));
    line += "/s";
    if (p.contains("eta_s")) {
        const unsigned long long eta = num(p, "eta_s");
        line += ", ";
        line += std::to_string(eta / 60);
        line += eta % 60 < 10 ? ":0" : ":";
        line += std::to_string(eta % 60);
        line += " left";
    }
    line += "\x1b[K";  // the rest of a longer line before it erased
    err_ << line << std::flush;
    shown_ = true;
}

void ProgressPrinter::finish()
{
    if (shown_) {
        err_ << '\n';
        shown_ = false;
    }
}

std::string human_size(unsigned long long bytes)
{
    static constexpr std::array<const char*, 5> kUnits{"B", "KiB", "MiB", "GiB", "TiB"};
    auto v = static_cast<double>(bytes);
    std::size_t unit = 0;
    while (v >= 1024.0 && unit + 1 < kUnits.size()) {
        v /= 1024.0;
        ++unit;
    }
    std::ostringstream s;
    s << std::fixed << std::setprecision(unit == 0 ? 0 : 1) << v << ' ' << kUnits.at(unit);
    return s.str();
}

void print_error(Errc code, const std::string& message, const std::string& hint, bool json, std::ostream& out,
                 std::ostream& err)
{
    err << "diskcrypt: error: " << sanitize(message) << '\n';
    if (!hint.empty()) {
        err << "diskcrypt: hint: " << sanitize(hint) << '\n';
    }
    if (json) {
        nlohmann::json e = {{"code", errc_name(code)}, {"exit", exit_status(code)}, {"message", message}};
        if (!hint.empty()) {
            e["hint"] = hint;
        }
        out << json_text(nlohmann::json{{"ok", false}, {"error", e}}) << '\n';
    }
}

void print_audit_events(const nlohmann::json& page, std::ostream& out)
{
    if (!page.contains("events") || !page.at("events").is_array()) {
        return;
    }
    for (const nlohmann::json& e : page.at("events")) {
        if (!e.is_object()) {
            continue;
        }
        std::string line = str(e, "time") + "  " + str(e, "event") + "  " + str(e, "result");
        for (const char* field : {"disk_id", "service_account", "user", "device"}) {
            if (e.contains(field) && e.at(field).is_string()) {
                line +=
                    std::string("  ") + (std::string_view(field) == "disk_id" ? "disk" : field) + "=" + str(e, field);
            }
        }
        if (e.contains("key") && e.at("key").is_object()) {
            const nlohmann::json& k = e.at("key");
            line += "  key=" + str(k, "provider") + ":" + str(k, "id") +
                    (k.contains("version") && k.at("version").is_string() ? " version=" + str(k, "version") : "");
        }
        if (e.contains("caller") && e.at("caller").is_object()) {
            line += "  uid=" + str(e.at("caller"), "uid");
        }
        if (e.contains("reason") && e.at("reason").is_string()) {
            line += "  reason=" + str(e, "reason");
        }
        if (e.contains("message") && e.at("message").is_string()) {
            line += ": " + str(e, "message");
        }
        out << line << '\n';
    }
}

void print_audit_end(const nlohmann::json& done, bool printed, std::ostream& out)
{
    if (!printed) {
        out << "No events in the " << str(done, "source") << " match.\n";
    }
    if (num(done, "skipped") > 0) {
        out << "(" << str(done, "skipped") << " line(s) of the " << str(done, "source")
            << " were not audit events and were skipped)\n";
    }
}

void print_result(Command command, const nlohmann::json& r, bool json, std::ostream& out)
{
    if (json) {
        out << json_text(r) << '\n';
        return;
    }
    switch (command) {
        case Command::format: {
            out << "Formatted " << str(r, "device") << " as diskcrypt disk " << str(r, "disk_id") << " ("
                << str(r, "type") << ")\n";
            row(out, "LUKS2 UUID", str(r, "luks_uuid"));
            row(out, "key", key_text(r));
            row(out, "service account", str(r, "service_account") + " (for user " + str(r, "user") + ")");
            row(out, "access policy", str(r, "policy_revision"));
            row(out, "cipher", str(r, "cipher") + ", " + str(r, "volume_key_bits") + "-bit volume key");
            row(out, "sector size", str(r, "sector_size") + " bytes");
            row(out, "device size", bytes_text(num(r, "device_size")));
            row(out, "overhead", bytes_text(num(r, "overhead")) + ": the header, data starts there");
            row(out, "usable size", bytes_text(num(r, "usable_size")));
            if (const auto it = r.find("destroyed"); it != r.end() && it->is_array()) {
                for (const auto& d : *it) {
                    row(out, "destroyed", text(d));
                }
            }
            break;
        }
        case Command::verify:
            out << "Disk " << str(r, "disk_id") << " on " << str(r, "device") << " opens on this host\n";
            row(out, "LUKS2 UUID", str(r, "luks_uuid"));
            row(out, "key", key_text(r));
            row(out, "keyslot", str(r, "keyslot") + " (" + str(r, "volume_key_bits") + "-bit volume key)");
            row(out, "service account", str(r, "service_account"));
            row(out, "access policy", str(r, "policy_revision"));
            row(out, "sector size", str(r, "sector_size") + " bytes");
            row(out, "data offset", bytes_text(num(r, "data_offset")));
            break;
        case Command::attach:
            out << str(r, "path") << '\n';
            row(out, "disk",
                str(r, "disk_id") + (flag(r, "already_attached") ? ": already attached from this device, unchanged"
                                                                 : ": attached in " + str(r, "elapsed_ms") + " ms"));
            row(out, "service account", str(r, "service_account"));
            row(out, "access policy", str(r, "policy_revision"));
            disk_rows(out, r);
            break;
        case Command::auto_attach:
            out << str(r, "path") << '\n';
            row(out, "disk",
                str(r, "disk_id") + (flag(r, "already_attached") ? ": already attached from this device, unchanged"
                                                                 : ": attached in " + str(r, "elapsed_ms") + " ms"));
            row(out, "device",
                str(r, "backing_device") + " (" + str(r, "devno") + ", serial " + str(r, "serial") + ")");
            row(out, "provisioning entry", str(r, "provisioning_entry"));
            row(out, "service account", str(r, "service_account"));
            row(out, "access policy", str(r, "policy_revision"));
            break;
        case Command::auto_detach:
        case Command::detach:
            if (flag(r, "forced")) {
                out << "Forced detach of disk " << str(r, "disk_id") << ": " << str(r, "path")
                    << " now fails every I/O (dm-error) and the key has left the kernel; "
                    << (flag(r, "deferred") ? "the mapping is removed when its last user closes it"
                                            : "the mapping is removed")
                    << '\n';
                if (r.contains("holders") && r.at("holders").is_array() && !r.at("holders").empty()) {
                    row(out, "holders", list_text(r, "holders"));
                }
            } else {
                out << "Detached disk " << str(r, "disk_id") << ": removed " << str(r, "path") << " (was on "
                    << str(r, "backing_device") << ")\n";
            }
            break;
        case Command::list:
            disk_table(out, r.contains("disks") ? r.at("disks") : nlohmann::json::array());
            break;
        case Command::copy: {
            const nlohmann::json& src =
                r.contains("source") && r.at("source").is_object() ? r.at("source") : nlohmann::json::object();
            const nlohmann::json& dst =
                r.contains("target") && r.at("target").is_object() ? r.at("target") : nlohmann::json::object();
            out << "Copied encrypted " << str(src, "kind") << " " << str(src, "id") << " to encrypted "
                << str(dst, "kind") << " " << str(dst, "id") << " on " << str(dst, "device") << '\n';
            row(out, "LUKS2 UUID", str(dst, "luks_uuid") + " (the source's: " + str(src, "luks_uuid") + ")");
            const nlohmann::json& k =
                r.contains("key") && r.at("key").is_object() ? r.at("key") : nlohmann::json::object();
            row(out, "key",
                str(k, "provider") + ":" + str(k, "id") + " version " + str(k, "version") +
                    ", the source's DEK, re-wrapped for " + str(dst, "id"));
            row(out, "disk type", str(dst, "type"));
            row(out, "service account", str(dst, "service_account") + " (for user " + str(r, "user") + ")");
            row(out, "access policy", str(r, "policy_revision"));
            row(out, "copied",
                bytes_text(num(r, "copied_bytes")) + " in " + str(r, "elapsed_ms") + " ms" +
                    (num(r, "resumed_from") > 0 ? ", resumed at byte " + str(r, "resumed_from") : ""));
            if (num(r, "zeroed_bytes") > 0) {
                row(out, "zeroed", bytes_text(num(r, "zeroed_bytes")) + " beyond the source's size");
            }
            break;
        }
        case Command::key: {
            const std::string action = str(r, "action");
            if (action == "list") {
                key_table(out, r.contains("keys") ? r.at("keys") : nlohmann::json::array());
                if (num(r, "hidden") > 0) {
                    out << "(" << str(r, "hidden") << " more key(s) not shown: user " << str(r, "user")
                        << " lacks kms.keys.list on them)\n";
                }
                break;
            }
            const nlohmann::json& k =
                r.contains("key") && r.at("key").is_object() ? r.at("key") : nlohmann::json::object();
            const std::string spec = str(k, "provider") + ":" + str(k, "id");
            if (action == "destroy") {
                out << "Destroyed key " << spec << " (" << str(k, "provider_type") << "): every version\n";
                if (r.value("forced", false)) {
                    row(out, "forced", "disks attached on this host used it: " + list_text(r, "attached_disks"));
                }
            } else {
                const std::string done = action == "create"    ? "Created"
                                         : action == "rotate"  ? "Rotated"
                                         : action == "disable" ? "Disabled"
                                                               : "Enabled";
                out << done << " key " << spec << " (" << str(k, "provider_type") << ")\n";
                row(out, "primary", "version " + str(k, "primary"));
                row(out, "versions", versions_text(k));
            }
            row(out, "user", str(r, "user"));
            row(out, "access policy", str(r, "policy_revision"));
            break;
        }
        case Command::audit:
            print_audit_events(r, out);
            print_audit_end(r, r.contains("events") && r.at("events").is_array() && !r.at("events").empty(), out);
            break;
        case Command::check_keys: {
            out << "Checked " << (r.contains("keys") && r.at("keys").is_array() ? r.at("keys").size() : 0)
                << " key(s) at " << str(r, "time") << " in " << str(r, "elapsed_ms") << " ms\n";
            if (r.contains("keys") && r.at("keys").is_array()) {
                for (const nlohmann::json& k : r.at("keys")) {
                    std::string states;
                    if (k.contains("states") && k.at("states").is_object()) {
                        for (const auto& [version, st] : k.at("states").items()) {
                            states += (states.empty() ? "" : ", ") + sanitize(version) + " " + text(st);
                        }
                    }
                    row(out, str(k, "provider") + ":" + str(k, "id"),
                        str(k, "mode") + "; disks " + list_text(k, "disks") + "; " +
                            (k.at("error").is_string() ? "KMS did not answer (nothing changed): " + str(k, "error")
                                                       : "versions " + states));
                }
            }
            row(out, "revoked", list_text(r, "revoked"));
            row(out, "restored", list_text(r, "restored"));
            if (r.contains("failed") && r.at("failed").is_array()) {
                for (const nlohmann::json& f : r.at("failed")) {
                    row(out, "failed", str(f, "disk_id") + ": " + str(f, "error"));
                }
            }
            break;
        }
        case Command::rewrap: {
            auto side = [](const nlohmann::json& k) {
                return str(k, "provider") + ":" + str(k, "id") + " version " + str(k, "version") +
                       " (associated data version " + str(k, "ad_version") + ")";
            };
            out << "Re-wrapped the secret of disk " << str(r, "disk_id") << " on " << str(r, "device") << '\n';
            row(out, "from", r.contains("from") && r.at("from").is_object() ? side(r.at("from")) : "-");
            row(out, "to", r.contains("to") && r.at("to").is_object() ? side(r.at("to")) : "-");
            row(out, "service account", str(r, "service_account") + " (for user " + str(r, "user") + ")");
            row(out, "access policy", str(r, "policy_revision"));
            break;
        }
        case Command::import_image: {
            const nlohmann::json& src =
                r.contains("source") && r.at("source").is_object() ? r.at("source") : nlohmann::json::object();
            out << "Imported " << str(src, "path") << " (" << bytes_text(num(src, "bytes")) << ") into encrypted disk "
                << str(r, "disk_id") << " on " << str(r, "device") << " (" << str(r, "type") << ")\n";
            row(out, "LUKS2 UUID", str(r, "luks_uuid"));
            row(out, "key", key_text(r));
            row(out, "service account", str(r, "service_account") + " (for user " + str(r, "user") + ")");
            row(out, "access policy", str(r, "policy_revision"));
            row(out, "encrypted",
                bytes_text(num(r, "encrypted_bytes")) + " through the kernel target in " + str(r, "copy_ms") + " ms");
            row(out, "zeroed", bytes_text(num(r, "zeroed_bytes")) + " (all-zero runs and the rest of the disk)");
            row(out, "usable size", bytes_text(num(r, "usable_size")));
            break;
        }
        case Command::decrypt:
            break;  // always refused
        case Command::status:
            if (r.contains("disk_id")) {
                out << "Disk " << str(r, "disk_id") << " is attached as " << str(r, "path") << '\n';
                disk_rows(out, r);
                if (const auto it = r.find("counters"); it != r.end() && it->is_object()) {
                    std::string c;
                    for (const auto& [k, v] : it->items()) {
                        c += (c.empty() ? "" : " ") + sanitize(k) + ":" + text(v);
                    }
                    row(out, "counters", c.empty() ? "-" : c);
                }
                break;
            }
            out << str(r, "agent") << " " << str(r, "version") << " (protocol " << str(r, "protocol") << ")\n";
            row(out, "pid", str(r, "pid"));
            row(out, "uptime", str(r, "uptime_s") + " s");
            row(out, "dumpable", str(r, "dumpable"));
            row(out, "config", str(r, "config"));
            row(out, "default key", str(r, "default_key"));
            if (const auto p = r.find("policy"); p != r.end() && p->is_object()) {
                row(out, "access policy",
                    p->contains("source") && p->at("source").is_string()
                        ? str(*p, "source") + ", revision " + str(*p, "revision") + ", " + str(*p, "bindings") +
                              " bindings"
                        : "none: every format, attach and verify is denied");
            }
            row(out, "attached disks",
                r.contains("attached") && !r.at("attached").is_null() ? str(r, "attached")
                                                                      : "- (device-mapper not available)");
            if (const auto it = r.find("providers"); it != r.end() && it->is_array()) {
                for (const auto& p : *it) {
                    row(out, "provider", str(p, "name") + " (" + str(p, "type") + ")");
                }
            }
            break;
    }
}

}  // namespace diskcrypt::cli
