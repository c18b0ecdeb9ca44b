// The CLI's argument parsing, with argv vectors.
#include <algorithm>
#include <catch2/catch.hpp>
#include <sstream>

#include "agent/ipc/protocol.hpp"
#include "cli/args.hpp"
#include "cli/client.hpp"
#include "cli/output.hpp"

using Catch::Matchers::Contains;
using diskcrypt::cli::Arguments;
using diskcrypt::cli::Command;

namespace {

// "d<i>", built without operator+(const char*, std::string&&) (g++ 12's
// -Wrestrict false positive in Release builds).
std::string numbered_disk(int i)
{
    std::string s = "d";
    s += std::to_string(i);
    return s;
}

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
    const Parsed p = parse({"format",
                            "--user",
                            "u1",
                            "/dev/vdb",
                            "--disk-id",
                            "d1",
                            "--type",
                            "network-ssd",
                            "--key",
                            "hsm:k1",
                            "--service-account",
                            "sa1",
                            "--lineage",
                            "d0",
                            "--sector-size",
                            "4096",
                            "--force",
                            "--json",
                            "--socket",
                            "/tmp/a.sock"});
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
    CHECK(a.format.user == "u1");
    CHECK(a.format.lineage == "d0");
    CHECK(a.format.sector_size == 4096U);
    CHECK(a.format.force);
}

