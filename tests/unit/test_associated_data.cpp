// The associated data: one canonical byte form, fixed vectors.
#include <catch2/catch.hpp>

#include "agent/disk/associated_data.hpp"
#include "agent/encoding.hpp"
#include "agent/error.hpp"

using diskcrypt::associated_data;
using diskcrypt::hex_encode;
using diskcrypt::KeyRef;

TEST_CASE("associated data: fixed vectors", "[ad]")
{
    // "diskcrypt-kms-ad" 00 01, then u16be length + bytes of disk id, provider, key id, version.
    CHECK(hex_encode(associated_data("disk-1", KeyRef{"hsm", "disk-key-01", "1"})) ==
          "6469736b63727970742d6b6d732d6164"  // diskcrypt-kms-ad
          "0001"                              // separator, version 1
          "0006"
          "6469736b2d31"  // disk-1
          "0003"
          "68736d"  // hsm
          "000b"
          "6469736b2d6b65792d3031"  // disk-key-01
          "0001"
          "31");  // 1
    CHECK(hex_encode(associated_data("a", KeyRef{"k", "x", "v2"})) ==
          "6469736b63727970742d6b6d732d6164000100016100016b00017800027632");
    const std::string long_id(100, 'Z');
    const auto ad = associated_data(long_id, KeyRef{"hsm", "k", "1"});
    CHECK(ad.size() == 18 + 2 + 100 + 2 + 3 + 2 + 1 + 2 + 1);
    CHECK(ad[18] == 0x00);
    CHECK(ad[19] == 100);
}

TEST_CASE("associated data: every field changes the bytes, boundaries are unambiguous", "[ad]")
{
    const auto base = associated_data("disk-1", KeyRef{"hsm", "k1", "1"});
    CHECK(associated_data("disk-2", KeyRef{"hsm", "k1", "1"}) != base);
    CHECK(associated_data("disk-1", KeyRef{"hsm2", "k1", "1"}) != base);
    CHECK(associated_data("disk-1", KeyRef{"hsm", "k2", "1"}) != base);
    CHECK(associated_data("disk-1", KeyRef{"hsm", "k1", "2"}) != base);
    // Moving a character across a field boundary must change the encoding.
    CHECK(associated_data("ab", KeyRef{"c", "k", "1"}) != associated_data("a", KeyRef{"bc", "k", "1"}));
}

TEST_CASE("associated data: invalid fields are refused", "[ad]")
{
    using Catch::Matchers::Contains;
    CHECK_THROWS_WITH(associated_data("", KeyRef{"hsm", "k", "1"}), Contains("invalid disk id ''"));
    CHECK_THROWS_WITH(associated_data("disk 1", KeyRef{"hsm", "k", "1"}), Contains("invalid disk id 'disk 1'"));
    CHECK_THROWS_WITH(associated_data("d", KeyRef{"", "k", "1"}), Contains("invalid provider name"));
    CHECK_THROWS_WITH(associated_data("d", KeyRef{"hsm", "", "1"}), Contains("invalid key id"));
    CHECK_THROWS_WITH(associated_data("d", KeyRef{"hsm", "k", ""}), Contains("invalid key version"));
}

namespace {

diskcrypt::MappingBinding mapping()
{
    diskcrypt::MappingBinding m;
    m.cipher = "aes-xts-plain64";
    m.disk_type = "network-ssd";
    m.volume_key_bytes = 64;
    m.sector_size = 4096;
    m.data_offset = 1048576;
    m.iv_tweak = 0;
    return m;
}

}  // namespace

TEST_CASE("associated data version 2: fixed vector", "[ad]")
{
    CHECK(diskcrypt::kAssociatedDataVersion == 2);
    CHECK(hex_encode(associated_data("disk-1", KeyRef{"hsm", "disk-key-01", "1"}, mapping())) ==
          "6469736b63727970742d6b6d732d6164"  // diskcrypt-kms-ad
          "0002"                              // separator, version 2
          "0006"
          "6469736b2d31"  // disk-1
          "0003"
          "68736d"  // hsm
          "000b"
          "6469736b2d6b65792d3031"  // disk-key-01
          "0001"
          "31"  // 1
          "000f"
          "6165732d7874732d706c61696e3634"  // aes-xts-plain64
          "000b"
          "6e6574776f726b2d737364"  // network-ssd
          "00000040"                // volume key: 64 bytes
          "00001000"                // sector size 4096
          "0000000000100000"        // data offset 1048576 bytes
          "0000000000000000");      // IV tweak 0
}

TEST_CASE("associated data version 2: every mapping parameter changes the bytes", "[ad]")
{
    const KeyRef key{"hsm", "k1", "1"};
    const auto base = associated_data("disk-1", key, mapping());
    CHECK(base != associated_data("disk-1", key));
    auto m = mapping();
    m.cipher = "aes-xts-plain";
    CHECK(associated_data("disk-1", key, m) != base);
    m = mapping();
    m.disk_type = "network-hdd";
    CHECK(associated_data("disk-1", key, m) != base);
    m = mapping();
    m.volume_key_bytes = 32;
    CHECK(associated_data("disk-1", key, m) != base);
    m = mapping();
    m.sector_size = 512;
    CHECK(associated_data("disk-1", key, m) != base);
    m = mapping();
    m.data_offset = 2097152;
    CHECK(associated_data("disk-1", key, m) != base);
    m = mapping();
    m.iv_tweak = 8;
    CHECK(associated_data("disk-1", key, m) != base);
    m = mapping();
    m.cipher = "";
    CHECK_THROWS_WITH(associated_data("disk-1", key, m), Catch::Matchers::Contains("invalid cipher"));
    m = mapping();
    m.disk_type = "Network SSD";
    CHECK_THROWS_WITH(associated_data("disk-1", key, m), Catch::Matchers::Contains("invalid disk type"));
}
