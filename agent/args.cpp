#include "agent/args.hpp"

#include <CLI/CLI.hpp>

#include "agent/config.hpp"
#include "agent/ipc/server.hpp"

namespace diskcrypt {

std::optional<AgentArguments> parse_agent_arguments(int argc, const char* const* argv, std::ostream& out,
                                                    std::ostream& err, int& exit_code)
{
    AgentArguments a;
    a.config = std::string(kDefaultConfigPath);
    CLI::App app{
        "diskcrypt-agent: holds the KMS credentials and formats and opens diskcrypt disks for the "
        "diskcrypt CLI, on a Unix socket",
        "diskcrypt-agent"};
    app.set_version_flag("--version", std::string(kAgentVersion));
    app.add_option("-c,--config", a.config, "configuration file")->capture_default_str();
    app.add_option("--socket", a.socket, "socket path (overrides [agent] socket)");
    app.add_option("--log-level", a.log_level, "error, warning, info or debug (overrides [agent] log_level)")
        ->check(CLI::IsMember({"error", "warning", "info", "debug"}));
    app.add_flag("--check-config", a.check_config, "validate the configuration and exit (0 valid, 12 invalid)");
    exit_code = 0;
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        exit_code = app.exit(e, out, err) == 0 ? 0 : 2;
        return std::nullopt;
    }
    return a;
}

}  // namespace diskcrypt
