// Request handling: authorisation by peer credentials, and protocol errors
// as error responses (no KMS is contacted by these requests).
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>

#include "agent/config.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ipc/server.hpp"
#include "agent/ops/attach.hpp"
#include "agent/policy/policy.hpp"
#include "agent/text.hpp"
#include "tests/support/support.hpp"

using nlohmann::json;

namespace {

const std::string kConfig =
    "[agent]\nstatus_group = \"nogroup\"\ndefault_key = \"hsm:k1\"\nlock_dir = \"/dev/shm/diskcrypt-unit-lock\"\n"
    "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/nonexistent/module.so\"\ntoken_label = \"t\"\n"
    "pin_file = \"/nonexistent/pin\"\n";

json call(const diskcrypt::AgentConfig& cfg, const diskcrypt::Peer& peer, const std::string& request)
{
    return json::parse(diskcrypt::handle_request(cfg, peer, request, std::chrono::steady_clock::now()));
}

}  // namespace

TEST_CASE("server: root may do everything, status group members only status", "[server]")
{
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(kConfig, "agent.toml");
    const diskcrypt::Peer root{1, 0, 0, {}};
    const diskcrypt::Peer member{2, 1000, 1000, {cfg.status_gid}};
    const diskcrypt::Peer primary{3, 1000, cfg.status_gid, {}};
    const diskcrypt::Peer stranger{4, 1000, 1000, {100}};
    const std::string status = R"({"protocol":1,"op":"status"})";
    const std::string format =
        R"({"protocol":1,"op":"format","args":{"device":"/nonexistent","disk_id":"d1","type":"network-ssd",)"
        R"("service_account":"sa1","user":"alice"}})";

    const json s = call(cfg, root, status);
    REQUIRE(s.at("ok") == true);
    CHECK(s.at("result").at("agent") == "diskcrypt-agent");
    CHECK(s.at("result").at("protocol") == 1);
    CHECK(s.at("result").at("default_key") == "hsm:k1");
    CHECK(s.at("result").at("providers") == json::array({{{"name", "hsm"}, {"type", "pkcs11"}}}));

    CHECK(call(cfg, member, status).at("ok") == true);
    CHECK(call(cfg, primary, status).at("ok") == true);

    const json denied = call(cfg, stranger, status);
    CHECK(denied.at("ok") == false);
    CHECK(denied.at("error").at("code") == "permission-denied");
    CHECK(denied.at("error").at("exit") == 4);
    CHECK(denied.at("error").at("message") == "op 'status' is not allowed for uid 1000 (pid 4)");

    const json no_format = call(cfg, member, format);
    CHECK(no_format.at("error").at("code") == "permission-denied");
    CHECK(no_format.at("error").at("message") == "op 'format' is not allowed for uid 1000 (pid 2)");
    CHECK(no_format.at("error").at("hint") == "run it as root");

    // recover (the token plugin's): root only, and only where the host
    // enables it, refused before the device is opened.
    const std::string recover = R"({"protocol":1,"op":"recover","args":{"device":"/nonexistent"}})";
    CHECK(call(cfg, member, recover).at("error").at("message") == "op 'recover' is not allowed for uid 1000 (pid 2)");
    const json disabled = call(cfg, root, recover);
    CHECK(disabled.at("error").at("code") == "not-supported");
    CHECK(disabled.at("error").at("exit") == 21);
    CHECK(disabled.at("error").at("message") == "break-glass recovery of /nonexistent is disabled on this host");
    CHECK_THAT(disabled.at("error").at("hint").get<std::string>(),
               Catch::Contains("[recovery] enabled = true in agent.toml"));
    const diskcrypt::AgentConfig enabled =
        diskcrypt::parse_config(kConfig + "[recovery]\nenabled = true\n", "agent.toml");
    CHECK(enabled.recovery);
    CHECK_FALSE(cfg.recovery);
    CHECK(call(enabled, root, recover).at("error").at("code") == "device");
    CHECK_THROWS_WITH(diskcrypt::parse_config(kConfig + "[recovery]\nenable = true\n", "agent.toml"),
                      Catch::Contains("[recovery]: unknown key 'enable'"));

    // Root gets past the socket's authorisation to the access policy, which
    // this agent does not have: every check is denied, before the device.
    const json root_format = call(cfg, root, format);
    CHECK(root_format.at("error").at("code") == "access-denied");
    CHECK(root_format.at("error").at("exit") == 18);
    CHECK(root_format.at("error").at("message") ==
          "access denied: userAccount:alice lacks iam.serviceAccounts.use on serviceAccount:sa1; userAccount:alice "
          "lacks kms.keys.get on key:hsm:k1; serviceAccount:sa1 lacks kms.keys.encrypt on key:hsm:k1 (access "
          "policy revision " +
              diskcrypt::policy::content_revision("") + ")");
    CHECK_THAT(root_format.at("error").at("hint").get<std::string>(),
               Catch::Matchers::StartsWith("this agent has no access policy ([agent] policy in agent.toml)"));
}

