// What attach builds without device-mapper: names and dm uuids, the table
// from a LUKS2 header (and back), key descriptions, the disk lock, audit
// events, the new protocol ops.
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/audit.hpp"
#include "agent/disk/table.hpp"
#include "agent/disk_lock.hpp"
#include "agent/error.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ops/verify.hpp"
#include "tests/support/support.hpp"

using Catch::Matchers::Contains;
using diskcrypt::CryptTable;
using diskcrypt::DiskHeader;
using diskcrypt::Errc;
using diskcrypt::Error;
namespace proto = diskcrypt::proto;
namespace audit = diskcrypt::audit;

namespace {

DiskHeader header(unsigned sector_size)
{
    DiskHeader h;
    h.device = "/dev/vdb";
    h.luks_uuid = "d6925b77-1bab-4d6a-b5f4-f83896e1f896";
    h.cipher = "aes-xts-plain64";
    h.volume_key_bytes = 64;
    h.sector_size = sector_size;
    h.data_offset = 1048576;
    return h;
}

Errc code_of(const std::function<void()>& fn, std::string& message)
{
    try {
        fn();
    } catch (const Error& e) {
        message = e.what();
        return e.code();
    }
    FAIL("no error");
    return Errc::internal;
}

}  // namespace

TEST_CASE("attach: mapping names and dm uuids", "[attach]")
{
    CHECK(diskcrypt::mapping_name("fhm4c2b8r1d9q0x7") == "diskcrypt-fhm4c2b8r1d9q0x7");
    CHECK(diskcrypt::dm_uuid("fhm4c2b8r1d9q0x7") == "DISKCRYPT-fhm4c2b8r1d9q0x7");
    CHECK(diskcrypt::mapped_path("d.1_x-2") == "/dev/mapper/diskcrypt-d.1_x-2");
    CHECK(diskcrypt::disk_id_from_dm_uuid("DISKCRYPT-disk-1") == std::optional<std::string>("disk-1"));
    CHECK_FALSE(diskcrypt::disk_id_from_dm_uuid("CRYPT-LUKS2-d6925b771bab4d6ab5f4f83896e1f896-x").has_value());
    CHECK_FALSE(diskcrypt::disk_id_from_dm_uuid("DISKCRYPT-").has_value());
    CHECK_FALSE(diskcrypt::disk_id_from_dm_uuid("DISKCRYPT-a b").has_value());
    CHECK_FALSE(diskcrypt::disk_id_from_dm_uuid("diskcrypt-disk-1").has_value());
    // The longest disk id still fits a dm uuid (128 bytes) and name (127).
    const std::string longest(100, 'x');
    CHECK(diskcrypt::dm_uuid(longest).size() == 110);
    std::string message;
    CHECK(code_of([] { (void)diskcrypt::mapping_name("../etc"); }, message) == Errc::usage);
    CHECK_THAT(message, Contains("invalid disk id '../etc'"));
    CHECK(code_of([&] { (void)diskcrypt::dm_uuid(longest + "x"); }, message) == Errc::usage);
}

TEST_CASE("attach: key descriptions name the LUKS UUID and are fresh", "[attach]")
{
    const std::string uuid = "d6925b77-1bab-4d6a-b5f4-f83896e1f896";
    const std::string a = diskcrypt::new_key_description(uuid);
    const std::string b = diskcrypt::new_key_description(uuid);
    CHECK(a != b);
    CHECK(a.starts_with("diskcrypt:" + uuid + ":"));
    CHECK(a.size() == std::string("diskcrypt:").size() + uuid.size() + 1 + 16);
    CHECK(diskcrypt::luks_uuid_from_key_description(a) == std::optional<std::string>(uuid));
    CHECK_FALSE(diskcrypt::luks_uuid_from_key_description("cryptsetup:" + uuid + "-d0").has_value());
}

