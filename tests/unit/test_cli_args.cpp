// The CLI's argument parsing, with argv vectors.
#include <catch2/catch.hpp>
#include <sstream>

#include "cli/args.hpp"

using Catch::Matchers::Contains;
using diskcrypt::cli::Arguments;
using diskcrypt::cli::Command;

namespace {

struct Parsed {
    std::optional<Arguments> args;
    int code = -1;
    std::string out;
    std::string err;
};

Parsed parse(std::vector<std::string> argv)
{
    argv.insert(argv.begin(), "diskcrypt");
    std::vector<const char*> ptrs;
    ptrs.reserve(argv.size());
    for (const auto& a : argv) {
        ptrs.push_back(a.c_str());
    }
    std::ostringstream out;
    std::ostringstream err;
    Parsed p;
    p.args = diskcrypt::cli::parse_arguments(static_cast<int>(ptrs.size()), ptrs.data(), out, err, p.code);
    p.out = out.str();
    p.err = err.str();
    return p;
}

}  // namespace

TEST_CASE("cli: format with every option", "[cli]")
{
    const Parsed p =
        parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k1", "--service-account",
               "sa1", "--lineage", "d0", "--sector-size", "4096", "--force", "--json", "--socket", "/tmp/a.sock"});
    REQUIRE(p.args.has_value());
    const Arguments& a = *p.args;
    CHECK(a.command == Command::format);
    CHECK(a.json);
    CHECK(a.socket == "/tmp/a.sock");
    CHECK(a.format.device == "/dev/vdb");
    CHECK(a.format.disk_id == "d1");
    CHECK(a.format.type == "network-ssd");
    CHECK(a.format.key == "hsm:k1");
    CHECK(a.format.service_account == "sa1");
    CHECK(a.format.lineage == "d0");
    CHECK(a.format.sector_size == 4096U);
    CHECK(a.format.force);
}

TEST_CASE("cli: format defaults, relative paths become absolute", "[cli]")
{
    const Parsed p = parse({"format", "disk.img", "--disk-id", "d1", "--type", "network-hdd"});
    REQUIRE(p.args.has_value());
    CHECK(p.args->socket == "/run/diskcrypt/agent.sock");
    CHECK_FALSE(p.args->json);
    CHECK(p.args->format.device.front() == '/');
    CHECK(p.args->format.device.size() > std::string("/disk.img").size());
    CHECK_FALSE(p.args->format.key.has_value());
    CHECK_FALSE(p.args->format.sector_size.has_value());
    CHECK_FALSE(p.args->format.force);
}

TEST_CASE("cli: verify and status", "[cli]")
{
    const Parsed v = parse({"--json", "verify", "/dev/vdb", "--disk-id", "d1"});
    REQUIRE(v.args.has_value());
    CHECK(v.args->command == Command::verify);
    CHECK(v.args->json);
    CHECK(v.args->verify.device == "/dev/vdb");
    CHECK(v.args->verify.disk_id == "d1");
    const Parsed s = parse({"status"});
    REQUIRE(s.args.has_value());
    CHECK(s.args->command == Command::status);
}

