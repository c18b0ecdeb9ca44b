#include "agent/disk/wrap.hpp"

#include "agent/audit.hpp"
#include "agent/error.hpp"

namespace diskcrypt {

MappingBinding mapping_of(const DiskHeader& header, const std::string& disk_type)
{
    MappingBinding m;
    m.cipher = header.cipher;
    m.disk_type = disk_type;
    m.volume_key_bytes = static_cast<std::uint32_t>(header.volume_key_bytes);
    m.sector_size = header.sector_size;
    m.data_offset = header.data_offset;
    m.iv_tweak = header.iv_offset;
    return m;
}

void wrap_secret(const AgentConfig& cfg, KeyRef key, std::string_view disk_id, const MappingBinding& mapping,
                 const SecureBuffer& secret, Token& token)
{
    kms::Provider& provider = require_provider(cfg, key);
    const kms::KeyDescription desc = provider.describe(key.key_id);
    if (!desc.enabled || !desc.can_encrypt || !desc.can_decrypt) {
        throw Error(Errc::kms_key,
                    "key " + key.spec() + " cannot be used to wrap disk secrets (" +
                        (!desc.enabled       ? "its state is " + desc.state
                         : !desc.can_encrypt ? "encrypt not allowed"
                                             : "decrypt not allowed") +
                        ")",
                    "use a key allowed to encrypt and decrypt");
    }
    key.version = desc.version;
    if (audit::Context* ctx = audit::current()) {
        ctx->key = key;
    }
    const std::vector<std::uint8_t> ad = associated_data(disk_id, key, mapping);
    token.key = key;
    token.provider_type = std::string(provider.type());
    token.ad_version = kAssociatedDataVersion;
    token.wrapped =
        audit::kms_call("wrap", key, [&] { return provider.wrap(key.key_id, key.version, secret.span(), ad); });
    const SecureBuffer check =
        audit::kms_call("unwrap", key, [&] { return provider.unwrap(key.key_id, key.version, token.wrapped, ad); });
    if (!check.equals(secret.span())) {
        throw Error(Errc::kms_unavailable,
                    "provider '" + key.provider +
                        "': unwrapping the fresh secret gave different bytes; nothing was "
                        "written",
                    "check the HSM");
    }
}

}  // namespace diskcrypt
