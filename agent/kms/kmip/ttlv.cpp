#include "agent/kms/kmip/ttlv.hpp"

#include <algorithm>
#include <array>

namespace diskcrypt::kms::kmip {

namespace {

std::size_t padded(std::size_t n) { return (n + 7) & ~static_cast<std::size_t>(7); }

// The length a fixed-size type must announce; 0 for variable-length types.
std::size_t fixed_length(Type type)
{
    switch (type) {
        case Type::integer:
        case Type::enumeration:
        case Type::interval:
            return 4;
        case Type::long_integer:
        case Type::boolean:
        case Type::date_time:
            return 8;
        default:
            return 0;
    }
}

bool known_type(std::uint8_t t) { return t >= 0x01 && t <= 0x0a; }

std::uint64_t read_be(std::span<const std::uint8_t> b)
{
    std::uint64_t v = 0;
    for (const std::uint8_t x : b) {
        v = (v << 8) | x;
    }
    return v;
}

void write_be(std::span<std::uint8_t> out, std::uint64_t v)
{
    for (std::size_t i = out.size(); i > 0; --i) {
        out[i - 1] = static_cast<std::uint8_t>(v & 0xff);
        v >>= 8;
    }
}

// The encoders and the decoder recurse into structures: a TTLV message is a
// tree. Decoding bounds the depth (Limits::max_depth); encoding only sees
// the requests built in messages.cpp (depth 4).
std::size_t value_length(const Item& item)  // NOLINT(misc-no-recursion): bounded, see above
{
    if (item.type == Type::structure) {
        std::size_t n = 0;
        for (const Item& c : item.children) {
            n += encoded_size(c);
        }
        return n;
    }
    const std::size_t fixed = fixed_length(item.type);
    return fixed != 0 ? fixed : item.value.size();
}

std::size_t encode_at(const Item& item, std::span<std::uint8_t> out)  // NOLINT(misc-no-recursion)
{
    const std::size_t len = value_length(item);
    if (len > 0xffffffffU) {
        throw DecodeError("KMIP item " + tag_hex(item.tag) + " is too long to encode");
    }
    write_be(out.subspan(0, 3), item.tag);
    out[3] = static_cast<std::uint8_t>(item.type);
    write_be(out.subspan(4, 4), len);
    std::span<std::uint8_t> v = out.subspan(kItemHeader);
    switch (item.type) {
        case Type::structure: {
            std::size_t at = 0;
            for (const Item& c : item.children) {
                at += encode_at(c, v.subspan(at));
            }
            break;
        }
        case Type::integer:
        case Type::enumeration:
        case Type::interval:
            write_be(v.subspan(0, 4), static_cast<std::uint32_t>(item.number));
            break;
        case Type::long_integer:
        case Type::boolean:
        case Type::date_time:
            write_be(v.subspan(0, 8), static_cast<std::uint64_t>(item.number));
            break;
        default:
            std::copy(item.value.begin(), item.value.end(), v.begin());
            break;
    }
    const std::size_t total = kItemHeader + padded(len);
    std::fill(out.begin() + static_cast<std::ptrdiff_t>(kItemHeader + len),
              out.begin() + static_cast<std::ptrdiff_t>(total), std::uint8_t{0});
    return total;
}

class Decoder {
public:
    Decoder(std::span<const std::uint8_t> msg, const Limits& limits) : msg_(msg), limits_(limits) {}

