// diskcrypt-agent's command line (CLI11), parsed into a plain struct.
#pragma once

#include <optional>
#include <ostream>
#include <string>

namespace diskcrypt {

struct AgentArguments {
    std::string config;                    // --config, default /etc/diskcrypt/agent.toml
    std::optional<std::string> socket;     // --socket, overrides [agent] socket
    std::optional<std::string> log_level;  // --log-level, overrides [agent] log_level
    bool check_config = false;             // --check-config: validate and exit
};

// Parses argv. On --help/--version or a usage error, prints to `out`/`err`,
// sets `exit_code` (0 or 2) and returns std::nullopt.
std::optional<AgentArguments> parse_agent_arguments(int argc, const char* const* argv, std::ostream& out,
                                                    std::ostream& err, int& exit_code);

}  // namespace diskcrypt
