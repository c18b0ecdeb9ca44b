#include <algorithm>
#include <map>
#include <mutex>

#include "agent/config.hpp"
#include "agent/error.hpp"
#include "agent/kms/provider.hpp"

namespace diskcrypt::kms {

namespace {

struct Registry {
    std::mutex mutex;
    std::map<std::string, Factory> factories;
};

Registry& registry()
{
    static Registry r;
    return r;
}

[[noreturn]] void unsupported(const Provider& p, std::string_view what)
{
    throw Error(Errc::not_supported,
                "provider '" + p.name() + "' (" + std::string(p.type()) + ") cannot " + std::string(what),
                "use the KMS's own tools for this");
}

}  // namespace

std::vector<KeyInfo> Provider::list_keys() { unsupported(*this, "list keys"); }
KeyInfo Provider::key_info(std::string_view /*key_id*/) { unsupported(*this, "describe key versions"); }
KeyInfo Provider::create_key(std::string_view /*key_id*/) { unsupported(*this, "create keys"); }
KeyInfo Provider::rotate_key(std::string_view /*key_id*/) { unsupported(*this, "rotate keys"); }
KeyInfo Provider::disable_key(std::string_view /*key_id*/) { unsupported(*this, "disable keys"); }
KeyInfo Provider::enable_key(std::string_view /*key_id*/) { unsupported(*this, "enable keys"); }
void Provider::destroy_key(std::string_view /*key_id*/) { unsupported(*this, "destroy keys"); }
VersionStates Provider::version_states(std::string_view /*key_id*/, const std::vector<std::string>& /*versions*/)
{
    unsupported(*this, "report key version states");
}

bool register_provider_type(const std::string& type, Factory factory)
{
    if (type.empty() || !factory) {
        throw Error(Errc::internal, "a KMS provider type needs a name and a factory");
    }
    auto& r = registry();
    const std::lock_guard lock(r.mutex);
    if (!r.factories.emplace(type, std::move(factory)).second) {
        throw Error(Errc::internal, "KMS provider type '" + type + "' is registered twice");
    }
    return true;
}

std::vector<std::string> provider_types()
{
    auto& r = registry();
    const std::lock_guard lock(r.mutex);
    std::vector<std::string> out;
    out.reserve(r.factories.size());
    for (const auto& [type, factory] : r.factories) {
        out.push_back(type);
    }
    return out;
}

std::unique_ptr<Provider> create_provider(const std::string& type, const std::string& name, ConfigSection& options)
{
    Factory factory;
    {
        auto& r = registry();
        const std::lock_guard lock(r.mutex);
        const auto it = r.factories.find(type);
        if (it != r.factories.end()) {
            factory = it->second;
        }
    }
    if (!factory) {
        std::string known;
        for (const auto& t : provider_types()) {
            known += (known.empty() ? "" : ", ") + t;
        }
        throw options.error_at("type", "unknown provider type '" + type + "' (known: " + known + ")");
    }
    return factory(name, options);
}

}  // namespace diskcrypt::kms
