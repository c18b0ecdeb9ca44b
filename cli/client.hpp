// The CLI's side of the agent protocol: one request, progress messages, one response.
#pragma once

#include <functional>
#include <string>

#include "agent/ipc/protocol.hpp"

namespace diskcrypt::cli {

// Seconds the CLI waits for a response (a format with a slow HSM included).
inline constexpr int kResponseTimeoutSeconds = 120;

// Sends `request` to the agent at `socket_path` and returns its parsed
// response. Error(agent_unavailable) if the agent cannot be reached or does
// not answer in time, Error(permission_denied) if the socket refuses the
// caller, Error(protocol) if the answer is malformed. Progress messages of a
// long operation go to `on_progress` (each one restarts the timeout).
proto::Response call_agent(const std::string& socket_path, const std::string& request,
                           const std::function<void(const nlohmann::json&)>& on_progress = {});

// Every attached disk: `list` page by page (each request through `call`,
// `after` = the previous page's `next`) until a page has no `next`. Returns
// {"disks": [all]} as one successful response, or the first error response.
// Error(protocol) if a page does not advance (a `next` not after the last).
proto::Response list_all(const std::function<proto::Response(const std::string& request)>& call);

// The audit trail: `audit` page by page, each page's events handed to
// `page` as they come (oldest first); the last response (its `events`
// empty) is returned, or the first that failed. A page whose `next` repeats
// the cursor just sent is a protocol error.
proto::Response audit_all(proto::AuditArgs args, const std::function<proto::Response(const std::string& request)>& call,
                          const std::function<void(nlohmann::json& page)>& page);

}  // namespace diskcrypt::cli
