#include "agent/verify.hpp"

#include <libcryptsetup.h>

#include <cerrno>

#include "agent/associated_data.hpp"
#include "agent/audit.hpp"
#include "agent/error.hpp"

namespace diskcrypt {

SecureBuffer unwrap_secret(const AgentConfig& cfg, const DiskHeader& header, const std::string& disk_id)
{
    validate_disk_id(disk_id);
    const Token& t = header.token;
    if (t.disk_id != disk_id) {
        throw Error(Errc::binding,
                    "device " + header.device + ": this header belongs to disk " + t.disk_id + ", not " + disk_id,
                    "check that the device path and the disk id refer to the same disk");
    }
    kms::Provider* provider = cfg.provider(t.key.provider);
    if (provider == nullptr) {
        throw Error(Errc::config,
                    "device " + header.device + ": its key is on provider '" + t.key.provider +
                        "', which this agent does not configure",
                    "add [providers." + t.key.provider + "] (type " + t.provider_type + ") to the agent configuration");
    }
    if (provider->type() != t.provider_type) {
        throw Error(Errc::config,
                    "device " + header.device + ": provider '" + t.key.provider + "' is of type " +
                        std::string(provider->type()) + " here, but the header says " + t.provider_type,
                    "provider names must mean the same KMS on every host");
    }
    // The AD is built from the caller's disk id, never from the header alone.
    const std::vector<std::uint8_t> ad = associated_data(disk_id, t.key);
    SecureBuffer secret =
        audit::kms_call("unwrap", t.key, [&] { return provider->unwrap(t.key.key_id, t.key.version, t.wrapped, ad); });
    if (secret.size() != kSecretBytes) {
        throw Error(Errc::header, "device " + header.device + ": the unwrapped secret has " +
                                      std::to_string(secret.size()) + " bytes, not " + std::to_string(kSecretBytes));
    }
    return secret;
}

VerifyResult verify_disk(const AgentConfig& cfg, const proto::VerifyArgs& args)
{
    validate_disk_id(args.disk_id);
    if (args.device.empty() || args.device.front() != '/') {
        throw Error(Errc::usage, "device path '" + args.device + "' is not absolute");
    }
    const CryptDevice cd = open_luks2(args.device);
    VerifyResult r{read_header(cd.get(), args.device)};
    if (audit::Context* ctx = audit::current()) {
        ctx->key = r.header.token.key;
        ctx->luks_uuid = r.header.luks_uuid;
    }
    const SecureBuffer secret = unwrap_secret(cfg, r.header, args.disk_id);
    const int rc =
        crypt_activate_by_passphrase(cd.get(), nullptr, r.header.token.keyslot, secret.chars(), secret.size(), 0);
    if (rc < 0) {
        throw Error(Errc::header,
                    "device " + args.device + ": the unwrapped secret does not open keyslot " +
                        std::to_string(r.header.token.keyslot) + (rc == -EPERM ? "" : errno_text("", -rc)),
                    "the token and the keyslot do not belong together; restore a header backup");
    }
    return r;
}

nlohmann::json to_json(const VerifyResult& r)
{
    const DiskHeader& h = r.header;
    nlohmann::json j = {
        {"device", h.device},
        {"disk_id", h.token.disk_id},
        {"type", h.token.disk_type},
        {"lineage", h.token.lineage_id},
        {"luks_uuid", h.luks_uuid},
        {"key",
         {{"provider", h.token.key.provider},
          {"provider_type", h.token.provider_type},
          {"id", h.token.key.key_id},
          {"version", h.token.key.version}}},
        {"cipher", h.cipher},
        {"volume_key_bits", h.volume_key_bytes * 8},
        {"sector_size", h.sector_size},
        {"data_offset", h.data_offset},
        {"keyslot", h.token.keyslot},
        {"token_id", h.token_id},
        {"created", h.token.created},
    };
    j["service_account"] = h.token.service_account ? nlohmann::json(*h.token.service_account) : nlohmann::json(nullptr);
    return j;
}

}  // namespace diskcrypt
