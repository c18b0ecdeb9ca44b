// libcryptsetup contexts in the token plugin (agent/raii.hpp): the plugin
// runs inside stock cryptsetup, which owns libcryptsetup's device-mapper
// backend, so nothing is pinned here and the mutex only orders the plugin's
// own threads (it has none of its own).
#include <libcryptsetup.h>

#include <mutex>

#include "agent/raii.hpp"

namespace diskcrypt {

std::mutex& libdevmapper_mutex()
{
    static std::mutex m;
    return m;
}

void pin_cryptsetup_backend() {}

int crypt_init_shared(crypt_device** cd, const char* device) { return crypt_init(cd, device); }

}  // namespace diskcrypt
