#include "agent/text.hpp"

#include <algorithm>

namespace diskcrypt {

namespace {

bool plain(unsigned char c) { return c >= 0x20 && c <= 0x7e && c != '\\'; }

}  // namespace

std::string printable(std::string_view text, std::size_t max_bytes)
{
    static constexpr std::string_view kHex = "0123456789abcdef";
    const std::string_view shown = text.substr(0, max_bytes);
    std::string out;
    out.reserve(shown.size() + 16);
    for (const char ch : shown) {
        const auto c = static_cast<unsigned char>(ch);
        if (plain(c)) {
            out.push_back(ch);
        } else if (c == '\\') {
            out += "\\\\";
        } else {
            out += "\\x";
            out.push_back(kHex[c >> 4U]);
            out.push_back(kHex[c & 0xFU]);
        }
    }
    if (shown.size() < text.size()) {
        out += "...(" + std::to_string(text.size()) + " bytes)";
    }
    return out;
}

std::string sanitize(std::string_view text)
{
    static constexpr std::string_view kHex = "0123456789abcdef";
    std::string out;
    out.reserve(text.size());
    for (const char ch : text) {
        const auto c = static_cast<unsigned char>(ch);
        if (c >= 0x20 && c <= 0x7e) {
            out.push_back(ch);
        } else {
            out += "\\x";
            out.push_back(kHex[c >> 4U]);
            out.push_back(kHex[c & 0xFU]);
        }
    }
    return out;
}

bool is_printable(std::string_view text)
{
    return std::all_of(text.begin(), text.end(), [](char ch) { return plain(static_cast<unsigned char>(ch)); });
}

}  // namespace diskcrypt
