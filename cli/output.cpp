#include "cli/output.hpp"

#include <array>
#include <iomanip>
#include <sstream>

namespace diskcrypt::cli {

namespace {

using nlohmann::json;

std::string str(const json& j, const char* key)
{
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        return "-";
    }
    return it->is_string() ? it->get<std::string>() : it->dump();
}

unsigned long long num(const json& j, const char* key)
{
    const auto it = j.find(key);
    return (it != j.end() && it->is_number_unsigned()) ? it->get<unsigned long long>() : 0ULL;
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

}  // namespace

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
    err << "diskcrypt: error: " << message << '\n';
    if (!hint.empty()) {
        err << "diskcrypt: hint: " << hint << '\n';
    }
    if (json) {
        nlohmann::json e = {{"code", errc_name(code)}, {"exit", exit_status(code)}, {"message", message}};
        if (!hint.empty()) {
            e["hint"] = hint;
        }
        out << nlohmann::json{{"ok", false}, {"error", e}}.dump(2) << '\n';
    }
}

void print_result(Command command, const json& r, bool json, std::ostream& out)
{
    if (json) {
        out << r.dump(2) << '\n';
        return;
    }
    switch (command) {
        case Command::format: {
            out << "Formatted " << str(r, "device") << " as diskcrypt disk " << str(r, "disk_id") << " ("
                << str(r, "type") << ")\n";
            row(out, "LUKS2 UUID", str(r, "luks_uuid"));
            row(out, "key", key_text(r));
            row(out, "cipher", str(r, "cipher") + ", " + str(r, "volume_key_bits") + "-bit volume key");
            row(out, "sector size", str(r, "sector_size") + " bytes");
            row(out, "device size", bytes_text(num(r, "device_size")));
            row(out, "overhead", bytes_text(num(r, "overhead")) + ": the header, data starts there");
            row(out, "usable size", bytes_text(num(r, "usable_size")));
            if (const auto it = r.find("destroyed"); it != r.end() && it->is_array()) {
                for (const auto& d : *it) {
                    row(out, "destroyed", d.is_string() ? d.get<std::string>() : d.dump());
                }
            }
            break;
        }
        case Command::verify:
            out << "Disk " << str(r, "disk_id") << " on " << str(r, "device") << " opens on this host\n";
            row(out, "LUKS2 UUID", str(r, "luks_uuid"));
            row(out, "key", key_text(r));
            row(out, "keyslot", str(r, "keyslot") + " (" + str(r, "volume_key_bits") + "-bit volume key)");
            row(out, "sector size", str(r, "sector_size") + " bytes");
            row(out, "data offset", bytes_text(num(r, "data_offset")));
            break;
        case Command::status:
            out << str(r, "agent") << " " << str(r, "version") << " (protocol " << str(r, "protocol") << ")\n";
            row(out, "pid", str(r, "pid"));
            row(out, "uptime", str(r, "uptime_s") + " s");
            row(out, "dumpable", str(r, "dumpable"));
            row(out, "config", str(r, "config"));
            row(out, "default key", str(r, "default_key"));
            if (const auto it = r.find("providers"); it != r.end() && it->is_array()) {
                for (const auto& p : *it) {
                    row(out, "provider", str(p, "name") + " (" + str(p, "type") + ")");
                }
            }
            break;
    }
}

}  // namespace diskcrypt::cli