TEST_CASE("attach: the table mirrors the LUKS2 segment", "[attach]")
{
    SECTION("512-byte sectors")
    {
        const CryptTable t = diskcrypt::table_from_header(header(512), 254, 16, 64ULL << 20U, "diskcrypt:u:0011");
        CHECK(t.length == 63ULL * 2048);
        CHECK(t.params() == "aes-xts-plain64 :64:logon:diskcrypt:u:0011 0 254:16 2048");
    }
    SECTION("4096-byte sectors: sector_size, IVs still in 512-byte units as cryptsetup does")
    {
        const CryptTable t = diskcrypt::table_from_header(header(4096), 8, 0, 64ULL << 20U, "diskcrypt:u:0011");
        CHECK(t.params() == "aes-xts-plain64 :64:logon:diskcrypt:u:0011 0 8:0 2048 1 sector_size:4096");
        CHECK_FALSE(t.iv_large_sectors);
    }
    SECTION("IV offset; discards are the attach's decision, never the header's persistent flag")
    {
        DiskHeader h = header(512);
        h.iv_offset = 8;
        h.allow_discards = true;
        const CryptTable no = diskcrypt::table_from_header(h, 8, 1, 3ULL << 20U, "k");
        CHECK(no.params() == "aes-xts-plain64 :64:logon:k 8 8:1 2048");
        CHECK(no.length == 4096);
        h.allow_discards = false;
        const CryptTable yes = diskcrypt::table_from_header(h, 8, 1, 3ULL << 20U, "k", true);
        CHECK(yes.params() == "aes-xts-plain64 :64:logon:k 8 8:1 2048 1 allow_discards");
    }
}

TEST_CASE("attach: segments diskcrypt does not map are refused", "[attach]")
{
    std::string message;
    DiskHeader cbc = header(512);
    cbc.cipher = "aes-cbc-essiv:sha256";
    CHECK(code_of([&] { (void)diskcrypt::table_from_header(cbc, 8, 0, 64ULL << 20U, "k"); }, message) == Errc::header);
    CHECK_THAT(message, Contains("uses aes-cbc-essiv:sha256 with a 512-bit key; diskcrypt attaches only "
                                 "aes-xts-plain64 with a 512-bit key"));
    DiskHeader small_key = header(512);
    small_key.volume_key_bytes = 32;
    CHECK(code_of([&] { (void)diskcrypt::table_from_header(small_key, 8, 0, 64ULL << 20U, "k"); }, message) ==
          Errc::header);
    CHECK_THAT(message, Contains("with a 256-bit key"));
    CHECK(code_of([] { (void)diskcrypt::table_from_header(header(512), 8, 0, 1048576, "k"); }, message) ==
          Errc::device);
    CHECK_THAT(message, Contains("has no room for data after the header"));
    CHECK(code_of([] { (void)diskcrypt::table_from_header(header(4096), 8, 0, (64ULL << 20U) + 512, "k"); }, message) ==
          Errc::device);
    CHECK_THAT(message, Contains("is not a multiple of the sector size 4096"));
}

TEST_CASE("attach: tables parse back from dmsetup table", "[attach]")
{
    DiskHeader h = header(4096);
    const CryptTable t =
        diskcrypt::table_from_header(h, 254, 16, 64ULL << 20U, "diskcrypt:" + h.luks_uuid + ":ab", true);
    const auto back = diskcrypt::parse_table_params(t.length, t.params());
    REQUIRE(back.has_value());
    CHECK(back->params() == t.params());
    CHECK(back->backing_devno() == "254:16");
    CHECK(back->sector_size == 4096);
    CHECK(diskcrypt::luks_uuid_from_key_description(back->key_description) == std::optional(h.luks_uuid));
    for (const char* bad :
         {"", "aes-xts-plain64", "aes-cbc-plain :64:logon:k 0 8:0 0", "aes-xts-plain64 :32:logon:k 0 8:0 0",
          "aes-xts-plain64 :64:logon:k x 8:0 0", "aes-xts-plain64 :64:logon:k 0 8-0 0",
          "aes-xts-plain64 :64:logon:k 0 8:0 0 2 iv_large_sectors",
          "aes-xts-plain64 :64:logon:k 0 8:0 0 1 inline_depth:x"}) {
        INFO(bad);
        CHECK_FALSE(diskcrypt::parse_table_params(8, bad).has_value());
    }
}

TEST_CASE("attach: a profile's table options, written and parsed back", "[attach][profile]")
{
    DiskHeader h = header(512);
    CryptTable t = diskcrypt::table_from_header(h, 254, 0, 64ULL << 20U, "diskcrypt:" + h.luks_uuid + ":ab");
    diskcrypt::DiskProfile p = diskcrypt::encryptable_disk_type("network-ssd").profile;
    diskcrypt::apply_profile(t, p);
    CHECK_THAT(t.params(), Catch::Matchers::EndsWith(" 254:0 2048 1 zero_unwritten"));
    p.zero_unwritten = false;
    p.read_workqueue = true;
    p.write_workqueue = true;
    p.inline_depth = 0;
    diskcrypt::apply_profile(t, p);
    t.allow_discards = true;
    CHECK_THAT(t.params(), Catch::Matchers::EndsWith(" 254:0 2048 4 allow_discards read_workqueue write_workqueue "
                                                     "inline_depth:0"));
    const auto back = diskcrypt::parse_table_params(t.length, t.params());
    REQUIRE(back.has_value());
    CHECK(back->params() == t.params());
    CHECK(back->read_workqueue);
    CHECK(back->write_workqueue);
    CHECK_FALSE(back->zero_unwritten);
    CHECK(back->inline_depth == std::optional<unsigned>(0));
    p = diskcrypt::DiskProfile{};
    diskcrypt::apply_profile(t, p);
    t.allow_discards = false;
    CHECK_THAT(t.params(), Catch::Matchers::EndsWith(" 254:0 2048 1 zero_unwritten"));
}

