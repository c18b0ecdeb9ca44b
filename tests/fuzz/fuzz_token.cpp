// Fuzz target: the diskcrypt-kms token decoder (the token's JSON is the
// storage's, not ours). A token that decodes must encode to text that decodes
// to the same token. diskcrypt::Error is the expected refusal; anything else
// is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/disk/token.hpp"
#include "agent/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using namespace diskcrypt;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    Token token;
    try {
        token = decode_token(text);
    } catch (const Error&) {
        return 0;
    }
    const std::string once = encode_token(token);
    const std::string twice = encode_token(decode_token(once));  // an Error here escapes: a finding
    if (once != twice) {
        std::abort();  // the round trip changed the token
    }
    return 0;
}
