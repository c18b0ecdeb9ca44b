#include "agent/encoding.hpp"

#include <openssl/evp.h>

namespace diskcrypt {

namespace {

bool is_b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

}  // namespace

std::string base64_encode(std::span<const std::uint8_t> bytes)
{
    std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int n =
        EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), bytes.data(), static_cast<int>(bytes.size()));
    out.resize(n > 0 ? static_cast<std::size_t>(n) : 0U);
    return out;
}

std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text)
{
    if (text.size() % 4 != 0) {
        return std::nullopt;
    }
    std::size_t pad = 0;
    if (!text.empty() && text.back() == '=') {
        pad = (text.size() >= 2 && text[text.size() - 2] == '=') ? 2 : 1;
    }
    for (std::size_t i = 0; i < text.size() - pad; ++i) {
        if (!is_b64_char(text[i])) {
            return std::nullopt;
        }
    }
    std::vector<std::uint8_t> out(text.size() / 4 * 3);
    if (!text.empty()) {
        const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()),
                                      static_cast<int>(text.size()));
        if (n < 0 || static_cast<std::size_t>(n) != out.size()) {
            return std::nullopt;
        }
    }
    out.resize(out.size() - pad);
    // Canonical form only: non-zero unused bits would decode to the same bytes.
    if (base64_encode(out) != text) {
        return std::nullopt;
    }
    return out;
}

std::string hex_encode(std::span<const std::uint8_t> bytes)
{
    static constexpr std::string_view kDigits = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (const std::uint8_t b : bytes) {
        out += kDigits[b >> 4U];
        out += kDigits[b & 0xFU];
    }
    return out;
}

}  // namespace diskcrypt
