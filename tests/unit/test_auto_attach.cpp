// auto-attach's inputs: the provisioning entries (each refusal with its
// file and line), the folder they live in (one entry per serial, trusted
// files only), the serial a device reports, and the block device a MAJ:MIN
// names in sysfs (a sysfs tree made by the test).
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "agent/error.hpp"
#include "agent/ops/auto_attach.hpp"
#include "tests/support/support.hpp"

namespace auto_attach_unit {

using Catch::Matchers::Contains;
using diskcrypt::Errc;
using diskcrypt::Error;

const std::string kEntry =
    "serial = \"disk-0042\"\n"
    "disk_id = \"disk-0042\"\n"
    "type = \"network-ssd\"\n"
    "key = \"hsm:disk-key\"\n"
    "service_account = \"vm-disks\"\n";

// The error a call throws (fails the test if it throws none).
template <typename F>
Error error_of(F&& f)
{
    try {
        f();
    } catch (const Error& e) {
        return e;
    }
    FAIL("no error");
    return {Errc::internal, "unreachable"};
}

TEST_CASE("auto-attach: a provisioning entry gives attach's claims", "[unit][auto-attach]")
{
    const auto e = diskcrypt::parse_provisioning_entry(kEntry + "allow_discards = true\n", "/p/d.toml");
    CHECK(e.source == "/p/d.toml");
    CHECK(e.serial == "disk-0042");
    CHECK(e.claims.disk_id == "disk-0042");
    CHECK(e.claims.type == "network-ssd");
    CHECK(e.claims.key == "hsm:disk-key");
    CHECK(e.claims.service_account == "vm-disks");
    CHECK(e.claims.allow_discards);
    CHECK(e.claims.device.empty());
    CHECK_FALSE(diskcrypt::parse_provisioning_entry(kEntry, "/p/d.toml").claims.allow_discards);
}

TEST_CASE("auto-attach: each refused entry names its file, line and reason", "[unit][auto-attach]")
{
    struct Case {
        std::string text;
        std::string message;
    };
    const std::vector<Case> cases{
        {kEntry + "pin = \"1234\"\n", "/p/d.toml:6: unknown key 'pin'"},
        {"serial = \"disk-0042\"\n", "'disk_id'"},
        {"serial = \" disk-0042\"\n" + kEntry.substr(kEntry.find('\n') + 1), "/p/d.toml:1:"},
        {"serial = \"disk/0042\"\n" + kEntry.substr(kEntry.find('\n') + 1), "is not 1 to 64 of [A-Za-z0-9._:-]"},
        {"serial = \"" + std::string(65, 'a') + "\"\n" + kEntry.substr(kEntry.find('\n') + 1), "/p/d.toml:1:"},
        {"serial = \"\"\n" + kEntry.substr(kEntry.find('\n') + 1), "/p/d.toml:1:"},
        {"serial = \"s\"\ndisk_id = \"bad id\"\ntype = \"network-ssd\"\nkey = \"hsm:k\"\nservice_account = \"sa\"\n",
         "/p/d.toml:2:"},
        {"serial = \"s\"\ndisk_id = \"d\"\ntype = \"local-ssd\"\nkey = \"hsm:k\"\nservice_account = \"sa\"\n",
         "/p/d.toml:3:"},
        {"serial = \"s\"\ndisk_id = \"d\"\ntype = \"network-ssd\"\nkey = \"no-provider\"\nservice_account = \"sa\"\n",
         "/p/d.toml:4:"},
        {"serial = \"s\"\ndisk_id = \"d\"\ntype = \"network-ssd\"\nkey = \"hsm:k\"\nservice_account = \"s a\"\n",
         "/p/d.toml:5:"},
        {kEntry + "allow_discards = \"yes\"\n", "/p/d.toml:6:"},
        {"serial = 42\n", "/p/d.toml:1:"},
        {"serial = \"unterminated\n", "/p/d.toml:1:"},
    };
    for (const auto& c : cases) {
        INFO(c.text);
        const Error e = error_of([&] { (void)diskcrypt::parse_provisioning_entry(c.text, "/p/d.toml"); });
        CHECK(e.code() == Errc::config);
        CHECK_THAT(std::string(e.what()), Contains(c.message));
    }
}

TEST_CASE("auto-attach: a serial as the kernel reports it", "[unit][auto-attach]")
{
    CHECK(diskcrypt::validate_serial("dc-auto-1") == "dc-auto-1");
    CHECK(diskcrypt::validate_serial("  S3ESNX0K123456  ") == "S3ESNX0K123456");  // NVMe pads with blanks
    CHECK(diskcrypt::validate_serial(std::string(64, 'x')) == std::string(64, 'x'));
    const std::vector<std::string> refused{
        "", "   ", "a b", "a/b", "a\x1b[31m", std::string(65, 'x'), std::string("a\0b", 3)};
    for (const std::string& bad : refused) {
        INFO(bad);
        const Error e = error_of([&] { (void)diskcrypt::validate_serial(bad); });
        CHECK(e.code() == Errc::device);
        const std::string m = e.what();
        CHECK(std::all_of(m.begin(), m.end(), [](char c) { return c >= 0x20 && c <= 0x7e; }));
    }
}

TEST_CASE("auto-attach: the provisioning folder has one entry per serial, in trusted files", "[unit][auto-attach]")
{
    diskcrypt::test::TempDir dir;
    const std::string& p = dir.path();
    // A missing folder holds no entry.
    CHECK_FALSE(diskcrypt::find_provisioning_entry(p + "/none", "disk-0042"));
    diskcrypt::test::write_file(dir / "a.toml", kEntry, 0644);
    diskcrypt::test::write_file(dir / "b.toml",
                                "serial = \"other\"\ndisk_id = \"d2\"\ntype = \"network-hdd\"\nkey = \"hsm:k\"\n"
                                "service_account = \"sa\"\n",
                                0600);
    diskcrypt::test::write_file(dir / "notes.txt", "not an entry", 0644);
    diskcrypt::test::write_file(dir / ".hidden.toml", "not an entry", 0644);
    const auto found = diskcrypt::find_provisioning_entry(p, "disk-0042");
    REQUIRE(found);
    CHECK(found->source == dir / "a.toml");
    CHECK(found->claims.disk_id == "disk-0042");
    CHECK(diskcrypt::find_provisioning_entry(p, "other")->claims.type == "network-hdd");
    CHECK_FALSE(diskcrypt::find_provisioning_entry(p, "unknown"));

    SECTION("two files claiming one serial are refused, naming both")
    {
        diskcrypt::test::write_file(dir / "c.toml", kEntry, 0644);
        const Error e = error_of([&] { (void)diskcrypt::find_provisioning_entry(p, "disk-0042"); });
        CHECK(e.code() == Errc::config);
        CHECK_THAT(std::string(e.what()), Contains(dir / "a.toml") && Contains(dir / "c.toml"));
    }
    SECTION("a file others may write is refused, whatever serial is asked for")
    {
        diskcrypt::test::write_file(dir / "c.toml", kEntry, 0644);
        REQUIRE(chmod((dir / "c.toml").c_str(), 0666) == 0);
        const Error e = error_of([&] { (void)diskcrypt::find_provisioning_entry(p, "other"); });
        CHECK(e.code() == Errc::config);
        CHECK_THAT(std::string(e.what()), Contains("writable by group or others"));
    }
    SECTION("a symbolic link is refused")
    {
        std::filesystem::create_symlink(dir / "a.toml", dir / "link.toml");
        const Error e = error_of([&] { (void)diskcrypt::find_provisioning_entry(p, "other"); });
        CHECK_THAT(std::string(e.what()), Contains("symbolic link"));
    }
    SECTION("an invalid file is refused with its line")
    {
        diskcrypt::test::write_file(dir / "c.toml", "serial = \"x\"\n", 0644);
        const Error e = error_of([&] { (void)diskcrypt::find_provisioning_entry(p, "other"); });
        CHECK_THAT(std::string(e.what()), Contains(dir / "c.toml"));
    }
    SECTION("a file larger than the bound is refused")
    {
        diskcrypt::test::write_file(dir / "c.toml", kEntry + "#" + std::string(diskcrypt::kMaxProvisioningBytes, 'x'),
                                    0644);
        const Error e = error_of([&] { (void)diskcrypt::find_provisioning_entry(p, "other"); });
        CHECK_THAT(std::string(e.what()), Contains("larger than"));
    }
}

TEST_CASE("auto-attach: a device number names a block device in sysfs", "[unit][auto-attach]")
{
    diskcrypt::test::TempDir sys;
    auto device = [&sys](const std::string& devno, const std::string& uevent) {
        std::string dir = sys / ("dev/block/" + devno);
        std::filesystem::create_directories(dir + "/device");
        diskcrypt::test::write_file(dir + "/uevent", uevent, 0644);
        return dir;
    };
    // virtio-blk: the serial beside the disk.
    const std::string vdb = device("253:16", "MAJOR=253\nMINOR=16\nDEVNAME=vdb\nDEVTYPE=disk\n");
    diskcrypt::test::write_file(vdb + "/serial", "dc-auto-1\n", 0644);
    auto id = diskcrypt::identify_block_device("253:16", sys.path());
    CHECK(id.devno == "253:16");
    CHECK(id.path == "/dev/vdb");
    CHECK(id.serial == "dc-auto-1");
    // NVMe: the controller's serial, padded with blanks.
    const std::string nvme = device("259:0", "MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\n");
    diskcrypt::test::write_file(nvme + "/device/serial", "S3ESNX0K123456      \n", 0644);
    id = diskcrypt::identify_block_device("259:0", sys.path());
    CHECK(id.path == "/dev/nvme0n1");
    CHECK(diskcrypt::validate_serial(id.serial) == "S3ESNX0K123456");
    // No serial at all: identified, and validate_serial refuses it later.
    (void)device("7:0", "MAJOR=7\nMINOR=0\nDEVNAME=loop0\n");
    CHECK(diskcrypt::identify_block_device("7:0", sys.path()).serial.empty());

    for (const std::string bad : {"", "253", "253:", ":16", "a:b", "253:16:1", "99999999999:1", "253:-1"}) {
        INFO(bad);
        CHECK(error_of([&] { (void)diskcrypt::identify_block_device(bad, sys.path()); }).code() == Errc::usage);
    }
    CHECK(error_of([&] { (void)diskcrypt::identify_block_device("8:0", sys.path()); }).code() == Errc::device);
    (void)device("8:1", "MAJOR=8\nMINOR=1\nDEVNAME=../etc/passwd\n");
    CHECK(error_of([&] { (void)diskcrypt::identify_block_device("8:1", sys.path()); }).code() == Errc::device);
    (void)device("8:2", "MAJOR=8\nMINOR=2\n");
    CHECK(error_of([&] { (void)diskcrypt::identify_block_device("8:2", sys.path()); }).code() == Errc::device);
}

}  // namespace auto_attach_unit
