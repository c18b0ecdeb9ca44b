// Strict base64 (RFC 4648 standard alphabet, padded, no whitespace, canonical)
// and lowercase hex, for the token and the tests.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace diskcrypt {

std::string base64_encode(std::span<const std::uint8_t> bytes);

// Decodes canonical base64 only: length a multiple of 4, only A-Z a-z 0-9 + /,
// '=' only as final padding, unused trailing bits zero (so the text is exactly
// what base64_encode would produce). Anything else gives std::nullopt.
std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text);

std::string hex_encode(std::span<const std::uint8_t> bytes);

}  // namespace diskcrypt