    Item item(std::size_t at, std::size_t end, std::size_t depth)  // NOLINT(misc-no-recursion): max_depth
    {
        if (++items_ > limits_.max_items) {
            fail(at, 0, "more than " + std::to_string(limits_.max_items) + " items in one message");
        }
        if (end - at < kItemHeader) {
            fail(at, 0, "truncated item header (" + std::to_string(end - at) + " bytes left)");
        }
        Item it;
        it.tag = static_cast<std::uint32_t>(read_be(msg_.subspan(at, 3)));
        const std::uint8_t t = msg_[at + 3];
        const std::size_t len = read_be(msg_.subspan(at + 4, 4));
        if ((it.tag >> 16) != 0x42 && (it.tag >> 16) != 0x54) {
            fail(at, it.tag, "not a KMIP tag (tags start with 42 or 54)");
        }
        if (!known_type(t)) {
            fail(at, it.tag, "unknown item type 0x" + hex2(t));
        }
        it.type = static_cast<Type>(t);
        const std::size_t room = end - at - kItemHeader;
        if (len > room || padded(len) > room) {
            fail(at, it.tag,
                 "length " + std::to_string(len) + " runs past the end (" + std::to_string(room) + " bytes left)");
        }
        const std::size_t fixed = fixed_length(it.type);
        if (fixed != 0 && len != fixed) {
            fail(at, it.tag,
                 std::string(type_name(it.type)) + " of length " + std::to_string(len) + " (must be " +
                     std::to_string(fixed) + ")");
        }
        const std::size_t v = at + kItemHeader;
        for (std::size_t i = v + len; i < v + padded(len); ++i) {
            if (msg_[i] != 0) {
                fail(at, it.tag, "non-zero padding");
            }
        }
        switch (it.type) {
            case Type::structure: {
                if (depth >= limits_.max_depth) {
                    fail(at, it.tag, "structures nested deeper than " + std::to_string(limits_.max_depth));
                }
                std::size_t c = v;
                while (c < v + len) {
                    it.children.push_back(item(c, v + len, depth + 1));
                    c += kItemHeader + padded(value_length_at(c));
                }
                break;
            }
            case Type::integer:
            case Type::enumeration:
            case Type::interval: {
                const auto raw = static_cast<std::uint32_t>(read_be(msg_.subspan(v, 4)));
                it.number = it.type == Type::integer ? static_cast<std::int32_t>(raw) : static_cast<std::int64_t>(raw);
                break;
            }
            case Type::long_integer:
            case Type::date_time:
                it.number = static_cast<std::int64_t>(read_be(msg_.subspan(v, 8)));
                break;
            case Type::boolean: {
                const std::uint64_t b = read_be(msg_.subspan(v, 8));
                if (b > 1) {
                    fail(at, it.tag, "boolean that is neither 0 nor 1");
                }
                it.number = static_cast<std::int64_t>(b);
                break;
            }
            case Type::big_integer:
                if (len % 8 != 0) {
                    fail(at, it.tag, "big integer of length " + std::to_string(len) + " (a multiple of 8)");
                }
                it.value = msg_.subspan(v, len);
                break;
            default:
                it.value = msg_.subspan(v, len);
                break;
        }
        return it;
    }

private:
    [[nodiscard]] std::size_t value_length_at(std::size_t at) const { return read_be(msg_.subspan(at + 4, 4)); }

    static std::string hex2(std::uint8_t b)
    {
        static constexpr std::string_view kDigits = "0123456789abcdef";
        return {kDigits[b >> 4], kDigits[b & 0x0f]};
    }

    [[noreturn]] static void fail(std::size_t at, std::uint32_t t, const std::string& why)
    {
        throw DecodeError("malformed KMIP message at byte " + std::to_string(at) +
                          (t != 0 ? " (item " + tag_hex(t) + ")" : "") + ": " + why);
    }

