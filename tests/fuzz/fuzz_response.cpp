// Fuzz target: the CLI's side: the response decoder, then everything the CLI
// prints for a response (every command, text and --json), then `list` page by
// page (cli::list_all) with the input's lines as the agent's pages; and the
// token plugin's recover response (JSON, a NUL byte, the secret). A response
// comes from the agent, but its strings come from headers, devices and peers.
// diskcrypt::Error is the expected refusal; anything else is a finding.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "agent/error.hpp"
#include "agent/ipc/protocol.hpp"
#include "cli/args.hpp"
#include "cli/client.hpp"
#include "cli/output.hpp"

namespace {

using namespace diskcrypt;

void print(cli::Command command, const proto::Response& r)
{
    for (const bool json : {false, true}) {
        std::ostringstream out;
        std::ostringstream err;
        if (r.ok) {
            cli::print_result(command, r.result, json, out);
        } else {
            cli::print_error(r.code, r.message, r.hint, json, out, err);
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    static constexpr std::array kCommands{cli::Command::format, cli::Command::verify, cli::Command::status,
                                          cli::Command::attach, cli::Command::detach, cli::Command::list};
    try {
        const proto::Response r = proto::parse_response(text);
        for (const auto command : kCommands) {
            print(command, r);
        }
    } catch (const Error&) {
        // The CLI prints a protocol error.
    }
    // The token plugin's side: recover's response, JSON text, NUL, secret.
    try {
        std::span<const std::uint8_t> secret;
        const proto::Response r = proto::parse_recover_response(std::span<const std::uint8_t>(data, size), secret);
        if (r.ok && (secret.empty() || secret.data() < data || secret.data() + secret.size() > data + size)) {
            __builtin_trap();  // a secret outside the message
        }
    } catch (const Error&) {
        // The plugin logs it and fails the unlock.
    }

    // `list`: one page per line, at most 16 pages; no more pages is an agent
    // that went away.
    std::vector<std::string_view> pages;
    for (std::size_t at = 0; at <= text.size() && pages.size() < 16;) {
        const std::size_t end = std::min(text.find('\n', at), text.size());
        pages.push_back(text.substr(at, end - at));
        at = end + 1;
    }
    std::size_t next = 0;
    try {
        const proto::Response r = cli::list_all([&](const std::string& /*request*/) {
            if (next == pages.size()) {
                throw Error(Errc::agent_unavailable, "no more pages");
            }
            return proto::parse_response(pages[next++]);
        });
        print(cli::Command::list, r);
    } catch (const Error&) {
        // The CLI prints the error.
    }
    return 0;
}