TEST_CASE("server: malformed requests become protocol errors", "[server]")
{
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(kConfig, "agent.toml");
    const diskcrypt::Peer root{1, 0, 0, {}};
    const json r = call(cfg, root, "{");
    CHECK(r.at("ok") == false);
    CHECK(r.at("protocol") == 1);
    CHECK(r.at("error").at("code") == "protocol");
    CHECK(r.at("error").at("exit") == 13);
    const json v = call(cfg, root,
                        R"({"protocol":1,"op":"format","args":{"device":"/d","disk_id":"d 1","type":"network-ssd",)"
                        R"("service_account":"s","user":"u"}})");
    CHECK(v.at("error").at("code") == "usage");
    CHECK(v.at("error").at("message") == "invalid disk id 'd 1': it must be 1-100 characters from A-Z a-z 0-9 . _ -");
}

TEST_CASE("server: one byte that is not UTF-8 is a protocol error, not the agent's end", "[server][hostile-peer]")
{
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(kConfig, "agent.toml");
    const diskcrypt::Peer stranger{4, 1000, 1000, {100}};
    for (const std::string& request : {std::string("\xff"), std::string("{\"protocol\":1,\"op\":\"\xff\"}"),
                                       std::string(R"({"protocol":1,"op":"status","args":{"disk_id":"\u001b[2J"}})")}) {
        const json r = call(cfg, stranger, request);
        CHECK(r.at("ok") == false);
        CHECK((r.at("error").at("code") == "protocol" || r.at("error").at("code") == "permission-denied"));
        const std::string message = r.at("error").at("message").get<std::string>();
        CHECK(diskcrypt::sanitize(message) == message);  // printable ASCII
    }
}

namespace {

std::vector<diskcrypt::DiskInfo> fake_disks(int n)
{
    std::vector<diskcrypt::DiskInfo> disks;
    for (int i = 0; i < n; ++i) {
        diskcrypt::DiskInfo d;
        std::string num = std::to_string(i);
        num.insert(0, 4 - num.size(), '0');
        d.disk_id = "fake" + num;
        d.mapping = "diskcrypt-" + d.disk_id;
        d.dm_uuid = "DISKCRYPT-" + d.disk_id;
        d.path = "/dev/mapper/" + d.mapping;
        d.dm_device = "dm-" + std::to_string(i);
        d.devno = "253:" + std::to_string(i);
        d.target = "diskcrypt";
        disks.push_back(d);
    }
    return disks;
}

}  // namespace

TEST_CASE("server: list is paged under the message size, headers read only for the page", "[server][list]")
{
    const auto disks = fake_disks(1000);
    std::vector<std::string> seen;
    std::optional<std::string> after;
    int pages = 0;
    std::size_t headers = 0;
    for (;;) {
        std::size_t page_headers = 0;
        const json page =
            diskcrypt::list_page(disks, after, diskcrypt::proto::kListPageBudget, [&](diskcrypt::DiskInfo& d) {
                ++page_headers;
                d.disk_type = "network-ssd";
            });
        ++pages;
        const std::string response = diskcrypt::proto::encode_result(page);
        CHECK(response.size() <= diskcrypt::proto::kMaxMessage);
        CHECK(page_headers >= page.at("disks").size());
        CHECK(page_headers <= page.at("disks").size() + 1);
        headers += page_headers;
        for (const auto& d : page.at("disks")) {
            CHECK(d.at("disk_type") == "network-ssd");
            seen.push_back(d.at("disk_id").get<std::string>());
        }
        if (!page.contains("next")) {
            break;
        }
        CHECK(page.at("next") == seen.back());
        after = page.at("next").get<std::string>();
        REQUIRE(pages < 100);
    }
    REQUIRE(seen.size() == 1000);
    for (std::size_t i = 0; i < seen.size(); ++i) {
        CHECK(seen[i] == disks[i].disk_id);
    }
    CHECK(pages > 1);
    CHECK(headers < 1000 + static_cast<std::size_t>(pages));
    // Few disks: one page, no next; past the end: empty.
    const json small = diskcrypt::list_page(fake_disks(3), std::nullopt, 1 << 16, [](diskcrypt::DiskInfo&) {});
    CHECK(small.at("disks").size() == 3);
    CHECK_FALSE(small.contains("next"));
    const json none = diskcrypt::list_page(fake_disks(3), "fake0002", 1 << 16, [](diskcrypt::DiskInfo&) {});
    CHECK(none.at("disks").empty());
    // A budget smaller than one disk still makes progress.
    const json one = diskcrypt::list_page(fake_disks(3), std::nullopt, 1, [](diskcrypt::DiskInfo&) {});
    CHECK(one.at("disks").size() == 1);
    CHECK(one.at("next") == "fake0000");
}

TEST_CASE("server: under socket activation the socket file decides the status group", "[server][systemd]")
{
    const diskcrypt::AgentConfig with = diskcrypt::parse_config(kConfig, "agent.toml");
    const diskcrypt::AgentConfig without = diskcrypt::parse_config(
        "[providers.hsm]\ntype = \"pkcs11\"\nmodule = \"/m.so\"\ntoken_label = \"t\"\npin_file = \"/p\"\n",
        "agent.toml");
    const diskcrypt::StatusGroup nogroup{with.status_gid, "nogroup"};
    const diskcrypt::StatusGroup other{with.status_gid + 1, "other"};
    // Agreeing, or nothing configured: the socket's group.
    CHECK(diskcrypt::activated_status_group(with, "/run/x.sock", nogroup)->gid == with.status_gid);
    CHECK(diskcrypt::activated_status_group(without, "/run/x.sock", other)->name == "other");
    CHECK_FALSE(diskcrypt::activated_status_group(without, "/run/x.sock", std::nullopt));
    // Disagreeing: refused, naming both sides and the socket unit's settings.
    for (const auto& from_socket : {std::optional<diskcrypt::StatusGroup>{}, std::optional{other}}) {
        try {
            (void)diskcrypt::activated_status_group(with, "/nonexistent/x.sock", from_socket);
            FAIL("accepted");
        } catch (const diskcrypt::Error& e) {
            CHECK(e.code() == diskcrypt::Errc::config);
            CHECK_THAT(e.what(), Catch::Matchers::Contains("[agent] status_group = \"nogroup\""));
            CHECK_THAT(e.what(), Catch::Matchers::Contains(from_socket ? "group other" : "no group"));
            CHECK_THAT(e.hint(), Catch::Matchers::Contains("SocketGroup=nogroup and SocketMode=0660"));
        }
    }
}

TEST_CASE("server: a connection whose thread cannot start is answered busy, and the agent serves on",
          "[server][hostile-peer]")
{
    const diskcrypt::AgentConfig cfg = diskcrypt::parse_config(kConfig, "agent.toml");
    const diskcrypt::test::TempDir dir;
    const std::string path = dir / "agent.sock";
    sigset_t old_mask;
    REQUIRE(pthread_sigmask(SIG_SETMASK, nullptr, &old_mask) == 0);
    {
        diskcrypt::Server server(cfg, path);
        int starts = 0;
        server.set_thread_starter([&starts](std::function<void()> fn) {
            if (starts++ == 0) {
                throw std::system_error(EAGAIN, std::generic_category(), "cannot create a thread");
            }
            std::thread(std::move(fn)).detach();
        });
        int rc = -1;
        std::thread runner([&] { rc = server.run(); });
        auto exchange = [&path](const std::string& request) {
            const diskcrypt::FileDescriptor fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
            sockaddr_un addr{};
            addr.sun_family = AF_UNIX;
            std::copy(path.begin(), path.end(), &addr.sun_path[0]);
            // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the sockets API
            REQUIRE(connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);
            (void)send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL);
            std::vector<char> buf(diskcrypt::proto::kMaxMessage);
            const ssize_t n = recv(fd.get(), buf.data(), buf.size(), 0);
            REQUIRE(n > 0);
            return json::parse(std::string(buf.data(), static_cast<std::size_t>(n)));
        };
        const std::string status = R"({"protocol":1,"op":"status"})";
        const json busy = exchange(status);
        CHECK(busy.at("error").at("code") == "busy");
        CHECK_THAT(busy.at("error").at("message").get<std::string>(),
                   Catch::Matchers::Contains("the agent cannot start a thread for this connection"));
        CHECK(exchange(status).at("ok") == true);
        // The server's signalfd reads SIGTERM for its own thread: the stop request, as systemd sends it.
        // NOLINTNEXTLINE(bugprone-bad-signal-to-kill-thread,cert-pos44-c)
        REQUIRE(pthread_kill(runner.native_handle(), SIGTERM) == 0);
        runner.join();
        CHECK(rc == 0);
    }
    REQUIRE(pthread_sigmask(SIG_SETMASK, &old_mask, nullptr) == 0);
}