    std::span<const std::uint8_t> msg_;
    const Limits& limits_;
    std::size_t items_ = 0;
};

}  // namespace

std::string_view type_name(Type type)
{
    switch (type) {
        case Type::structure:
            return "structure";
        case Type::integer:
            return "integer";
        case Type::long_integer:
            return "long integer";
        case Type::big_integer:
            return "big integer";
        case Type::enumeration:
            return "enumeration";
        case Type::boolean:
            return "boolean";
        case Type::text:
            return "text string";
        case Type::bytes:
            return "byte string";
        case Type::date_time:
            return "date-time";
        case Type::interval:
            return "interval";
    }
    return "unknown type";
}

std::string tag_hex(std::uint32_t t)
{
    static constexpr std::string_view kDigits = "0123456789ABCDEF";
    std::string s = "0x";
    for (int shift = 20; shift >= 0; shift -= 4) {
        s += kDigits[(t >> static_cast<unsigned>(shift)) & 0x0fU];
    }
    return s;
}

Item Item::structure(std::uint32_t t, std::vector<Item> children)
{
    Item i;
    i.tag = t;
    i.type = Type::structure;
    i.children = std::move(children);
    return i;
}

Item Item::integer(std::uint32_t t, std::int32_t v)
{
    Item i;
    i.tag = t;
    i.type = Type::integer;
    i.number = v;
    return i;
}

Item Item::long_integer(std::uint32_t t, std::int64_t v)
{
    Item i;
    i.tag = t;
    i.type = Type::long_integer;
    i.number = v;
    return i;
}

Item Item::enumeration(std::uint32_t t, std::uint32_t v)
{
    Item i;
    i.tag = t;
    i.type = Type::enumeration;
    i.number = v;
    return i;
}

Item Item::boolean(std::uint32_t t, bool v)
{
    Item i;
    i.tag = t;
    i.type = Type::boolean;
    i.number = v ? 1 : 0;
    return i;
}

Item Item::date_time(std::uint32_t t, std::int64_t seconds)
{
    Item i;
    i.tag = t;
    i.type = Type::date_time;
    i.number = seconds;
    return i;
}

Item Item::text(std::uint32_t t, std::string_view v)
{
    Item i;
    i.tag = t;
    i.type = Type::text;
    i.value = {reinterpret_cast<const std::uint8_t*>(v.data()), v.size()};
    return i;
}

Item Item::bytes(std::uint32_t t, std::span<const std::uint8_t> v)
{
    Item i;
    i.tag = t;
    i.type = Type::bytes;
    i.value = v;
    return i;
}

const Item* Item::find(std::uint32_t child_tag) const
{
    for (const Item& c : children) {
        if (c.tag == child_tag) {
            return &c;
        }
    }
    return nullptr;
}

std::vector<const Item*> Item::find_all(std::uint32_t child_tag) const
{
    std::vector<const Item*> out;
    for (const Item& c : children) {
        if (c.tag == child_tag) {
            out.push_back(&c);
        }
    }
    return out;
}

const Item* Item::get_optional(std::uint32_t child_tag, Type child_type) const
{
    if (type != Type::structure) {
        throw DecodeError("KMIP item " + tag_hex(tag) + " is a " + std::string(type_name(type)) +
                          ", not a structure holding " + tag_hex(child_tag));
    }
    const Item* c = find(child_tag);
    if (c != nullptr && c->type != child_type) {
        throw DecodeError("KMIP item " + tag_hex(child_tag) + " in " + tag_hex(tag) + " is a " +
                          std::string(type_name(c->type)) + ", expected a " + std::string(type_name(child_type)));
    }
    return c;
}

const Item& Item::get(std::uint32_t child_tag, Type child_type) const
{
    const Item* c = get_optional(child_tag, child_type);
    if (c == nullptr) {
        throw DecodeError("KMIP item " + tag_hex(tag) + " lacks the required item " + tag_hex(child_tag));
    }
    return *c;
}

std::string_view Item::as_text() const { return {reinterpret_cast<const char*>(value.data()), value.size()}; }

std::size_t encoded_size(const Item& item)  // NOLINT(misc-no-recursion)
{
    return kItemHeader + padded(value_length(item));
}

SecureBuffer encode(const Item& item)
{
    SecureBuffer out(encoded_size(item));
    encode_at(item, out.span());
    return out;
}

Item decode(std::span<const std::uint8_t> message, const Limits& limits)
{
    if (message.size() > limits.max_message) {
        throw DecodeError("KMIP message of " + std::to_string(message.size()) + " bytes exceeds the limit of " +
                          std::to_string(limits.max_message));
    }
    Decoder d(message, limits);
    Item root = d.item(0, message.size(), 0);
    if (encoded_size(root) != message.size()) {
        throw DecodeError("malformed KMIP message: " + std::to_string(message.size() - encoded_size(root)) +
                          " bytes after the first item");
    }
    return root;
}

std::size_t announced_length(std::span<const std::uint8_t, 8> header)
{
    return static_cast<std::size_t>(read_be(std::span<const std::uint8_t>(header).subspan(4, 4)));
}

}  // namespace diskcrypt::kms::kmip
