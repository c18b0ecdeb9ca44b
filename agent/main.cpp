// diskcrypt-agent: parse arguments, harden the process, load the
// configuration, serve the socket.
#include <libcryptsetup.h>
#include <unistd.h>

#include <iostream>

#include "agent/args.hpp"
#include "agent/audit.hpp"
#include "agent/config.hpp"
#include "agent/error.hpp"
#include "agent/ipc/server.hpp"
#include "agent/log.hpp"
#include "agent/secure_buffer.hpp"

int main(int argc, char** argv)
{
    using namespace diskcrypt;
    set_log_program("diskcrypt-agent");
    int code = 0;
    const auto args = parse_agent_arguments(argc, argv, std::cout, std::cerr, code);
    if (!args) {
        return code;
    }
    try {
        // Before any secret exists: no core dumps, no ptrace by non-root.
        harden_process();
        // A header names token types; libcryptsetup would dlopen
        // libcryptsetup-token-<type>.so for any of them. Never in the agent.
        crypt_token_external_disable();
        route_libcryptsetup_log();
        AgentConfig cfg = load_config(args->config);
        LogLevel level = cfg.log_level;
        if (args->log_level) {
            (void)parse_log_level(*args->log_level, level);
        }
        set_log_level(level);
        if (args->socket) {
            cfg.socket_path = *args->socket;
        }
        if (args->check_config) {
            std::string policy = "no access policy";
            if (cfg.policy_path) {
                // Read and parsed as at start; nothing is audited.
                const policy::FilePolicySource source(*cfg.policy_path, {});
                policy = "access policy " + *cfg.policy_path + " valid";
            }
            std::cout << args->config << ": valid (" << cfg.providers.size() << " provider"
                      << (cfg.providers.size() == 1 ? "" : "s") << "; " << policy << ")\n";
            return 0;
        }
        if (geteuid() != 0) {
            log_warning("not running as root: devices and mlock may be refused");
        }
        audit::configure(cfg.audit);
        open_policy(cfg);
        Server server(cfg, cfg.socket_path);
        return server.run();
    } catch (const Error& e) {
        log_error(std::string(e.what()) + (e.hint().empty() ? "" : " (" + e.hint() + ")"));
        return exit_status(e.code());
    } catch (const std::exception& e) {
        log_error(std::string("unexpected failure: ") + e.what());
        return 1;
    }
}