TEST_CASE("cli: usage errors exit 2 with a clear message", "[cli]")
{
    SECTION("no command")
    {
        const Parsed p = parse({});
        CHECK_FALSE(p.args);
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("A subcommand is required"));
    }
    SECTION("missing --disk-id")
    {
        const Parsed p = parse({"format", "/dev/vdb", "--type", "network-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("--disk-id is required"));
    }
    SECTION("missing device")
    {
        const Parsed p = parse({"format", "--disk-id", "d1", "--type", "network-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("device is required"));
    }
    SECTION("unknown option")
    {
        const Parsed p = parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--cipher", "x"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("--cipher"));
    }
    SECTION("sector size not a number")
    {
        const Parsed p =
            parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--sector-size", "4k"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("--sector-size"));
    }
    SECTION("invalid disk id")
    {
        const Parsed p = parse({"format", "/dev/vdb", "--disk-id", "d/1", "--type", "network-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("diskcrypt: error: invalid disk id 'd/1'"));
    }
    SECTION("local disk type")
    {
        const Parsed p = parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "local-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("local disks cannot be encrypted"));
        CHECK_THAT(p.err, Contains("diskcrypt: hint: only network-hdd"));
    }
    SECTION("unknown disk type, as JSON too")
    {
        const Parsed p = parse({"--json", "format", "/dev/vdb", "--disk-id", "d1", "--type", "ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("unknown disk type 'ssd'"));
        CHECK_THAT(p.out, Contains("\"code\": \"usage\""));
        CHECK_THAT(p.out, Contains("\"exit\": 2"));
    }
    SECTION("bad sector size")
    {
        const Parsed p =
            parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--sector-size", "8192"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("invalid sector size 8192"));
    }
    SECTION("bad key")
    {
        const Parsed p = parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--key", "k1"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("write it as PROVIDER:KEY_ID"));
    }
    SECTION("bad service account")
    {
        const Parsed p =
            parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--service-account", "a b"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("invalid service account"));
    }
    SECTION("bad lineage")
    {
        const Parsed p = parse({"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--lineage", "a b"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("invalid lineage id"));
    }
}

TEST_CASE("cli: --help exits 0 and lists the exit codes", "[cli]")
{
    const Parsed p = parse({"--help"});
    CHECK_FALSE(p.args);
    CHECK(p.code == 0);
    CHECK_THAT(p.out, Contains("format"));
    CHECK_THAT(p.out, Contains("Exit status:"));
    CHECK_THAT(p.out, Contains("10  KMS key missing"));
}

TEST_CASE("cli: attach, detach, status DISK-ID and list", "[cli][attach]")
{
    const Parsed a = parse({"attach", "disk.img", "--disk-id", "d1", "--service-account", "sa@x", "--json"});
    REQUIRE(a.args.has_value());
    CHECK(a.args->command == Command::attach);
    CHECK(a.args->json);
    CHECK(a.args->attach.device.front() == '/');
    CHECK(a.args->attach.disk_id == "d1");
    CHECK(a.args->attach.service_account == "sa@x");

    const Parsed d = parse({"detach", "d1", "--force"});
    REQUIRE(d.args.has_value());
    CHECK(d.args->command == Command::detach);
    CHECK(d.args->detach.disk_id == "d1");
    CHECK(d.args->detach.force);
    CHECK_FALSE(parse({"detach", "d1"}).args->detach.force);

    const Parsed s = parse({"status", "d1"});
    REQUIRE(s.args.has_value());
    CHECK(s.args->command == Command::status);
    CHECK(s.args->status.disk_id == std::optional<std::string>("d1"));
    CHECK_FALSE(parse({"status"}).args->status.disk_id.has_value());
    CHECK(parse({"list"}).args->command == Command::list);
}

TEST_CASE("cli: attach and detach usage errors exit 2", "[cli][attach]")
{
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"attach", "/dev/vdb", "--disk-id", "d1"}, "--service-account is required"},
        {{"attach", "/dev/vdb", "--service-account", "sa"}, "--disk-id is required"},
        {{"attach", "--disk-id", "d1", "--service-account", "sa"}, "device is required"},
        {{"attach", "/dev/vdb", "--disk-id", "d 1", "--service-account", "sa"}, "invalid disk id 'd 1'"},
        {{"attach", "/dev/vdb", "--disk-id", "d1", "--service-account", "s a"}, "invalid service account 's a'"},
        {{"detach"}, "disk-id is required"},
        {{"detach", "a/b"}, "invalid disk id 'a/b'"},
        {{"status", "a b"}, "invalid disk id 'a b'"},
        {{"list", "extra"}, "extra"},
    };
    for (const auto& [argv, text] : cases) {
        INFO(text);
        const Parsed p = parse(argv);
        CHECK_FALSE(p.args);
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains(text));
    }
}
