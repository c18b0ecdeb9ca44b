// The KMIP TTLV codec and messages (agent/kms/kmip/ttlv.*, messages.*) and the
// mapping of KMIP results to errors (kmip.hpp): no server involved.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "agent/error.hpp"
#include "agent/kms/kmip/kmip.hpp"
#include "agent/kms/kmip/messages.hpp"
#include "agent/kms/kmip/transport.hpp"
#include "agent/kms/kmip/ttlv.hpp"
#include "agent/text.hpp"

// A named namespace of its own: the unity build puts this file beside others,
// and the using-directives must not reach them.
namespace kmip_codec_test {

using namespace diskcrypt;
using namespace diskcrypt::kms::kmip;

namespace {

bool ascii_only(std::string_view s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

std::vector<std::uint8_t> bytes_of(const SecureBuffer& b) { return {b.data(), b.data() + b.size()}; }

std::vector<std::uint8_t> encoded(const Item& item) { return bytes_of(encode(item)); }

// A response message as a server would send it.
std::vector<std::uint8_t> response(Operation op, std::uint32_t status, std::vector<Item> payload,
                                   std::optional<std::uint32_t> reason = std::nullopt, std::string_view message = "",
                                   std::int32_t major = 1)
{
    std::vector<Item> batch;
    batch.push_back(Item::enumeration(tag::operation, static_cast<std::uint32_t>(op)));
    batch.push_back(Item::enumeration(tag::result_status, status));
    if (reason) {
        batch.push_back(Item::enumeration(tag::result_reason, *reason));
    }
    if (!message.empty()) {
        batch.push_back(Item::text(tag::result_message, message));
    }
    if (status == 0) {
        batch.push_back(Item::structure(tag::response_payload, std::move(payload)));
    }
    return encoded(Item::structure(
        tag::response_message,
        {Item::structure(tag::response_header,
                         {Item::structure(tag::protocol_version, {Item::integer(tag::protocol_version_major, major),
                                                                  Item::integer(tag::protocol_version_minor, 4)}),
                          Item::date_time(tag::time_stamp, 1700000000), Item::integer(tag::batch_count, 1)}),
         Item::structure(tag::batch_item, std::move(batch))}));
}

std::vector<std::uint8_t> raw_item(std::uint32_t t, std::uint8_t type, std::uint32_t len,
                                   const std::vector<std::uint8_t>& value)
{
    // Sized once and filled (GCC 12 at -O2 warns, wrongly, about a range insert here).
    std::vector<std::uint8_t> out(8 + value.size());
    out[0] = static_cast<std::uint8_t>(t >> 16U);
    out[1] = static_cast<std::uint8_t>(t >> 8U);
    out[2] = static_cast<std::uint8_t>(t);
    out[3] = type;
    for (std::size_t i = 0; i < 4; ++i) {
        out[4 + i] = static_cast<std::uint8_t>(len >> (8U * (3 - i)));
    }
    std::copy(value.begin(), value.end(), out.begin() + 8);
    return out;
}

std::string decode_error(const std::vector<std::uint8_t>& msg, const Limits& limits = {})
{
    try {
        (void)decode(msg, limits);
    } catch (const DecodeError& e) {
        CHECK(ascii_only(e.what()));
        return e.what();
    }
    return "decoded";
}

}  // namespace

TEST_CASE("ttlv: the specification's example encodings", "[kmip]")
{
    // KMIP 1.4 section 9.1.2 examples.
    CHECK(encoded(Item::integer(0x420020, 8)) ==
          std::vector<std::uint8_t>{0x42, 0x00, 0x20, 0x02, 0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0, 0});
    CHECK(
        encoded(Item::long_integer(0x420020, 123456789000000000)) ==
        std::vector<std::uint8_t>{0x42, 0x00, 0x20, 0x03, 0, 0, 0, 8, 0x01, 0xB6, 0x9B, 0x4B, 0xA5, 0x74, 0x92, 0x00});
    CHECK(encoded(Item::enumeration(0x420020, 255)) ==
          std::vector<std::uint8_t>{0x42, 0x00, 0x20, 0x05, 0, 0, 0, 4, 0, 0, 0, 0xFF, 0, 0, 0, 0});
    CHECK(encoded(Item::boolean(0x420020, true)) ==
          std::vector<std::uint8_t>{0x42, 0x00, 0x20, 0x06, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1});
    CHECK(encoded(Item::text(0x420020, "Hello World")) ==
          std::vector<std::uint8_t>{0x42, 0x00, 0x20, 0x07, 0,   0,   0,   0x0B, 'H', 'e', 'l', 'l',
                                    'o',  ' ',  'W',  'o',  'r', 'l', 'd', 0,    0,   0,   0,   0});
    const std::array<std::uint8_t, 3> b{1, 2, 3};
    CHECK(encoded(Item::bytes(0x420020, b)) ==
          std::vector<std::uint8_t>{0x42, 0x00, 0x20, 0x08, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0});
    CHECK(encoded(Item::structure(0x420020, {Item::enumeration(0x420004, 254), Item::integer(0x420005, 255)})) ==
          std::vector<std::uint8_t>{0x42, 0x00, 0x20, 0x01, 0, 0,    0, 0x20, 0x42, 0x00, 0x04, 0x05, 0,    0,
                                    0,    4,    0,    0,    0, 0xFE, 0, 0,    0,    0,    0x42, 0x00, 0x05, 0x02,
                                    0,    0,    0,    4,    0, 0,    0, 0xFF, 0,    0,    0,    0});
}

TEST_CASE("ttlv: every type decodes back to what was encoded", "[kmip]")
{
    const std::array<std::uint8_t, 5> blob{9, 8, 7, 6, 5};
    const auto msg = encoded(Item::structure(
        tag::request_payload,
        {Item::integer(tag::batch_count, -2), Item::long_integer(tag::time_stamp, -5), Item::enumeration(tag::state, 4),
         Item::boolean(tag::name_type, false), Item::text(tag::name_value, "disk-key"), Item::bytes(tag::data, blob),
         Item::date_time(tag::time_stamp, 1700000000), Item::structure(tag::attribute, {})}));
    const Item root = decode(msg);
    REQUIRE(root.children.size() == 8);
    CHECK(root.children[0].number == -2);
    CHECK(root.children[1].number == -5);
    CHECK(root.children[2].as_enum() == 4);
    CHECK(root.children[3].number == 0);
    CHECK(root.children[4].as_text() == "disk-key");
    CHECK(std::vector<std::uint8_t>(root.children[5].value.begin(), root.children[5].value.end()) ==
          std::vector<std::uint8_t>(blob.begin(), blob.end()));
    CHECK(root.children[6].type == Type::date_time);
    CHECK(root.children[7].children.empty());
    CHECK(encoded(root) == msg);
}

TEST_CASE("ttlv: truncated, oversize, deep, wrong-typed and padded input is rejected", "[kmip]")
{
    const auto good = encoded(Item::structure(tag::request_payload, {Item::text(tag::name_value, "abc")}));
    SECTION("every truncation")
    {
        for (std::size_t n = 0; n < good.size(); ++n) {
            const std::vector<std::uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
            CHECK(decode_error(cut) != "decoded");
        }
    }
    SECTION("trailing bytes")
    {
        auto more = good;
        more.insert(more.end(), 8, 0);
        CHECK_THAT(decode_error(more), Catch::Contains("bytes after the first item"));
    }
    SECTION("a length past the end")
    {
        CHECK_THAT(decode_error(raw_item(tag::data, 0x08, 0xFFFFFFF0U, std::vector<std::uint8_t>(8))),
                   Catch::Contains("runs past the end"));
    }
    SECTION("a message over the limit")
    {
        const std::vector<std::uint8_t> big(64 * 1024 + 8, 0);
        CHECK_THAT(decode_error(big), Catch::Contains("exceeds the limit"));
    }
    SECTION("fixed-size types with another length")
    {
        CHECK_THAT(decode_error(raw_item(tag::batch_count, 0x02, 8, std::vector<std::uint8_t>(8))),
                   Catch::Contains("integer of length 8 (must be 4)"));
        CHECK_THAT(decode_error(raw_item(tag::state, 0x05, 2, std::vector<std::uint8_t>(8))),
                   Catch::Contains("must be 4"));
    }
    SECTION("non-zero padding, bad boolean, unknown type, not a KMIP tag")
    {
        CHECK_THAT(decode_error(raw_item(tag::state, 0x05, 4, {0, 0, 0, 1, 0, 0, 0, 7})),
                   Catch::Contains("non-zero padding"));
        CHECK_THAT(decode_error(raw_item(tag::name_type, 0x06, 8, {0, 0, 0, 0, 0, 0, 0, 2})),
                   Catch::Contains("neither 0 nor 1"));
        CHECK_THAT(decode_error(raw_item(tag::state, 0x0B, 0, {})), Catch::Contains("unknown item type 0x0b"));
        CHECK_THAT(decode_error(raw_item(0x110000, 0x01, 0, {})), Catch::Contains("not a KMIP tag"));
        CHECK_THAT(decode_error(raw_item(tag::data, 0x04, 3, {1, 2, 3, 0, 0, 0, 0, 0})),
                   Catch::Contains("big integer"));
    }
    SECTION("nesting deeper than the limit")
    {
        Item deep = Item::text(tag::name_value, "x");
        for (int i = 0; i < 40; ++i) {
            deep = Item::structure(tag::attribute, {deep});
        }
        const auto msg = encoded(deep);
        CHECK_THAT(decode_error(msg), Catch::Contains("nested deeper than 12"));
        Limits wide;
        wide.max_depth = 64;
        CHECK(decode_error(msg, wide) == "decoded");
    }
    SECTION("too many items")
    {
        std::vector<Item> many(600, Item::integer(tag::batch_count, 1));
        CHECK_THAT(decode_error(encoded(Item::structure(tag::request_payload, many))),
                   Catch::Contains("more than 512 items"));
    }
    SECTION("a structure whose children do not fill it")
    {
        // A structure of length 12 holding one empty structure (8) and 4 stray bytes.
        auto msg = raw_item(tag::request_payload, 0x01, 12, raw_item(tag::attribute, 0x01, 0, {}));
        msg.insert(msg.end(), {0, 0, 0, 0, 0, 0, 0, 0});
        CHECK(decode_error(msg) != "decoded");
    }
}

TEST_CASE("kmip messages: requests carry KMIP 1.4, GCM and the caller's fields", "[kmip]")
{
    const std::array<std::uint8_t, 12> iv{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    const std::array<std::uint8_t, 32> secret{0xAA};
    const std::array<std::uint8_t, 5> ad{'d', 'i', 's', 'k', '1'};
    const std::array<std::uint8_t, 16> tagb{0x55};
    const auto check_header = [](const Item& root, Operation op) -> const Item& {
        CHECK(root.tag == tag::request_message);
        const Item& version =
            root.get(tag::request_header, Type::structure).get(tag::protocol_version, Type::structure);
        CHECK(version.get(tag::protocol_version_major, Type::integer).number == 1);
        CHECK(version.get(tag::protocol_version_minor, Type::integer).number == 4);
        const Item& batch = root.get(tag::batch_item, Type::structure);
        CHECK(batch.get(tag::operation, Type::enumeration).as_enum() == static_cast<std::uint32_t>(op));
        return batch.get(tag::request_payload, Type::structure);
    };
    SECTION("Encrypt")
    {
        const SecureBuffer msg = encrypt_request("17", iv, secret, ad);
        const Item root = decode(msg.span());
        const Item& p = check_header(root, Operation::encrypt);
        CHECK(p.get(tag::unique_identifier, Type::text).as_text() == "17");
        const Item& cp = p.get(tag::cryptographic_parameters, Type::structure);
        CHECK(cp.get(tag::block_cipher_mode, Type::enumeration).as_enum() == kModeGcm);
        CHECK(cp.get(tag::cryptographic_algorithm, Type::enumeration).as_enum() == kAlgorithmAes);
        CHECK(cp.get(tag::tag_length, Type::integer).number == 16);
        CHECK(p.get(tag::data, Type::bytes).value.size() == 32);
        CHECK(p.get(tag::iv_counter_nonce, Type::bytes).value.size() == 12);
        CHECK(p.get(tag::authenticated_encryption_additional_data, Type::bytes).as_text() == "disk1");
        CHECK(p.find(tag::authenticated_encryption_tag) == nullptr);
    }
    SECTION("Decrypt")
    {
        const SecureBuffer msg = decrypt_request("17", iv, secret, ad, tagb);
        const Item root = decode(msg.span());
        const Item& p = check_header(root, Operation::decrypt);
        CHECK(p.get(tag::authenticated_encryption_tag, Type::bytes).value.size() == 16);
        CHECK(p.get(tag::authenticated_encryption_additional_data, Type::bytes).value.size() == 5);
    }
    SECTION("Get Attributes and Locate")
    {
        const SecureBuffer ga = get_attributes_request("abc-1");
        const Item r1 = decode(ga.span());
        const Item& p1 = check_header(r1, Operation::get_attributes);
        CHECK(p1.get(tag::unique_identifier, Type::text).as_text() == "abc-1");
        std::vector<std::string_view> names;
        for (const Item* n : p1.find_all(tag::attribute_name)) {
            CHECK(n->type == Type::text);
            names.push_back(n->as_text());
        }
        CHECK(names == std::vector<std::string_view>{"State", "Cryptographic Algorithm", "Cryptographic Length",
                                                     "Cryptographic Usage Mask", "Initial Date"});
        const std::array<std::string_view, 2> two{attribute_name::name, attribute_name::state};
        const SecureBuffer ga2 = get_attributes_request("9", two);
        const Item r1b = decode(ga2.span());
        const auto asked = check_header(r1b, Operation::get_attributes).find_all(tag::attribute_name);
        REQUIRE(asked.size() == 2);
        CHECK(asked[0]->as_text() == "Name");
        CHECK(asked[1]->as_text() == "State");

        const SecureBuffer lo = locate_request({"disk-key", std::nullopt}, 2);
        const Item r2 = decode(lo.span());
        const Item& p2 = check_header(r2, Operation::locate);
        CHECK(p2.get(tag::maximum_items, Type::integer).number == 2);
        CHECK(p2.find(tag::offset_items) == nullptr);
        const auto attrs = p2.find_all(tag::attribute);
        REQUIRE(attrs.size() == 2);
        CHECK(attrs[0]->get(tag::attribute_name, Type::text).as_text() == "Object Type");
        CHECK(attrs[0]->get(tag::attribute_value, Type::enumeration).as_enum() == kObjectTypeSymmetricKey);
        CHECK(attrs[1]->get(tag::attribute_name, Type::text).as_text() == "Name");
        const Item& name = attrs[1]->get(tag::attribute_value, Type::structure);
        CHECK(name.get(tag::name_value, Type::text).as_text() == "disk-key");
        CHECK(name.get(tag::name_type, Type::enumeration).as_enum() == kNameTypeUninterpretedText);
    }
    SECTION("Locate by Name and State, a later page, and of every symmetric key")
    {
        const SecureBuffer lo = locate_request({"disk-key", KeyState::active}, 250, 500);
        const Item root = decode(lo.span());
        const Item& p = check_header(root, Operation::locate);
        REQUIRE(p.children.size() == 5);
        // KMIP's order: Maximum Items, Offset Items, then the attributes.
        CHECK(p.children[0].tag == tag::maximum_items);
        CHECK(p.children[0].number == 250);
        CHECK(p.children[1].tag == tag::offset_items);
        CHECK(p.children[1].type == Type::integer);
        CHECK(p.children[1].number == 500);
        CHECK(p.children[2].get(tag::attribute_name, Type::text).as_text() == "Object Type");
        CHECK(p.children[3].get(tag::attribute_name, Type::text).as_text() == "Name");
        CHECK(p.children[4].get(tag::attribute_name, Type::text).as_text() == "State");
        CHECK(p.children[4].get(tag::attribute_value, Type::enumeration).as_enum() == 2);

        const SecureBuffer all = locate_request({}, 250);
        const Item aroot = decode(all.span());
        const Item& ap = check_header(aroot, Operation::locate);
        const auto attrs = ap.find_all(tag::attribute);
        REQUIRE(attrs.size() == 1);
        CHECK(attrs[0]->get(tag::attribute_name, Type::text).as_text() == "Object Type");
    }
    SECTION("Create")
    {
        const SecureBuffer msg = create_request("disk-key");
        const Item root = decode(msg.span());
        const Item& p = check_header(root, Operation::create);
        REQUIRE(p.children.size() == 2);
        CHECK(p.children[0].tag == tag::object_type);
        CHECK(p.children[0].type == Type::enumeration);
        CHECK(p.children[0].as_enum() == kObjectTypeSymmetricKey);
        const Item& t = p.get(tag::template_attribute, Type::structure);
        const auto attrs = t.find_all(tag::attribute);
        REQUIRE(attrs.size() == 4);
        REQUIRE(t.children.size() == 4);
        CHECK(attrs[0]->get(tag::attribute_name, Type::text).as_text() == "Cryptographic Algorithm");
        CHECK(attrs[0]->get(tag::attribute_value, Type::enumeration).as_enum() == kAlgorithmAes);
        CHECK(attrs[1]->get(tag::attribute_name, Type::text).as_text() == "Cryptographic Length");
        CHECK(attrs[1]->get(tag::attribute_value, Type::integer).number == 256);
        CHECK(attrs[2]->get(tag::attribute_name, Type::text).as_text() == "Cryptographic Usage Mask");
        CHECK(attrs[2]->get(tag::attribute_value, Type::integer).number == (kUsageEncrypt | kUsageDecrypt));
        CHECK(attrs[3]->get(tag::attribute_name, Type::text).as_text() == "Name");
        const Item& name = attrs[3]->get(tag::attribute_value, Type::structure);
        CHECK(name.get(tag::name_value, Type::text).as_text() == "disk-key");
        CHECK(name.get(tag::name_type, Type::enumeration).as_enum() == kNameTypeUninterpretedText);
        for (const Item* a : attrs) {
            CHECK(a->children.size() == 2);  // no Attribute Index
        }
    }
    SECTION("Activate, Revoke and Destroy")
    {
        const SecureBuffer act = activate_request("41");
        const Item r1 = decode(act.span());
        const Item& p1 = check_header(r1, Operation::activate);
        REQUIRE(p1.children.size() == 1);
        CHECK(p1.get(tag::unique_identifier, Type::text).as_text() == "41");
        const SecureBuffer rev = revoke_request("42");
        const Item r2 = decode(rev.span());
        const Item& p2 = check_header(r2, Operation::revoke);
        REQUIRE(p2.children.size() == 2);
        CHECK(p2.children[0].tag == tag::unique_identifier);
        CHECK(p2.children[0].as_text() == "42");
        const Item& reason = p2.get(tag::revocation_reason, Type::structure);
        REQUIRE(reason.children.size() == 1);
        CHECK(reason.get(tag::revocation_reason_code, Type::enumeration).as_enum() == 6);  // Cessation of Operation
        const SecureBuffer des = destroy_request("43");
        const Item r3 = decode(des.span());
        const Item& p3 = check_header(r3, Operation::destroy);
        REQUIRE(p3.children.size() == 1);
        CHECK(p3.get(tag::unique_identifier, Type::text).as_text() == "43");
    }
    SECTION("operation codes")
    {
        CHECK(static_cast<std::uint32_t>(Operation::create) == 0x01);
        CHECK(static_cast<std::uint32_t>(Operation::activate) == 0x12);
        CHECK(static_cast<std::uint32_t>(Operation::revoke) == 0x13);
        CHECK(static_cast<std::uint32_t>(Operation::destroy) == 0x14);
        CHECK(operation_name(Operation::create) == "Create");
        CHECK(operation_name(Operation::activate) == "Activate");
        CHECK(operation_name(Operation::revoke) == "Revoke");
        CHECK(operation_name(Operation::destroy) == "Destroy");
    }
}

TEST_CASE("kmip messages: responses parse, and wrong shapes are refused", "[kmip]")
{
    const std::array<std::uint8_t, 32> data{7};
    const std::array<std::uint8_t, 16> t{9};
    SECTION("Encrypt and Decrypt answers")
    {
        const auto msg = response(Operation::encrypt, 0,
                                  {Item::text(tag::unique_identifier, "1"), Item::bytes(tag::data, data),
                                   Item::bytes(tag::authenticated_encryption_tag, t)});
        const Item root = decode(msg);
        const Response r = parse_response(root, Operation::encrypt);
        CHECK(r.status == ResultStatus::success);
        const EncryptResult e = parse_encrypt(r);
        CHECK(e.data.size() == 32);
        CHECK(e.tag.size() == 16);
        CHECK(e.iv.empty());
        const auto dmsg = response(Operation::decrypt, 0, {Item::bytes(tag::data, data)});
        const Item droot = decode(dmsg);
        CHECK(parse_decrypt(parse_response(droot, Operation::decrypt)).data.size() == 32);
    }
    SECTION("Get Attributes and Locate answers")
    {
        const auto attr = [](std::string_view name, Item v) {
            v.tag = tag::attribute_value;
            return Item::structure(tag::attribute, {Item::text(tag::attribute_name, name), std::move(v)});
        };
        const auto msg = response(Operation::get_attributes, 0,
                                  {Item::text(tag::unique_identifier, "5"), attr("State", Item::enumeration(0, 4)),
                                   attr("Cryptographic Algorithm", Item::enumeration(0, kAlgorithmAes)),
                                   attr("Cryptographic Length", Item::integer(0, 256)),
                                   attr("Cryptographic Usage Mask", Item::integer(0, 12)),
                                   attr("Name", Item::structure(0, {Item::text(tag::name_value, "k\x01"),
                                                                    Item::enumeration(tag::name_type, 1)}))});
        const Item root = decode(msg);
        const Attributes a = parse_get_attributes(parse_response(root, Operation::get_attributes));
        CHECK(a.state == KeyState::compromised);
        CHECK(a.algorithm == kAlgorithmAes);
        CHECK(a.length == 256);
        CHECK(a.usage_mask == 12);
        REQUIRE(a.names.size() == 1);
        CHECK(ascii_only(a.names[0]));
        const auto lmsg = response(Operation::locate, 0,
                                   {Item::text(tag::unique_identifier, "1"), Item::text(tag::unique_identifier, "2")});
        const Item lroot = decode(lmsg);
        CHECK(parse_locate(parse_response(lroot, Operation::locate)) == std::vector<std::string>{"1", "2"});
        const auto bad = response(Operation::locate, 0, {Item::text(tag::unique_identifier, "a\nb")});
        const Item broot = decode(bad);
        CHECK_THROWS_AS(parse_locate(parse_response(broot, Operation::locate)), DecodeError);
    }
    SECTION("Create, Activate, Revoke and Destroy answers")
    {
        const auto parse_create_of = [](std::vector<Item> payload) {
            const auto msg = response(Operation::create, 0, std::move(payload));
            const Item root = decode(msg);
            return parse_create(parse_response(root, Operation::create));
        };
        CHECK(parse_create_of({Item::enumeration(tag::object_type, kObjectTypeSymmetricKey),
                               Item::text(tag::unique_identifier, "17"),
                               Item::structure(tag::template_attribute, {})}) == "17");
        CHECK_THROWS_WITH(parse_create_of({Item::text(tag::unique_identifier, "17")}),
                          Catch::Contains("0 Object Type items"));
        CHECK_THROWS_WITH(
            parse_create_of({Item::enumeration(tag::object_type, 3), Item::text(tag::unique_identifier, "17")}),
            Catch::Contains("not a Symmetric Key"));
        CHECK_THROWS_WITH(
            parse_create_of({Item::integer(tag::object_type, 2), Item::text(tag::unique_identifier, "17")}),
            Catch::Contains("Object Type that is a"));
        CHECK_THROWS_WITH(parse_create_of({Item::enumeration(tag::object_type, kObjectTypeSymmetricKey)}),
                          Catch::Contains("0 Unique Identifier items"));
        CHECK_THROWS_WITH(
            parse_create_of({Item::enumeration(tag::object_type, kObjectTypeSymmetricKey),
                             Item::text(tag::unique_identifier, "17"), Item::text(tag::unique_identifier, "18")}),
            Catch::Contains("2 Unique Identifier items"));
        CHECK_THROWS_WITH(parse_create_of({Item::enumeration(tag::object_type, kObjectTypeSymmetricKey),
                                           Item::enumeration(tag::object_type, kObjectTypeSymmetricKey),
                                           Item::text(tag::unique_identifier, "17")}),
                          Catch::Contains("2 Object Type items"));
        const std::array<std::uint8_t, 2> raw{'1', '7'};
        CHECK_THROWS_WITH(parse_create_of({Item::enumeration(tag::object_type, kObjectTypeSymmetricKey),
                                           Item::bytes(tag::unique_identifier, raw)}),
                          Catch::Contains("not a text string"));
        // Empty, not printable, longer than 128 bytes.
        for (const std::string& bad : {std::string(), std::string("a\x1b[31m"), std::string(129, 'x')}) {
            CHECK_THROWS_AS(parse_create_of({Item::enumeration(tag::object_type, kObjectTypeSymmetricKey),
                                             Item::text(tag::unique_identifier, bad)}),
                            DecodeError);
        }

        for (const Operation op : {Operation::activate, Operation::revoke, Operation::destroy}) {
            CAPTURE(operation_name(op));
            const auto answer = [op](std::vector<Item> payload) { return response(op, 0, std::move(payload)); };
            const auto ok = answer({Item::text(tag::unique_identifier, "5")});
            const Item ok_root = decode(ok);
            CHECK_NOTHROW(parse_unique_identifier(parse_response(ok_root, op), "5"));
            CHECK_THROWS_WITH(parse_unique_identifier(parse_response(ok_root, op), "6"),
                              Catch::Contains("names object 5, not 6"));
            const auto none = answer({});
            const Item none_root = decode(none);
            CHECK_THROWS_WITH(parse_unique_identifier(parse_response(none_root, op), "5"),
                              Catch::Contains("0 Unique Identifier items"));
            const auto two = answer({Item::text(tag::unique_identifier, "5"), Item::text(tag::unique_identifier, "5")});
            const Item two_root = decode(two);
            CHECK_THROWS_AS(parse_unique_identifier(parse_response(two_root, op), "5"), DecodeError);
            const auto typed = answer({Item::integer(tag::unique_identifier, 5)});
            const Item typed_root = decode(typed);
            CHECK_THROWS_WITH(parse_unique_identifier(parse_response(typed_root, op), "5"),
                              Catch::Contains("not a text string"));
            const auto empty = answer({Item::text(tag::unique_identifier, "")});
            const Item empty_root = decode(empty);
            CHECK_THROWS_AS(parse_unique_identifier(parse_response(empty_root, op), ""), DecodeError);
            // An answer to another operation is refused before the payload is read.
            CHECK_THROWS_WITH(parse_response(ok_root, Operation::create), Catch::Contains("not to Create"));
        }
    }
    SECTION("Initial Date is a Date-Time")
    {
        const auto attr = [](std::string_view name, Item v) {
            v.tag = tag::attribute_value;
            return Item::structure(tag::attribute, {Item::text(tag::attribute_name, name), std::move(v)});
        };
        const auto msg = response(Operation::get_attributes, 0, {attr("Initial Date", Item::date_time(0, 1764780000))});
        const Item root = decode(msg);
        const Attributes a = parse_get_attributes(parse_response(root, Operation::get_attributes));
        CHECK(a.initial_date == 1764780000);
        CHECK(a.state == KeyState::unknown);
        const auto bad = response(Operation::get_attributes, 0, {attr("Initial Date", Item::integer(0, 17))});
        const Item broot = decode(bad);
        CHECK_THROWS_WITH(parse_get_attributes(parse_response(broot, Operation::get_attributes)),
                          Catch::Contains("'Initial Date' is a"));
    }
    SECTION("a failure keeps the reason and a printable message")
    {
        const auto msg = response(Operation::decrypt, 1, {}, reason::permission_denied, "denied\x1b[31m\xff");
        const Item root = decode(msg);
        const Response r = parse_response(root, Operation::decrypt);
        CHECK(r.status == ResultStatus::operation_failed);
        CHECK(r.reason == reason::permission_denied);
        CHECK(ascii_only(r.message));
        CHECK(r.payload == nullptr);
    }
    SECTION("shapes that are refused")
    {
        const auto other_op = response(Operation::encrypt, 0, {});
        const Item r1 = decode(other_op);
        CHECK_THROWS_WITH(parse_response(r1, Operation::decrypt), Catch::Contains("not to Decrypt"));
        const auto v2 = response(Operation::decrypt, 0, {}, std::nullopt, "", 2);
        const Item r2 = decode(v2);
        CHECK_THROWS_WITH(parse_response(r2, Operation::decrypt), Catch::Contains("protocol version 2.4"));
        const Item r3 = decode(encoded(Item::structure(tag::request_message, {})));
        CHECK_THROWS_WITH(parse_response(r3, Operation::decrypt), Catch::Contains("not a Response Message"));
        const auto no_data = response(Operation::decrypt, 0, {Item::text(tag::data, "text, not bytes")});
        const Item r4 = decode(no_data);
        CHECK_THROWS_WITH(parse_decrypt(parse_response(r4, Operation::decrypt)),
                          Catch::Contains("expected a byte string"));
        const auto bad_status = response(Operation::decrypt, 9, {});
        const Item r5 = decode(bad_status);
        CHECK_THROWS_WITH(parse_response(r5, Operation::decrypt), Catch::Contains("result status 9"));
    }
}

TEST_CASE("kmip messages: responses captured from PyKMIP 0.10 parse as expected", "[kmip]")
{
    // Real server answers (tests/fuzz/corpus/kmip/pykmip-*, also fuzz seeds).
    const auto load = [](const std::string& name) {
        std::ifstream in(std::string(DISKCRYPT_SOURCE_DIR) + "/tests/fuzz/corpus/kmip/" + name, std::ios::binary);
        REQUIRE(in.good());
        return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
    };
    const auto enc = load("pykmip-encrypt-aes-256-gcm-12-byte-iv-aad-tag-length-16");
    const Item enc_root = decode(enc);
    const EncryptResult e = parse_encrypt(parse_response(enc_root, Operation::encrypt));
    CHECK(e.tag.size() == 16);
    CHECK(e.iv.empty());  // PyKMIP does not echo a client's IV
    const auto dec = load("pykmip-decrypt-aes-256-gcm-12-byte-iv-aad-tag");
    const Item dec_root = decode(dec);
    CHECK(parse_decrypt(parse_response(dec_root, Operation::decrypt)).data.size() == e.data.size());
    const auto bad = load("pykmip-decrypt-with-a-wrong-aad-authentication-failure");
    const Item bad_root = decode(bad);
    const Response br = parse_response(bad_root, Operation::decrypt);
    CHECK(br.status == ResultStatus::operation_failed);
    CHECK(br.reason == reason::general_failure);
    const Context ctx{"kms", "127.0.0.1:5696", "diskcrypt-agent", "disk-key", "13"};
    CHECK(map_result(br, ctx, KeyState::active).code() == Errc::binding);
    const auto missing = load("pykmip-getattributes-of-a-uid-that-never-existed");
    const Item missing_root = decode(missing);
    const Response mr = parse_response(missing_root, Operation::get_attributes);
    CHECK(map_result(mr, ctx, KeyState::unknown).code() == Errc::kms_key);
    const auto attrs = load("pykmip-getattributes-state-cryptographic-algorithm-crypto");
    const Item attrs_root = decode(attrs);
    const Attributes a = parse_get_attributes(parse_response(attrs_root, Operation::get_attributes));
    CHECK(a.state == KeyState::active);
    CHECK(a.algorithm == kAlgorithmAes);
    CHECK(a.length == 256);
    CHECK(a.usage_mask == 12);
    CHECK(a.names.size() == 1);
    const auto located = load("pykmip-locate-by-name-matching-two-keys");
    const Item located_root = decode(located);
    CHECK(parse_locate(parse_response(located_root, Operation::locate)).size() >= 2);
    // Message-level refusals come with protocol version 1.0 and no Operation.
    const auto noauth = load("pykmip-getattributes-with-a-client-certificate-without-an");
    const Item noauth_root = decode(noauth);
    const Response nr = parse_response(noauth_root, Operation::get_attributes);
    CHECK(nr.reason == reason::authentication_not_successful);
    CHECK(map_result(nr, ctx, KeyState::unknown).code() == Errc::kms_auth);

    // The key lifecycle (PyKMIP numbers its objects: "1" was created, then activated, revoked, destroyed).
    const auto created = load("pykmip-create-aes-256-symmetric-key-with-a-name");
    const Item created_root = decode(created);
    CHECK(parse_create(parse_response(created_root, Operation::create)) == "1");
    for (const auto& [file, op] :
         {std::pair{"pykmip-activate-of-a-pre-active-key", Operation::activate},
          std::pair{"pykmip-revoke-cessation-of-operation-of-an-active-key", Operation::revoke},
          std::pair{"pykmip-destroy-of-a-deactivated-key", Operation::destroy}}) {
        CAPTURE(file);
        const auto msg = load(file);
        const Item root = decode(msg);
        const Response r = parse_response(root, op);
        CHECK(r.status == ResultStatus::success);
        CHECK_NOTHROW(parse_unique_identifier(r, "1"));
        CHECK_THROWS_AS(parse_unique_identifier(r, "2"), DecodeError);
        CHECK_THROWS_AS(parse_response(root, Operation::encrypt), DecodeError);
    }
    const auto key_attrs = load("pykmip-getattributes-key-attributes-and-initial-date");
    const Item key_attrs_root = decode(key_attrs);
    const Attributes ka = parse_get_attributes(parse_response(key_attrs_root, Operation::get_attributes));
    CHECK(ka.state == KeyState::active);
    REQUIRE(ka.initial_date.has_value());
    CHECK(*ka.initial_date > 1700000000);
    CHECK(ka.length == 256);
    const auto listed = load("pykmip-getattributes-name-state-initial-date-algorithm");
    const Item listed_root = decode(listed);
    const Attributes la = parse_get_attributes(parse_response(listed_root, Operation::get_attributes));
    CHECK(la.names == std::vector<std::string>{"disk-key"});
    CHECK(la.initial_date.has_value());
    CHECK(la.state == KeyState::active);
    const auto revoked = load("pykmip-getattributes-state-of-a-deactivated-key");
    const Item revoked_root = decode(revoked);
    CHECK(parse_get_attributes(parse_response(revoked_root, Operation::get_attributes)).state == KeyState::deactivated);
    const auto none = load("pykmip-locate-by-name-and-state-active-matching-none");
    const Item none_root = decode(none);
    CHECK(parse_locate(parse_response(none_root, Operation::locate)).empty());
    const auto two = load("pykmip-locate-by-name-and-state-active-matching-two");
    const Item two_root = decode(two);
    CHECK(parse_locate(parse_response(two_root, Operation::locate)) == std::vector<std::string>{"1", "2"});

    // PyKMIP's refusals of lifecycle operations, read with the object's state.
    const Context one{"kms", "127.0.0.1:5696", "diskcrypt-agent", "disk-key", "1"};
    const auto reactivate = load("pykmip-activate-of-a-deactivated-key-permission-denied");
    const Item reactivate_root = decode(reactivate);
    const Response ra = parse_response(reactivate_root, Operation::activate);
    CHECK(ra.reason == reason::permission_denied);
    const Error ea = map_result(ra, one, KeyState::deactivated);
    CHECK(ea.code() == Errc::kms_key);
    CHECK_THAT(ea.what(), Catch::Contains("is deactivated, not pre-active") &&
                              Catch::Contains("The object state is not pre-active and cannot be activated."));
    const auto rerevoke = load("pykmip-revoke-of-a-deactivated-key-illegal-operation");
    const Item rerevoke_root = decode(rerevoke);
    const Response rr = parse_response(rerevoke_root, Operation::revoke);
    CHECK(rr.reason == reason::illegal_operation);
    CHECK(map_result(rr, one, KeyState::unknown).code() == Errc::kms_key);
    const auto destroy_active = load("pykmip-destroy-of-an-active-key-permission-denied");
    const Item destroy_active_root = decode(destroy_active);
    const Response rd = parse_response(destroy_active_root, Operation::destroy);
    CHECK(rd.reason == reason::permission_denied);
    CHECK_THAT(map_result(rd, one, KeyState::active).what(), Catch::Contains("refused Destroy"));
}

namespace {

// A refused response: operation failed with `reason` and a server message.
Response failed(Operation op, std::uint32_t reason)
{
    Response r;
    r.operation = op;
    r.status = ResultStatus::operation_failed;
    r.reason = reason;
    r.message = "server text";
    return r;
}

}  // namespace

TEST_CASE("kmip results map to specific errors", "[kmip]")
{
    const Context ctx{"kms", "127.0.0.1:5696", "diskcrypt-agent", "disk-key", "7"};
    const Error not_found = map_result(failed(Operation::decrypt, reason::item_not_found), ctx, KeyState::unknown);
    CHECK(not_found.code() == Errc::kms_key);
    CHECK_THAT(not_found.what(), Catch::Contains("was not found") && Catch::Contains("Item Not Found (0x1)") &&
                                     Catch::Contains("server text") && Catch::Contains("KMIP object 7"));
    const Error denied = map_result(failed(Operation::decrypt, reason::permission_denied), ctx, KeyState::active);
    CHECK(denied.code() == Errc::kms_auth);
    CHECK_THAT(denied.what(), Catch::Contains("denied client 'diskcrypt-agent'"));
    const Error revoked = map_result(failed(Operation::decrypt, reason::permission_denied), ctx, KeyState::compromised);
    CHECK(revoked.code() == Errc::kms_key);
    CHECK_THAT(revoked.what(), Catch::Contains("is compromised, not active"));
    const Error pre = map_result(failed(Operation::encrypt, reason::illegal_operation), ctx, KeyState::pre_active);
    CHECK_THAT(pre.what(), Catch::Contains("is pre-active"));
    CHECK_THAT(pre.hint(), Catch::Contains("activate"));
    const Error tag = map_result(failed(Operation::decrypt, reason::cryptographic_failure), ctx, KeyState::unknown);
    CHECK(tag.code() == Errc::binding);
    // PyKMIP's answer to a failed tag.
    CHECK(map_result(failed(Operation::decrypt, reason::general_failure), ctx, KeyState::active).code() ==
          Errc::binding);
    CHECK(map_result(failed(Operation::encrypt, reason::general_failure), ctx, KeyState::active).code() ==
          Errc::kms_unavailable);
    const Error other = map_result(failed(Operation::encrypt, 0x4242), ctx, KeyState::unknown);
    CHECK(other.code() == Errc::kms_unavailable);
    CHECK_THAT(other.what(), Catch::Contains("reason 0x4242"));
}

TEST_CASE("kmip results of key lifecycle operations map to specific errors", "[kmip]")
{
    const Context ctx{"kms", "127.0.0.1:5696", "diskcrypt-agent", "disk-key", "7"};
    // PyKMIP answers Activate of an object that is not Pre-Active with Permission Denied.
    const Error reactivate =
        map_result(failed(Operation::activate, reason::permission_denied), ctx, KeyState::deactivated);
    CHECK(reactivate.code() == Errc::kms_key);
    CHECK_THAT(reactivate.what(), Catch::Contains("refused Activate: key 'disk-key' (KMIP object 7) is deactivated, "
                                                  "not pre-active") &&
                                      Catch::Contains("server text"));
    CHECK_THAT(reactivate.hint(), Catch::Contains("rotate"));
    const Error denied = map_result(failed(Operation::activate, reason::permission_denied), ctx, KeyState::pre_active);
    CHECK(denied.code() == Errc::kms_auth);
    CHECK_THAT(denied.what(), Catch::Contains("denied client 'diskcrypt-agent' the Activate of key 'disk-key'"));
    CHECK_THAT(denied.hint(), Catch::Contains("activate keys") && Catch::Contains("operation policy"));
    Context create_ctx = ctx;
    create_ctx.uid.clear();
    const Error no_create =
        map_result(failed(Operation::create, reason::permission_denied), create_ctx, KeyState::unknown);
    CHECK(no_create.code() == Errc::kms_auth);
    CHECK_THAT(no_create.what(), Catch::Contains("the Create of key 'disk-key' (Permission Denied"));
    CHECK_THAT(no_create.hint(), Catch::Contains("create keys"));
    const Error revoke_pre =
        map_result(failed(Operation::revoke, reason::illegal_operation), ctx, KeyState::pre_active);
    CHECK(revoke_pre.code() == Errc::kms_key);
    CHECK_THAT(revoke_pre.what(), Catch::Contains("refused Revoke: key 'disk-key' (KMIP object 7) is pre-active, not "
                                                  "active"));
    const Error destroy_active =
        map_result(failed(Operation::destroy, reason::permission_denied), ctx, KeyState::active);
    CHECK(destroy_active.code() == Errc::kms_key);
    CHECK_THAT(destroy_active.what(), Catch::Contains("refused Destroy: key 'disk-key' (KMIP object 7) is active"));
    const Error illegal = map_result(failed(Operation::revoke, reason::illegal_operation), ctx, KeyState::unknown);
    CHECK(illegal.code() == Errc::kms_key);
    CHECK_THAT(illegal.hint(), Catch::Contains("state does not allow Revoke"));
    for (const Operation op : {Operation::create, Operation::activate, Operation::revoke, Operation::destroy}) {
        CAPTURE(operation_name(op));
        CHECK(map_result(failed(op, reason::operation_not_supported), ctx, KeyState::unknown).code() ==
              Errc::not_supported);
        CHECK(map_result(failed(op, reason::invalid_field), ctx, KeyState::unknown).code() == Errc::kms_unavailable);
        CHECK(map_result(failed(op, reason::item_not_found), ctx, KeyState::unknown).code() == Errc::kms_key);
        CHECK(map_result(failed(op, reason::general_failure), ctx, KeyState::unknown).code() == Errc::kms_unavailable);
    }
    // Encrypt and Decrypt keep their mapping.
    CHECK(map_result(failed(Operation::decrypt, reason::operation_not_supported), ctx, KeyState::unknown).code() ==
          Errc::kms_unavailable);
    // A listing has no key id: the object alone is named.
    const Context list_ctx{"kms", "127.0.0.1:5696", "diskcrypt-agent", "", "12"};
    const Error listed =
        map_result(failed(Operation::get_attributes, reason::permission_denied), list_ctx, KeyState::unknown);
    CHECK_THAT(listed.what(), Catch::Contains("the Get Attributes of KMIP object 12 ("));
}

TEST_CASE("kmip versions with the same Initial Date are ordered by Unique Identifier", "[kmip]")
{
    CHECK(compare_unique_identifiers("9", "10") < 0);
    CHECK(compare_unique_identifiers("10", "9") > 0);
    CHECK(compare_unique_identifiers("10", "10") == 0);
    CHECK(compare_unique_identifiers("100", "99") > 0);
    // Numerically equal: still a total order (by length, then bytes).
    CHECK(compare_unique_identifiers("07", "7") > 0);
    CHECK(compare_unique_identifiers("7", "07") < 0);
    CHECK(compare_unique_identifiers("0", "00") < 0);
    // Not all digits: by length, then bytewise.
    CHECK(compare_unique_identifiers("b", "aa") < 0);
    CHECK(compare_unique_identifiers("abc", "abd") < 0);
    CHECK(compare_unique_identifiers("9", "a1") < 0);
    CHECK(compare_unique_identifiers("z", "9") > 0);
    CHECK(compare_unique_identifiers("0fa4c3e2-1", "0fa4c3e2-1") == 0);
    CHECK(compare_unique_identifiers("", "1") < 0);
}

TEST_CASE("kmip endpoints parse with their port", "[kmip]")
{
    CHECK(parse_endpoint("kms.example").text() == "kms.example:5696");
    CHECK(parse_endpoint("127.0.0.1:15696").port == 15696);
    CHECK(parse_endpoint("[::1]:7").text() == "[::1]:7");
    CHECK(parse_endpoint("[fe80::1]").host == "fe80::1");
    for (const char* bad : {"", ":5696", "host:", "host:0", "host:65536", "host:x", "::1:5696", "[::1", "[::1]x",
                            "bad host:1", "h\x01st:1"}) {
        CAPTURE(bad);
        CHECK_THROWS_AS(parse_endpoint(bad), std::invalid_argument);
    }
}

}  // namespace kmip_codec_test
