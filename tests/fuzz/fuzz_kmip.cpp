// Fuzz target: what a KMIP server sends back (agent/kms/kmip): the TTLV
// decoder, then the response parser for each operation diskcrypt uses
// (Encrypt, Decrypt, Get Attributes, Locate, and the key lifecycle's Create,
// Activate, Revoke, Destroy) and the payload parsers, as the provider calls
// them, and map_result of each refusal with each object state. DecodeError
// is the expected refusal; its message must be printable ASCII. Anything
// else (a crash, an exception of another type, unbounded work) is a finding.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>

#include "agent/kms/kmip/kmip.hpp"
#include "agent/kms/kmip/messages.hpp"
#include "agent/kms/kmip/ttlv.hpp"

namespace {

using namespace diskcrypt::kms::kmip;

bool ascii_only(std::string_view s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

void check(std::string_view text)
{
    if (!ascii_only(text)) {
        std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::span<const std::uint8_t> message(data, size);
    Item root;
    try {
        root = decode(message);
    } catch (const DecodeError& e) {
        check(e.what());
        return 0;
    }
    constexpr std::array ops{Operation::locate, Operation::get_attributes, Operation::encrypt, Operation::decrypt,
                             Operation::create, Operation::activate,       Operation::revoke,  Operation::destroy};
    constexpr std::array states{KeyState::unknown,
                                KeyState::pre_active,
                                KeyState::active,
                                KeyState::deactivated,
                                KeyState::compromised,
                                KeyState::destroyed,
                                KeyState::destroyed_compromised};
    for (const Operation op : ops) {
        try {
            const Response r = parse_response(root, op);
            check(r.message);
            if (r.status != ResultStatus::success) {
                const Context ctx{"kms", "127.0.0.1:5696", "agent", "key", "1"};
                for (const KeyState state : states) {
                    const diskcrypt::Error e = map_result(r, ctx, state);
                    check(e.what());
                    check(e.hint());
                }
                continue;
            }
            switch (op) {
                case Operation::locate:
                    for (const auto& uid : parse_locate(r)) {
                        check(uid);
                    }
                    break;
                case Operation::get_attributes:
                    for (const auto& name : parse_get_attributes(r).names) {
                        check(name);
                    }
                    break;
                case Operation::create:
                    check(parse_create(r));
                    break;
                case Operation::activate:
                case Operation::revoke:
                case Operation::destroy:
                    parse_unique_identifier(r, "1");
                    break;
                case Operation::encrypt:
                    (void)parse_encrypt(r);
                    break;
                case Operation::decrypt:
                    (void)parse_decrypt(r);
                    break;
            }
        } catch (const DecodeError& e) {
            check(e.what());
        }
    }
    return 0;
}
