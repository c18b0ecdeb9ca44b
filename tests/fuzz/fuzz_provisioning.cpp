// Fuzz target: a provisioning entry of the auto-attach folder (TOML, then
// every key's checks), and the serial check the agent applies to what a
// device reports in sysfs. diskcrypt::Error is the expected refusal, and its
// message must be printable; anything else is a finding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/error.hpp"
#include "agent/ops/auto_attach.hpp"
#include "agent/text.hpp"

namespace {

// Printable ASCII: what every message is (escapes included).
bool ascii_text(std::string_view s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using namespace diskcrypt;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const ProvisioningEntry e = parse_provisioning_entry(text, "/etc/diskcrypt/disks.d/fuzz.toml");
        if (e.serial.empty() || e.serial.size() > kMaxSerialBytes || !is_printable(e.serial) ||
            e.claims.disk_id.empty() || !e.claims.device.empty()) {
            std::abort();
        }
    } catch (const Error& err) {
        if (!ascii_text(err.what())) {
            std::abort();
        }
    }
    try {
        const std::string serial = validate_serial(text);
        if (serial.empty() || serial.size() > kMaxSerialBytes || !is_printable(serial)) {
            std::abort();
        }
    } catch (const Error& err) {
        if (!ascii_text(err.what())) {
            std::abort();
        }
    }
    return 0;
}
