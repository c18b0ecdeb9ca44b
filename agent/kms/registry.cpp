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

}  // namespace

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
