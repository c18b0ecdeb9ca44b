// Strict base64 and the rules for names (disk ids, types, keys).
#include <catch2/catch.hpp>

#include "agent/encoding.hpp"
#include "agent/error.hpp"
#include "agent/names.hpp"

using Catch::Matchers::Contains;
using diskcrypt::Errc;
using diskcrypt::Error;

namespace {

std::vector<std::uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

}  // namespace

TEST_CASE("base64: RFC 4648 test vectors", "[encoding]")
{
    const std::vector<std::pair<std::string, std::string>> vectors = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    for (const auto& [plain, encoded] : vectors) {
        CHECK(diskcrypt::base64_encode(bytes(plain)) == encoded);
        const auto decoded = diskcrypt::base64_decode(encoded);
        REQUIRE(decoded.has_value());
        CHECK(*decoded == bytes(plain));
    }
}

TEST_CASE("base64: non-canonical and malformed input is refused", "[encoding]")
{
    for (const char* bad : {"Zg", "Zg=", "Zg===", "Z===", "Zm9v\n", " Zm9v", "Zm9v YmFy", "Zh==", "Zm9=", "Zm-v",
                            "Zm_v", "Z=9v", "====", "Zm9vYg=a"}) {
        INFO(bad);
        CHECK_FALSE(diskcrypt::base64_decode(bad).has_value());
    }
}

TEST_CASE("hex encoding", "[encoding]") { CHECK(diskcrypt::hex_encode(bytes("\x01\xab\xff")) == "01abff"); }

TEST_CASE("disk ids follow [A-Za-z0-9._-]{1,100}", "[names]")
{
    CHECK_NOTHROW(diskcrypt::validate_disk_id("fhm1a2b3c4d5e6f7g8h9"));
    CHECK_NOTHROW(diskcrypt::validate_disk_id("a.b_c-D9"));
    CHECK_NOTHROW(diskcrypt::validate_disk_id(std::string(100, 'x')));
    for (const std::string& bad : {std::string(), std::string(101, 'x'), std::string("a/b"), std::string("a b"),
                                   std::string("ä"), std::string("a\nb"), std::string("a:b")}) {
        INFO(bad);
        try {
            diskcrypt::validate_disk_id(bad);
            FAIL("accepted");
        } catch (const Error& e) {
            CHECK(e.code() == Errc::usage);
            CHECK_THAT(e.what(), Contains("it must be 1-100 characters from A-Z a-z 0-9 . _ -"));
        }
    }
}

TEST_CASE("disk types: sector sizes and local disks", "[names]")
{
    CHECK(diskcrypt::encryptable_disk_type("network-hdd").profile.sector_size == 512);
    CHECK(diskcrypt::encryptable_disk_type("network-ssd").profile.sector_size == 512);
    CHECK(diskcrypt::encryptable_disk_type("network-ssd-nonreplicated").profile.sector_size == 4096);
    CHECK(diskcrypt::encryptable_disk_type("network-ssd-io-m3").profile.sector_size == 4096);
    CHECK_THROWS_WITH(diskcrypt::encryptable_disk_type("local-ssd"),
                      Contains("is a local disk, and local disks cannot be encrypted"));
    CHECK_THROWS_WITH(diskcrypt::encryptable_disk_type("local-hdd"), Contains("local disks cannot be encrypted"));
    CHECK_THROWS_WITH(diskcrypt::encryptable_disk_type("network-nvme"), Contains("unknown disk type 'network-nvme'"));
}

TEST_CASE("sector sizes", "[names]")
{
    for (const unsigned ok : {512U, 1024U, 2048U, 4096U}) {
        CHECK_NOTHROW(diskcrypt::validate_sector_size(ok));
    }
    for (const unsigned bad : {0U, 256U, 1000U, 8192U}) {
        CHECK_THROWS_WITH(diskcrypt::validate_sector_size(bad), Contains("invalid sector size"));
    }
}

TEST_CASE("key specs are PROVIDER:KEY_ID", "[names]")
{
    const auto k = diskcrypt::parse_key_spec("hsm:disk-key-01");
    CHECK(k.provider == "hsm");
    CHECK(k.key_id == "disk-key-01");
    CHECK(k.version.empty());
    CHECK(diskcrypt::parse_key_spec("kms-2:abc:def/1").key_id == "abc:def/1");
    CHECK_THROWS_WITH(diskcrypt::parse_key_spec("disk-key-01"), Contains("write it as PROVIDER:KEY_ID"));
    CHECK_THROWS_WITH(diskcrypt::parse_key_spec(":k"), Contains("invalid provider name ''"));
    CHECK_THROWS_WITH(diskcrypt::parse_key_spec("HSM:k"), Contains("invalid provider name 'HSM'"));
    CHECK_THROWS_WITH(diskcrypt::parse_key_spec("hsm:"), Contains("invalid key id ''"));
    CHECK_THROWS_WITH(diskcrypt::parse_key_spec("hsm:a b"), Contains("invalid key id 'a b'"));
}

TEST_CASE("service accounts", "[names]")
{
    CHECK_NOTHROW(diskcrypt::validate_service_account("ajeabc123@folder.sa"));
    CHECK_THROWS_WITH(diskcrypt::validate_service_account(""), Contains("invalid service account"));
    CHECK_THROWS_WITH(diskcrypt::validate_service_account("a;b"), Contains("invalid service account 'a;b'"));
}
