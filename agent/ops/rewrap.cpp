#include "agent/ops/rewrap.hpp"

#include <libcryptsetup.h>

#include <chrono>

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/wrap.hpp"
#include "agent/disk_lock.hpp"
#include "agent/ops/verify.hpp"

namespace diskcrypt {

RewrapResult rewrap_disk(const AgentConfig& cfg, const proto::RewrapArgs& args)
{
    const auto start = std::chrono::steady_clock::now();
    const DiskClaim claim = make_claim(cfg, args.disk_id, args.type, args.key);
    validate_service_account(args.service_account);
    validate_user_account(args.user);
    KeyRef to = args.to_key ? parse_key_spec(*args.to_key) : claim.key;
    to.version.clear();
    (void)require_provider(cfg, to);
    if (audit::Context* ctx = audit::current()) {
        ctx->key = claim.key;
    }
    std::vector<AccessCheck> checks = unwrap_checks(args.service_account, claim.key);
    for (auto& c : format_checks(args.user, args.service_account, to)) {
        checks.push_back(std::move(c));
    }
    const std::string policy_revision = authorize(cfg, checks);
    const FileLock lock = lock_disk(cfg.lock_dir, args.disk_id);

    const OpenedDevice dev = open_device_once(args.device, true);
    DiskHeader header;
    {
        const CryptDevice cd = open_luks2(dev.fd_path, args.device);
        header = read_header(cd.get(), args.device);
    }
    if (audit::Context* ctx = audit::current()) {
        ctx->luks_uuid = header.luks_uuid;
        ctx->key = header.token.key;
    }
    check_claim(header, claim);
    const SecureBuffer secret = unwrap_secret(cfg, header, args.disk_id);

    Token token = header.token;
    wrap_secret(cfg, to, args.disk_id, mapping_of(header, header.token.disk_type), secret, token);
    replace_token(dev.fd_path, dev.shown, header.token_id, token);
    const CryptDevice cd = open_luks2(dev.fd_path, args.device);
    const DiskHeader written = read_header(cd.get(), args.device);
    if (written.token.key.spec() != token.key.spec() || written.token.key.version != token.key.version ||
        written.token.wrapped.ciphertext != token.wrapped.ciphertext ||
        crypt_activate_by_passphrase(cd.get(), nullptr, written.token.keyslot, secret.chars(), secret.size(), 0) < 0) {
        throw Error(Errc::device, "device " + dev.shown + ": the token read back is not the one written",
                    "run verify on the disk; restore a header backup if it fails");
    }

    RewrapResult r;
    r.device = dev.shown;
    r.disk_id = args.disk_id;
    r.luks_uuid = header.luks_uuid;
    r.from = header.token.key;
    r.from_ad_version = header.token.ad_version;
    r.to = written.token.key;
    r.to_ad_version = written.token.ad_version;
    r.service_account = args.service_account;
    r.user = args.user;
    r.policy_revision = policy_revision;
    r.elapsed_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    return r;
}

nlohmann::json to_json(const RewrapResult& r)
{
    auto key = [](const KeyRef& k, unsigned ad) {
        return nlohmann::json{{"provider", k.provider}, {"id", k.key_id}, {"version", k.version}, {"ad_version", ad}};
    };
    nlohmann::json j = {{"device", r.device},
                        {"disk_id", r.disk_id},
                        {"luks_uuid", r.luks_uuid},
                        {"from", key(r.from, r.from_ad_version)},
                        {"to", key(r.to, r.to_ad_version)},
                        {"elapsed_ms", r.elapsed_ms}};
    j["service_account"] = r.service_account;
    j["user"] = r.user;
    j["policy_revision"] = r.policy_revision;
    return j;
}

}  // namespace diskcrypt