TEST_CASE("attach: one operation per disk, different disks in parallel", "[attach][lock]")
{
    const diskcrypt::test::TempDir dir;
    const std::string locks = dir / "lock";
    auto a = diskcrypt::lock_disk(locks, "disk-a");
    CHECK(a.held());
    // Another disk does not wait.
    const auto b = diskcrypt::lock_disk(locks, "disk-b", std::chrono::milliseconds(0));
    CHECK(b.held());
    // The same disk, from another thread (another open file: as another agent would be).
    std::string message;
    auto other = std::async(std::launch::async, [&] {
        return code_of([&] { (void)diskcrypt::lock_disk(locks, "disk-a", std::chrono::milliseconds(100)); }, message);
    });
    CHECK(other.get() == Errc::busy);
    CHECK_THAT(message, Contains("another operation on disk disk-a is still running"));
    // Released: a waiter gets it.
    auto waiter = std::async(std::launch::async,
                             [&] { return diskcrypt::lock_disk(locks, "disk-a", std::chrono::seconds(5)).held(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    a = diskcrypt::FileLock();
    CHECK(waiter.get());
    CHECK(code_of([&] { (void)diskcrypt::lock_disk(locks, "../x"); }, message) == Errc::usage);
}

TEST_CASE("audit: events as JSON lines and journal fields, refusals told from failures", "[audit]")
{
    audit::Context ctx;
    ctx.op = "attach";
    ctx.uid = 0;
    ctx.pid = 4242;
    ctx.disk_id = "disk-1";
    ctx.service_account = "sa-1";
    ctx.device = "/dev/vdb";
    ctx.key = diskcrypt::KeyRef{"hsm", "disk-key-01", "1"};
    ctx.luks_uuid = "u-1";
    ctx.policy_revision = "sha256:ab";
    const audit::Event ok{"unwrap", "ok", ctx, "", ""};
    const auto j = audit::to_json(ok, "2026-11-22T13:24:00Z");
    CHECK(
        j.dump() ==
        R"({"time":"2026-11-22T13:24:00Z","event":"unwrap","result":"ok","op":"attach","disk_id":"disk-1",)"
        R"("service_account":"sa-1","user":null,"caller":{"uid":0,"pid":4242},"device":"/dev/vdb",)"
        R"("luks_uuid":"u-1","policy_revision":"sha256:ab","reason":null,"message":null,"key":{"provider":"hsm","id":"disk-key-01","version":"1"}})");

    audit::Event refused{"attach", "refused", ctx, "binding", "this header belongs to disk disk-2, not disk-1"};
    refused.context.key.reset();
    const std::vector<std::string> f = audit::journal_fields(refused);
    const std::string message_field =
        "MESSAGE=audit: attach refused disk=disk-1 uid=0 pid=4242 reason=binding: this header belongs to disk "
        "disk-2, not disk-1";
    const std::vector<std::string> expected = {
        message_field,
        "PRIORITY=5",
        "SYSLOG_IDENTIFIER=diskcrypt-agent",
        "DISKCRYPT_EVENT=attach",
        "DISKCRYPT_RESULT=refused",
        "DISKCRYPT_OP=attach",
        "DISKCRYPT_DISK_ID=disk-1",
        "DISKCRYPT_SERVICE_ACCOUNT=sa-1",
        "DISKCRYPT_POLICY_REVISION=sha256:ab",
        "DISKCRYPT_DEVICE=/dev/vdb",
        "DISKCRYPT_LUKS_UUID=u-1",
        "DISKCRYPT_REASON=binding",
        "DISKCRYPT_CALLER_UID=0",
        "DISKCRYPT_CALLER_PID=4242",
    };
    CHECK(f == expected);
    CHECK(audit::to_json(refused, "t")["key"].is_null());

    for (const Errc c : {Errc::usage, Errc::permission_denied, Errc::binding, Errc::busy, Errc::conflict,
                         Errc::not_attached, Errc::device_not_empty}) {
        CHECK(audit::is_refusal(c));
    }
    for (const Errc c : {Errc::internal, Errc::kms_unavailable, Errc::kms_auth, Errc::kms_key, Errc::kernel,
                         Errc::device, Errc::header}) {
        CHECK_FALSE(audit::is_refusal(c));
    }
}

TEST_CASE("audit: KMS calls are events of the current request, with the outcome", "[audit]")
{
    const diskcrypt::test::TempDir dir;
    const std::string file = dir / "audit.jsonl";
    audit::configure(audit::Settings{file, audit::Journal::never});
    const diskcrypt::KeyRef key{"hsm", "k1", "1"};
    // Outside a request: no event.
    CHECK(audit::kms_call("unwrap", key, [] { return 1; }) == 1);
    {
        audit::Context vctx;
        vctx.op = "verify";
        vctx.pid = 7;
        vctx.disk_id = "disk-1";
        vctx.service_account = "sa-1";
        vctx.device = "/dev/vdb";
        const audit::Scope scope(vctx);
        CHECK(audit::kms_call("unwrap", key, [] { return 2; }) == 2);
        CHECK_THROWS_AS(
            audit::kms_call("unwrap", key, []() -> int { throw Error(Errc::binding, "the KMS refused to unwrap"); }),
            Error);
    }
    CHECK(audit::current() == nullptr);
    const std::string text = diskcrypt::test::read_file(file);
    CHECK_THAT(text, Contains(R"("event":"unwrap","result":"ok","op":"verify","disk_id":"disk-1")"));
    CHECK_THAT(text, Contains(R"("result":"refused")"));
    CHECK_THAT(text, Contains(R"("reason":"binding","message":"the KMS refused to unwrap")"));
    CHECK(std::count(text.begin(), text.end(), '\n') == 2);
    audit::configure(audit::Settings{});
    std::string message;
    CHECK(code_of(
              [&] {
                  audit::configure(audit::Settings{dir / "no/such/dir/a.jsonl", audit::Journal::never});
              },
              message) == Errc::config);
    CHECK_THAT(message, Contains("cannot open the audit file"));
}

TEST_CASE("protocol: attach, detach, list and status requests", "[protocol][attach]")
{
    const proto::AttachArgs a{"/dev/vdb", "disk-1", "network-ssd", "hsm:k1", "sa-1", false};
    const proto::Request r = proto::parse_request(proto::encode_request("attach", proto::to_json(a)));
    CHECK(r.op == "attach");
    const proto::AttachArgs b = proto::attach_args(r.args);
    CHECK(b.device == a.device);
    CHECK(b.disk_id == a.disk_id);
    CHECK(b.service_account == a.service_account);
    CHECK(b.type == "network-ssd");
    CHECK(b.key == "hsm:k1");

    const proto::Request d =
        proto::parse_request(proto::encode_request("detach", proto::to_json(proto::DetachArgs{"d", true})));
    CHECK(proto::detach_args(d.args).force);
    CHECK_FALSE(proto::detach_args(nlohmann::json{{"disk_id", "d"}}).force);
    CHECK(proto::parse_request(R"({"protocol":1,"op":"list"})").op == "list");
    const proto::Request s = proto::parse_request(R"({"protocol":1,"op":"status","args":{"disk_id":"d1"}})");
    CHECK(proto::status_args(s.args).disk_id == std::optional<std::string>("d1"));
    CHECK_FALSE(proto::status_args(nlohmann::json::object()).disk_id.has_value());

    const std::vector<std::pair<std::string, std::string>> refused = {
        {R"({"protocol":1,"op":"attach","args":{"device":"/dev/vdb","disk_id":"d","type":"network-ssd","key":"h:k"}})",
         "op attach: missing argument 'service_account'"},
        {R"({"protocol":1,"op":"attach","args":{"device":"/dev/vdb","disk_id":"d","type":"network-ssd","service_account":"s"}})",
         "op attach: missing argument 'key'"},
        {R"({"protocol":1,"op":"verify","args":{"device":"/dev/vdb","disk_id":"d","type":"network-ssd","key":"h:k"}})",
         "op verify: missing argument 'service_account'"},
        {R"({"protocol":1,"op":"detach","args":{"disk_id":"d","force":"yes"}})",
         "op detach: argument 'force' must be a boolean"},
        {R"({"protocol":1,"op":"list","args":{"disk_id":"d"}})", "op list: unknown argument 'disk_id'"},
        {R"({"protocol":1,"op":"status","args":{"disk_id":1}})", "op status: argument 'disk_id' must be a string"},
    };
    for (const auto& [text, message] : refused) {
        INFO(text);
        try {
            (void)proto::parse_request(text);
            FAIL("accepted");
        } catch (const Error& e) {
            CHECK(e.code() == Errc::protocol);
            CHECK(std::string(e.what()) == message);
        }
    }
}

TEST_CASE("attach: LUKS2 UUIDs must have the canonical form", "[attach][uuid]")
{
    CHECK(diskcrypt::is_luks_uuid("d6925b77-1bab-4d6a-b5f4-f83896e1f896"));
    CHECK(diskcrypt::is_luks_uuid("D6925B77-1BAB-4D6A-B5F4-F83896E1F896"));
    for (const std::string& bad : std::vector<std::string>{
             "", "d6925b77", "d6925b77-1bab-4d6a-b5f4-f83896e1f89", "d6925b77-1bab-4d6a-b5f4-f83896e1f8966",
             "d6925b77x1bab-4d6a-b5f4-f83896e1f896", "g6925b77-1bab-4d6a-b5f4-f83896e1f896",
             "d6925b77-1bab-4d6a-b5f4-f83896e1f 96", "d6925b77-1bab-4d6a-b5f4-f83896e1f89\xff"}) {
        INFO(bad);
        CHECK_FALSE(diskcrypt::is_luks_uuid(bad));
        CHECK_THROWS_AS(diskcrypt::new_key_description(bad), Error);
        CHECK_FALSE(diskcrypt::luks_uuid_from_key_description("diskcrypt:" + bad + ":0011223344556677").has_value());
    }
    std::string message;
    CHECK(code_of([] { diskcrypt::validate_luks_uuid("a b\xff", "device /dev/vdb"); }, message) == Errc::header);
    CHECK_THAT(message, Contains("device /dev/vdb: the LUKS2 UUID 'a b\\xff' is not in the canonical form"));
}

TEST_CASE("attach: each disk type's profile says whether discards are allowed", "[attach][discards]")
{
    for (const auto& t : diskcrypt::disk_types()) {
        INFO(t.name);
        const bool ssd = t.encryptable && t.name.find("ssd") != std::string_view::npos;
        CHECK(t.profile.discards == ssd);
        CHECK_THAT(std::string(t.description), Contains(t.profile.discards ? "discards on request" : ""));
        // Every network type reads never-written blocks as zeros; the target's default queueing.
        CHECK(t.profile.zero_unwritten == t.encryptable);
        CHECK_FALSE(t.profile.read_workqueue);
        CHECK_FALSE(t.profile.write_workqueue);
        CHECK_FALSE(t.profile.inline_depth.has_value());
    }
}

TEST_CASE("attach: the device is opened once, without blocking, and must stay the same", "[attach][device]")
{
    const diskcrypt::test::TempDir dir;
    const std::string fifo = dir / "fifo";
    REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
    std::string message;
    // A FIFO with no writer: the open must not block (O_NONBLOCK) and the answer is a device error.
    auto answer = std::async(std::launch::async,
                             [&] { return code_of([&] { (void)diskcrypt::open_device_once(fifo, true); }, message); });
    REQUIRE(answer.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
    CHECK(answer.get() == Errc::device);
    CHECK_THAT(message, Contains("is neither a block device nor a regular file (it is a FIFO)"));
    CHECK(code_of([&] { (void)diskcrypt::open_device_once(fifo, false); }, message) == Errc::device);
    CHECK_THAT(message, Contains("is not a block device (it is a FIFO)"));
    CHECK(code_of([] { (void)diskcrypt::open_device_once("/dev/null", false); }, message) == Errc::device);
    CHECK_THAT(message, Contains("is not a block device (it is a character device)"));
    CHECK(code_of([] { (void)diskcrypt::open_device_once("dev/vdb", false); }, message) == Errc::usage);
    // Paths are quoted escaped.
    CHECK(code_of([&] { (void)diskcrypt::open_device_once(dir / "no\xff", false); }, message) == Errc::device);
    CHECK_THAT(message, Contains("no\\xff"));
    // A regular file where verify accepts it; the recheck wants the block device it recorded.
    const std::string file = dir / "file";
    diskcrypt::test::write_file(file, "x");
    diskcrypt::OpenedDevice d = diskcrypt::open_device_once(file, true);
    CHECK_FALSE(d.block);
    CHECK(d.fd_path == "/proc/self/fd/" + std::to_string(d.fd.get()));
    d.devno = makedev(8, 0);
    CHECK(code_of([&] { diskcrypt::recheck_device(d); }, message) == Errc::device);
    CHECK_THAT(message, Contains("changed during the operation (it was 8:0, it is now a regular file)"));
}