TEST_CASE("cli: format defaults, relative paths become absolute", "[cli]")
{
    const Parsed p = parse(
        {"format", "--service-account", "sa1", "--user", "u1", "disk.img", "--disk-id", "d1", "--type", "network-hdd"});
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
    const Parsed v = parse({"--json", "verify", "/dev/vdb", "--disk-id", "d1", "--type", "network-hdd", "--key",
                            "hsm:k1", "--service-account", "sa1"});
    REQUIRE(v.args.has_value());
    CHECK(v.args->command == Command::verify);
    CHECK(v.args->json);
    CHECK(v.args->verify.device == "/dev/vdb");
    CHECK(v.args->verify.disk_id == "d1");
    CHECK(v.args->verify.type == std::optional<std::string>("network-hdd"));
    CHECK(v.args->verify.key == "hsm:k1");
    CHECK(v.args->verify.service_account == "sa1");
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
        const Parsed p =
            parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--type", "network-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("--disk-id is required"));
    }
    SECTION("missing device")
    {
        const Parsed p =
            parse({"format", "--service-account", "sa1", "--user", "u1", "--disk-id", "d1", "--type", "network-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("device is required"));
    }
    SECTION("unknown option")
    {
        const Parsed p = parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id", "d1",
                                "--type", "network-ssd", "--cipher", "x"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("--cipher"));
    }
    SECTION("sector size not a number")
    {
        const Parsed p = parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id", "d1",
                                "--type", "network-ssd", "--sector-size", "4k"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("--sector-size"));
    }
    SECTION("invalid disk id")
    {
        const Parsed p = parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id", "d/1",
                                "--type", "network-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("diskcrypt: error: invalid disk id 'd/1'"));
    }
    SECTION("local disk type")
    {
        const Parsed p = parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id", "d1",
                                "--type", "local-ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("local disks cannot be encrypted"));
        CHECK_THAT(p.err, Contains("diskcrypt: hint: only network-hdd"));
    }
    SECTION("unknown disk type, as JSON too")
    {
        const Parsed p = parse({"--json", "format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id",
                                "d1", "--type", "ssd"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("unknown disk type 'ssd'"));
        CHECK_THAT(p.out, Contains("\"code\": \"usage\""));
        CHECK_THAT(p.out, Contains("\"exit\": 2"));
    }
    SECTION("bad sector size")
    {
        const Parsed p = parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id", "d1",
                                "--type", "network-ssd", "--sector-size", "8192"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("invalid sector size 8192"));
    }
    SECTION("bad key")
    {
        const Parsed p = parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id", "d1",
                                "--type", "network-ssd", "--key", "k1"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("write it as PROVIDER:KEY_ID"));
    }
    SECTION("bad service account")
    {
        const Parsed p = parse({"format", "--user", "u1", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd",
                                "--service-account", "a b"});
        CHECK(p.code == 2);
        CHECK_THAT(p.err, Contains("invalid service account"));
    }
    SECTION("bad lineage")
    {
        const Parsed p = parse({"format", "--service-account", "sa1", "--user", "u1", "/dev/vdb", "--disk-id", "d1",
                                "--type", "network-ssd", "--lineage", "a b"});
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
    const Parsed a = parse({"attach", "disk.img", "--disk-id", "d1", "--type", "network-ssd", "--key", "hsm:k1",
                            "--service-account", "sa@x", "--json"});
    REQUIRE(a.args.has_value());
    CHECK(a.args->command == Command::attach);
    CHECK(a.args->json);
    CHECK(a.args->attach.device.front() == '/');
    CHECK(a.args->attach.disk_id == "d1");
    CHECK(a.args->attach.service_account == "sa@x");
    CHECK(a.args->attach.type == "network-ssd");
    CHECK(a.args->attach.key == "hsm:k1");

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
        {{"attach", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--key", "h:k"},
         "--service-account is required"},
        {{"attach", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--service-account", "sa"},
         "--key is required"},
        {{"attach", "/dev/vdb", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa"}, "--type is required"},
        {{"attach", "/dev/vdb", "--type", "network-ssd", "--key", "h:k", "--service-account", "sa"},
         "--disk-id is required"},
        {{"attach", "--disk-id", "d1", "--type", "network-ssd", "--key", "h:k", "--service-account", "sa"},
         "device is required"},
        {{"attach", "/dev/vdb", "--disk-id", "d 1", "--type", "network-ssd", "--key", "h:k", "--service-account", "sa"},
         "invalid disk id 'd 1'"},
        {{"attach", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--key", "h:k", "--service-account", "s a"},
         "invalid service account 's a'"},
        {{"attach", "/dev/vdb", "--disk-id", "d1", "--type", "local-ssd", "--key", "h:k", "--service-account", "sa"},
         "local disks cannot be encrypted"},
        {{"attach", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--key", "k", "--service-account", "sa"},
         "PROVIDER:KEY_ID"},
        {{"verify", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--key", "h:k"},
         "--service-account is required"},
        {{"verify", "/dev/vdb", "--disk-id", "d1", "--type", "hdd", "--key", "h:k", "--service-account", "sa"},
         "unknown disk type 'hdd'"},
        {{"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--service-account", "sa"},
         "--user is required"},
        {{"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--user", "u"},
         "--service-account is required"},
        {{"format", "/dev/vdb", "--disk-id", "d1", "--type", "network-ssd", "--service-account", "sa", "--user", "a b"},
         "invalid user account 'a b'"},
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

TEST_CASE("cli: text output escapes what the agent sends (no terminal escapes)", "[cli][hostile-peer]")
{
    const std::string evil = std::string("\x1b[31mred\x1b]0;title\x07 \xff");
    const nlohmann::json disk = {
        {"disk_id", "d1"},        {"path", "/dev/mapper/diskcrypt-d1"},
        {"backing_device", evil}, {"size", 4096},
        {"sector_size", 4096},    {"open_count", 0},
        {"key_state", "valid"},   {"key", {{"provider", "hsm"}, {"id", evil}, {"version", "1"}}},
        {"holders", {evil}},      {"counters", {{evil, 1}}},
        {"luks_uuid", evil}};
    auto printable_only = [](const std::string& s) {
        return std::all_of(s.begin(), s.end(), [](char c) { return (c >= 0x20 && c <= 0x7e) || c == '\n'; });
    };
    for (const Command c :
         {Command::list, Command::status, Command::attach, Command::detach, Command::verify, Command::format}) {
        std::ostringstream out;
        const nlohmann::json r = c == Command::list ? nlohmann::json{{"disks", {disk}}} : disk;
        diskcrypt::cli::print_result(c, r, false, out);
        INFO(out.str());
        CHECK(printable_only(out.str()));
    }
    std::ostringstream list;
    diskcrypt::cli::print_result(Command::list, {{"disks", {disk}}}, false, list);
    CHECK_THAT(list.str(), Contains("\\x1b[31mred\\x1b]0;title\\x07 \\xff"));
    // --json: ASCII JSON, also for bytes that are not UTF-8.
    std::ostringstream json_out;
    diskcrypt::cli::print_result(Command::list, {{"disks", {disk}}}, true, json_out);
    CHECK(printable_only(json_out.str()));
    CHECK_THAT(json_out.str(), Contains("\\u001b[31mred"));
    // Errors: message and hint.
    std::ostringstream out;
    std::ostringstream err;
    diskcrypt::cli::print_error(diskcrypt::Errc::header, evil, evil, true, out, err);
    CHECK(printable_only(err.str()));
    CHECK(printable_only(out.str()));
    CHECK_THAT(err.str(), Contains("diskcrypt: error: \\x1b[31mred"));
}

TEST_CASE("cli: flags of another type and results that are no object print as not set", "[cli][hostile-peer]")
{
    // Found by the response fuzzer: "suspended": 5 made json::value() throw
    // type_error out of print_result, and the CLI ended in std::terminate.
    const nlohmann::json odd = {{"disk_id", "d1"}, {"path", "/dev/mapper/diskcrypt-d1"},
                                {"suspended", 5},  {"already_attached", "yes"},
                                {"forced", 1},     {"deferred", nullptr}};
    for (const Command c :
         {Command::list, Command::status, Command::attach, Command::detach, Command::verify, Command::format}) {
        for (const bool json : {false, true}) {
            for (const nlohmann::json& r : {odd, nlohmann::json(5), nlohmann::json::array({1}), nlohmann::json()}) {
                std::ostringstream out;
                INFO(r.dump());
                CHECK_NOTHROW(diskcrypt::cli::print_result(c, r, json, out));
            }
        }
    }
    std::ostringstream status;
    diskcrypt::cli::print_result(Command::status, odd, false, status);
    CHECK_THAT(status.str(), !Contains("(suspended)"));
    std::ostringstream attach;
    diskcrypt::cli::print_result(Command::attach, odd, false, attach);
    CHECK_THAT(attach.str(), Contains("d1: attached in - ms"));
    std::ostringstream detach;
    diskcrypt::cli::print_result(Command::detach, odd, false, detach);
    CHECK_THAT(detach.str(), Contains("Detached disk d1"));
}

TEST_CASE("cli: list follows the agent's pages into one result", "[cli][list]")
{
    // A fake agent: pages of 3 disks, `next` until disk 10.
    std::vector<std::string> requests;
    auto agent = [&requests](const std::string& request) {
        requests.push_back(request);
        const auto args = diskcrypt::proto::list_args(diskcrypt::proto::parse_request(request).args);
        const int from = args.after ? std::stoi(args.after->substr(1)) + 1 : 0;
        nlohmann::json disks = nlohmann::json::array();
        for (int i = from; i < std::min(from + 3, 10); ++i) {
            disks.push_back({{"disk_id", numbered_disk(i)}});
        }
        nlohmann::json result = {{"disks", disks}};
        if (from + 3 < 10) {
            result["next"] = numbered_disk(from + 2);
        }
        return diskcrypt::proto::parse_response(diskcrypt::proto::encode_result(result));
    };
    const auto r = diskcrypt::cli::list_all(agent);
    REQUIRE(r.ok);
    CHECK(r.result.at("disks").size() == 10);
    CHECK(r.result.at("disks").back().at("disk_id") == "d9");
    CHECK_FALSE(r.result.contains("next"));
    CHECK(requests.size() == 4);
    CHECK(requests.front() == R"({"args":{},"op":"list","protocol":1})");
    CHECK(requests.back() == R"({"args":{"after":"d8"},"op":"list","protocol":1})");
    // A page that does not advance is a protocol error, not a loop.
    auto stuck = [](const std::string&) {
        return diskcrypt::proto::parse_response(
            diskcrypt::proto::encode_result({{"disks", {{{"disk_id", "d0"}}}}, {"next", "d0"}}));
    };
    CHECK_THROWS_WITH(diskcrypt::cli::list_all(stuck),
                      "the agent's list page does not advance (its 'next' is not after the last)");
    // An error answer is returned as it is.
    auto refusing = [](const std::string&) {
        return diskcrypt::proto::parse_response(
            diskcrypt::proto::encode_error(diskcrypt::Error(diskcrypt::Errc::kernel, "no device-mapper")));
    };
    const auto e = diskcrypt::cli::list_all(refusing);
    CHECK_FALSE(e.ok);
    CHECK(e.code == diskcrypt::Errc::kernel);
}

TEST_CASE("cli: copy, rewrap and decrypt", "[cli][copy]")
{
    Parsed p = parse({"copy", "src.img", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa", "--user", "u",
                      "--to", "/dev/vdc", "--to-id", "s1", "--to-kind", "snapshot", "--json"});
    REQUIRE(p.args);
    CHECK(p.args->command == Command::copy);
    CHECK(p.args->json);
    CHECK(p.args->copy.device.front() == '/');
    CHECK(p.args->copy.target_kind == "snapshot");
    CHECK_FALSE(p.args->copy.target_type.has_value());

    p = parse({"rewrap", "/dev/vdb", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa", "--user", "u",
               "--to-key", "h:k2"});
    REQUIRE(p.args);
    CHECK(p.args->command == Command::rewrap);
    CHECK(p.args->rewrap.to_key == "h:k2");

    p = parse({"decrypt", "d1"});
    REQUIRE(p.args);
    CHECK(p.args->command == Command::decrypt);

    const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
        {{"copy", "/a", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa", "--user", "u", "--to", "/b",
          "--to-id", "s1", "--to-kind", "volume"},
         "--to-kind: volume not in {disk,snapshot,image}"},
        {{"copy", "/a", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa", "--user", "u", "--to", "/b",
          "--to-kind", "snapshot"},
         "--to-id is required"},
        {{"copy", "/a", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa", "--user", "u", "--to", "/b",
          "--to-id", "s 1", "--to-kind", "snapshot"},
         "invalid target id 's 1'"},
        {{"copy", "/a", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa", "--user", "u", "--to", "/b",
          "--to-id", "s1", "--to-kind", "disk", "--type", "local-ssd"},
         "local disks cannot be encrypted"},
        {{"rewrap", "/a", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa", "--user", "u", "--to-key",
          "k2"},
         "PROVIDER:KEY_ID"},
        {{"rewrap", "/a", "--disk-id", "d1", "--key", "h:k", "--service-account", "sa"}, "--user is required"},
        {{"decrypt"}, "disk-id is required"},
    };
    for (const auto& [argv, text] : bad) {
        INFO(text);
        const Parsed q = parse(argv);
        CHECK_FALSE(q.args);
        CHECK(q.code == 2);
        CHECK_THAT(q.err, Contains(text));
    }
}

TEST_CASE("cli: progress is a bar on a terminal, JSON lines with --json, nothing otherwise", "[cli][copy]")
{
    const nlohmann::json half = {{"operation", "copy"},  {"source", "d1"},        {"target", "s1"},
                                 {"done", 32ULL << 20U}, {"total", 64ULL << 20U}, {"rate_bytes_per_s", 8ULL << 20U},
                                 {"eta_s", 64ULL}};
    SECTION("a terminal: one line redrawn, ended by finish")
    {
        std::ostringstream out;
        std::ostringstream err;
        diskcrypt::cli::ProgressPrinter p(false, true, out, err);
        p.update(half);
        nlohmann::json full = half;
        full["done"] = 64ULL << 20U;
        full.erase("eta_s");
        p.update(full);
        p.finish();
        CHECK(out.str().empty());
        CHECK(err.str() ==
              "\rcopy [###############...............] 32.0 MiB of 64.0 MiB, 8.0 MiB/s, 1:04 left\x1b[K"
              "\rcopy [##############################] 64.0 MiB of 64.0 MiB, 8.0 MiB/s\x1b[K\n");
    }
    SECTION("not a terminal, no --json: nothing, and finish adds no line")
    {
        std::ostringstream out;
        std::ostringstream err;
        diskcrypt::cli::ProgressPrinter p(false, false, out, err);
        p.update(half);
        p.finish();
        CHECK(out.str().empty());
        CHECK(err.str().empty());
    }
    SECTION("--json: one line per message on stdout, on a terminal too")
    {
        std::ostringstream out;
        std::ostringstream err;
        diskcrypt::cli::ProgressPrinter p(true, true, out, err);
        p.update(half);
        p.update(half);
        p.finish();
        CHECK(err.str().empty());
        std::istringstream lines(out.str());
        std::string line;
        int n = 0;
        while (std::getline(lines, line)) {
            CHECK(nlohmann::json::parse(line).at("progress") == half);
            ++n;
        }
        CHECK(n == 2);
    }
    SECTION("an agent's figures are not trusted: more done than total, no total, escapes in the text")
    {
        std::ostringstream out;
        std::ostringstream err;
        diskcrypt::cli::ProgressPrinter p(false, true, out, err);
        p.update({{"operation", "copy\x1b[2J"}, {"done", ~0ULL}, {"total", 1ULL}});
        p.update({{"operation", "copy"}, {"done", 5ULL}, {"total", 0ULL}, {"rate_bytes_per_s", "fast"}});
        p.finish();
        // Our own erase-line sequences only.
        std::string rest = err.str();
        for (std::size_t at = 0; (at = rest.find("\x1b[K", at)) != std::string::npos;) {
            rest.erase(at, 3);
        }
        CHECK(rest.find('\x1b') == std::string::npos);
        CHECK_THAT(err.str(), Contains("copy\\x1b[2J [##############################] 16777216.0 TiB of 1 B"));
        CHECK_THAT(err.str(), Contains("copy [##############################] 5 B of 0 B, 0 B/s"));
    }
}

TEST_CASE("cli: auto-attach and auto-detach take MAJ:MIN or a block device's path", "[cli]")
{
    using diskcrypt::cli::Command;
    const Parsed a = parse({"auto-attach", "253:32"});
    REQUIRE(a.args);
    CHECK(a.args->command == Command::auto_attach);
    CHECK(a.args->autodev.devno == "253:32");
    const Parsed d = parse({"auto-detach", "253:32"});
    REQUIRE(d.args);
    CHECK(d.args->command == Command::auto_detach);
    // /dev/null is a character device: refused, exit 5, named.
    const Parsed c = parse({"auto-attach", "/dev/null"});
    CHECK_FALSE(c.args);
    CHECK(c.code == 5);
    CHECK_THAT(c.err, Catch::Matchers::Contains("'/dev/null' is not a block device"));
    // A path that is gone: say how to name it.
    const Parsed g = parse({"auto-detach", "/dev/no-such-disk"});
    CHECK_FALSE(g.args);
    CHECK(g.code == 5);
    CHECK_THAT(g.err, Catch::Matchers::Contains("MAJOR:MINOR"));
    CHECK_FALSE(parse({"auto-attach"}).args);
    CHECK(parse({"auto-attach"}).code == 2);
}

TEST_CASE("cli: key and check-keys", "[cli][keys]")
{
    for (const char* action : {"create", "rotate", "disable", "enable", "destroy"}) {
        const Parsed k = parse({"key", action, "hsm:k1", "--user", "alice"});
        REQUIRE(k.args.has_value());
        CHECK(k.args->command == Command::key);
        CHECK(k.args->key.action == action);
        CHECK(k.args->key.key == std::optional<std::string>("hsm:k1"));
        CHECK(k.args->key.user == "alice");
        CHECK_FALSE(k.args->key.force);
        CHECK_FALSE(k.args->key.provider.has_value());
    }
    CHECK(parse({"key", "destroy", "hsm:k1", "--user", "alice", "--force"}).args->key.force);
    const Parsed l = parse({"--json", "key", "list", "hsm", "--user", "alice"});
    REQUIRE(l.args.has_value());
    CHECK(l.args->key.action == "list");
    CHECK(l.args->key.provider == std::optional<std::string>("hsm"));
    CHECK_FALSE(l.args->key.key.has_value());
    CHECK_FALSE(parse({"key", "list", "--user", "alice"}).args->key.provider.has_value());
    CHECK(parse({"check-keys"}).args->command == Command::check_keys);
    const Parsed au = parse({"audit", "--disk", "d1", "--key", "hsm:k1", "--since", "-2h"});
    REQUIRE(au.args.has_value());
    CHECK(au.args->command == Command::audit);
    CHECK(au.args->audit.disk_id == std::optional<std::string>("d1"));
    CHECK(au.args->audit.key == std::optional<std::string>("hsm:k1"));
    CHECK(au.args->audit.since == std::optional<std::string>("-2h"));
    CHECK_FALSE(parse({"audit"}).args->audit.disk_id.has_value());

    for (const std::vector<std::string>& bad : {std::vector<std::string>{"key"},
                                                {"key", "create", "hsm:k1"},
                                                {"key", "create", "--user", "alice"},
                                                {"key", "frob", "hsm:k1", "--user", "alice"},
                                                {"key", "create", "nocolon", "--user", "alice"},
                                                {"key", "create", "hsm:k1", "--user", "bad user"},
                                                {"key", "rotate", "hsm:k1", "--user", "a", "--force"},
                                                {"key", "list", "Bad_Provider!", "--user", "alice"},
                                                {"check-keys", "extra"},
                                                {"audit", "--disk", "a b"},
                                                {"audit", "--key", "nocolon"}}) {
        INFO(bad.size());
        const Parsed p = parse(bad);
        CHECK_FALSE(p.args.has_value());
        CHECK(p.code == 2);
    }
}
