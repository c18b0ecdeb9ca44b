// libcryptsetup's messages, routed into the agent's log.
#include <libcryptsetup.h>

#include <string>

#include "agent/log.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

void cryptsetup_log(int level, const char* msg, void* /*usrptr*/)
{
    if (msg == nullptr) {
        return;
    }
    std::string text(msg);
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
        text.pop_back();
    }
    // libcryptsetup quotes header fields and paths: escaped where it enters.
    log(level == CRYPT_LOG_ERROR ? LogLevel::warning : LogLevel::debug, "libcryptsetup: " + printable(text));
}

}  // namespace

void route_libcryptsetup_log() { crypt_set_log_callback(nullptr, cryptsetup_log, nullptr); }

}  // namespace diskcrypt
