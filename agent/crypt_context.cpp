// libcryptsetup contexts and libdevmapper's global state (agent/raii.hpp):
// the agent's definitions. The cryptsetup token plugin, which runs inside
// stock cryptsetup and never calls device-mapper itself, has its own
// (cli/cryptsetup-token/crypt_context.cpp).
#include <libcryptsetup.h>

#include <mutex>

#include "agent/log.hpp"
#include "agent/raii.hpp"

namespace diskcrypt {

std::mutex& libdevmapper_mutex()
{
    static std::mutex m;
    return m;
}

void pin_cryptsetup_backend()
{
    // Kept in a static so it stays reachable (LeakSanitizer), never used.
    // NOLINTNEXTLINE(cppcoreguidelines-avoid-non-const-global-variables)
    static crypt_device* const pinned = [] {
        crypt_device* cd = nullptr;
        if (crypt_init(&cd, nullptr) < 0) {
            log_warning("libcryptsetup: cannot pin its device-mapper backend");
        }
        return cd;
    }();
    (void)pinned;
}

int crypt_init_shared(crypt_device** cd, const char* device)
{
    const std::lock_guard lock(libdevmapper_mutex());
    pin_cryptsetup_backend();
    return crypt_init(cd, device);
}

}  // namespace diskcrypt
