// Fuzz target: the access policy parser (TOML, then every section's checks),
// and a decision on whatever parsed: a few fixed subjects and resources,
// whose messages must stay printable. diskcrypt::Error is the expected
// refusal; anything else is a finding.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/error.hpp"
#include "agent/policy/policy.hpp"
#include "agent/text.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using namespace diskcrypt;
    using namespace diskcrypt::policy;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const Policy p = Policy::parse(text, "fuzz.toml");
        const std::array subjects{Subject::parse("serviceAccount:vm-disks"), Subject::parse("userAccount:alice"),
                                  Subject::parse("group:storage-admins")};
        const Resource key = Resource::parse("key:hsm:disk-key");
        const Resource account = Resource::parse("serviceAccount:vm-disks");
        for (const Subject& s : subjects) {
            for (const Permission perm : all_permissions()) {
                const Decision d = p.check(s, perm, permission_resource(perm) == ResourceKind::key ? key : account);
                if (!is_printable(d.message) || !is_printable(d.hint) || d.revision != p.revision()) {
                    std::abort();
                }
            }
        }
    } catch (const Error&) {
        // The agent refuses the file with FILE:LINE: reason.
    }
    return 0;
}
