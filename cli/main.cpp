// diskcrypt: parse arguments, send one request to the agent, print the answer.
#include <unistd.h>

#include <iostream>

#include "agent/error.hpp"
#include "cli/args.hpp"
#include "cli/client.hpp"
#include "cli/output.hpp"

int main(int argc, char** argv)
{
    using namespace diskcrypt;
    int code = 0;
    const auto args = cli::parse_arguments(argc, argv, std::cout, std::cerr, code);
    if (!args) {
        return code;
    }
    try {
        if (args->command == cli::Command::list) {
            // Page by page: the agent answers at most one page per request.
            const proto::Response r =
                cli::list_all([&](const std::string& request) { return cli::call_agent(args->socket, request); });
            if (!r.ok) {
                cli::print_error(r.code, r.message, r.hint, args->json, std::cout, std::cerr);
                return exit_status(r.code);
            }
            cli::print_result(args->command, r.result, args->json, std::cout);
            return 0;
        }
        if (args->command == cli::Command::audit) {
            // Page by page; text is printed as the pages come, JSON is one
            // document {"source", "skipped", "events": [...]} at the end.
            nlohmann::json all = nlohmann::json::array();
            std::size_t skipped = 0;
            bool header = false;
            const proto::Response r = cli::audit_all(
                args->audit, [&](const std::string& request) { return cli::call_agent(args->socket, request); },
                [&](nlohmann::json& page) {
                    skipped += page.value("skipped", std::size_t{0});
                    if (args->json) {
                        for (auto& e : page.at("events")) {
                            all.push_back(std::move(e));
                        }
                    } else {
                        cli::print_audit_events(page, std::cout);
                        header = header || !page.at("events").empty();
                    }
                });
            if (!r.ok) {
                cli::print_error(r.code, r.message, r.hint, args->json, std::cout, std::cerr);
                return exit_status(r.code);
            }
            nlohmann::json done = {{"source", r.result.value("source", "")}, {"skipped", skipped}, {"events", all}};
            if (args->json) {
                cli::print_result(args->command, done, true, std::cout);
            } else {
                cli::print_audit_end(done, header, std::cout);
            }
            return 0;
        }
        std::string request;
        switch (args->command) {
            case cli::Command::format:
                request = proto::encode_request("format", proto::to_json(args->format));
                break;
            case cli::Command::verify:
                request = proto::encode_request("verify", proto::to_json(args->verify));
                break;
            case cli::Command::status:
                request = proto::encode_request("status", proto::to_json(args->status));
                break;
            case cli::Command::attach:
                request = proto::encode_request("attach", proto::to_json(args->attach));
                break;
            case cli::Command::auto_attach:
                request = proto::encode_request("auto-attach", proto::to_json(args->autodev));
                break;
            case cli::Command::auto_detach:
                request = proto::encode_request("auto-detach", proto::to_json(args->autodev));
                break;
            case cli::Command::detach:
                request = proto::encode_request("detach", proto::to_json(args->detach));
                break;
            case cli::Command::copy:
                request = proto::encode_request("copy", proto::to_json(args->copy));
                break;
            case cli::Command::rewrap:
                request = proto::encode_request("rewrap", proto::to_json(args->rewrap));
                break;
            case cli::Command::import_image:
                request = proto::encode_request("import", proto::to_json(args->import));
                break;
            case cli::Command::decrypt:
                request = proto::encode_request("decrypt", proto::to_json(args->decrypt));
                break;
            case cli::Command::audit:
                break;  // above
            case cli::Command::check_keys:
                request = proto::encode_request("check-keys", nlohmann::json::object());
                break;
            case cli::Command::key:
                request = proto::encode_request("key", proto::to_json(args->key));
                break;
            case cli::Command::list:
                break;  // above
        }
        cli::ProgressPrinter progress(args->json, isatty(STDERR_FILENO) == 1, std::cout, std::cerr);
        const proto::Response r =
            cli::call_agent(args->socket, request, [&](const nlohmann::json& p) { progress.update(p); });
        progress.finish();
        if (!r.ok) {
            cli::print_error(r.code, r.message, r.hint, args->json, std::cout, std::cerr);
            return exit_status(r.code);
        }
        cli::print_result(args->command, r.result, args->json, std::cout);
        return 0;
    } catch (const Error& e) {
        cli::print_error(e.code(), e.what(), e.hint(), args->json, std::cout, std::cerr);
        return exit_status(e.code());
    } catch (const std::exception& e) {
        cli::print_error(Errc::internal, e.what(), "", args->json, std::cout, std::cerr);
        return 1;
    }
}
