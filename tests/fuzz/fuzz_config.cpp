// Fuzz target: the agent's configuration parser (TOML, then every section's
// checks and the KMS providers' options; no PKCS#11 module is loaded while
// parsing). diskcrypt::Error is the expected refusal; anything else is a
// finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "agent/config.hpp"
#include "agent/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using namespace diskcrypt;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        (void)parse_config(text, "fuzz.toml");
    } catch (const Error&) {
        // The agent refuses to start with FILE:LINE: reason.
    }
    return 0;
}
