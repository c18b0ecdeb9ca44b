// Fuzz target: the agent's request decoder (what any peer that can connect
// sends, parsed before authorisation), then the op's argument decoder.
// diskcrypt::Error is the expected refusal; anything else is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "agent/audit_query.hpp"
#include "agent/error.hpp"
#include "agent/ipc/protocol.hpp"
#include "agent/ops/key.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using namespace diskcrypt;
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    try {
        const proto::Request r = proto::parse_request(text);
        if (r.op == "format") {
            (void)proto::to_json(proto::format_args(r.args));
        } else if (r.op == "verify") {
            (void)proto::to_json(proto::verify_args(r.args));
        } else if (r.op == "attach") {
            (void)proto::to_json(proto::attach_args(r.args));
        } else if (r.op == "detach") {
            (void)proto::to_json(proto::detach_args(r.args));
        } else if (r.op == "status") {
            (void)proto::to_json(proto::status_args(r.args));
        } else if (r.op == "key") {
            const proto::KeyArgs k = proto::key_args(r.args);
            (void)proto::to_json(k);
            (void)parse_key_action(k.action);
        } else if (r.op == "audit") {
            const proto::AuditArgs a = proto::audit_args(r.args);
            (void)proto::to_json(a);
            if (a.since) {
                (void)audit::parse_since(*a.since, 1764776887);
            }
        } else if (r.op == "rewrap") {
            (void)proto::to_json(proto::rewrap_args(r.args));
        } else if (r.op == "copy") {
            (void)proto::to_json(proto::copy_args(r.args));
        }
        // What was accepted encodes and decodes again.
        (void)proto::parse_request(proto::encode_request(r.op, r.args));
    } catch (const Error&) {
        // A refusal: the agent answers it with an error response.
    }
    return 0;
}
