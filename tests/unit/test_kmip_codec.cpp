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
        CHECK(p1.find_all(tag::attribute_name).size() == 4);
        const SecureBuffer lo = locate_request("disk-key", 2);
        const Item r2 = decode(lo.span());
        const Item& p2 = check_header(r2, Operation::locate);
        CHECK(p2.get(tag::maximum_items, Type::integer).number == 2);
        const Item& attr = p2.get(tag::attribute, Type::structure);
        CHECK(attr.get(tag::attribute_name, Type::text).as_text() == "Name");
        CHECK(attr.get(tag::attribute_value, Type::structure).get(tag::name_value, Type::text).as_text() == "disk-key");
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
}

TEST_CASE("kmip results map to specific errors", "[kmip]")
{
    const Context ctx{"kms", "127.0.0.1:5696", "diskcrypt-agent", "disk-key", "7"};
    const auto failed = [](Operation op, std::uint32_t reason) {
        Response r;
        r.operation = op;
        r.status = ResultStatus::operation_failed;
        r.reason = reason;
        r.message = "server text";
        return r;
    };
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
