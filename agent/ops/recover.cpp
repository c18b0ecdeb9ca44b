#include "agent/ops/recover.hpp"

#include "agent/access.hpp"
#include "agent/audit.hpp"
#include "agent/error.hpp"
#include "agent/ops/verify.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

RecoverResult recover_secret(const AgentConfig& cfg, const proto::RecoverArgs& args)
{
    if (!cfg.recovery) {
        throw Error(Errc::not_supported,
                    "break-glass recovery of " + printable(args.device) + " is disabled on this host",
                    "an operator who needs stock cryptsetup to open diskcrypt disks sets [recovery] enabled = true "
                    "in " +
                        cfg.source + " and restarts the agent");
    }
    const OpenedDevice dev = open_device_once(args.device, true);
    const CryptDevice cd = open_luks2(dev.fd_path, dev.shown);
    RecoverResult r;
    r.header = read_header(cd.get(), dev.shown);
    const Token& t = r.header.token;
    if (audit::Context* ctx = audit::current()) {
        ctx->disk_id = t.disk_id;
        ctx->key = t.key;
        ctx->luks_uuid = r.header.luks_uuid;
        ctx->service_account = t.service_account.value_or("");
    }
    if (!t.service_account) {
        throw Error(Errc::header,
                    "device " + dev.shown + ": the token of disk " + t.disk_id +
                        " names no service account, so no access check can be made for its recovery",
                    "attach it with diskcrypt instead (the control plane names the service account)");
    }
    KeyRef key = t.key;
    key.version.clear();
    check_claim(r.header, DiskClaim{t.disk_id, t.disk_type, key});
    r.policy_revision = authorize(cfg, unwrap_checks(*t.service_account, key));
    r.secret = unwrap_secret(cfg, r.header, t.disk_id);
    check_keyslot_secret(cd.get(), r.header, r.secret, dev.shown);
    return r;
}

nlohmann::json to_json(const RecoverResult& r)
{
    const DiskHeader& h = r.header;
    nlohmann::json j = {
        {"device", h.device},
        {"disk_id", h.token.disk_id},
        {"type", h.token.disk_type},
        {"luks_uuid", h.luks_uuid},
        {"keyslot", h.token.keyslot},
        {"key", {{"provider", h.token.key.provider}, {"id", h.token.key.key_id}, {"version", h.token.key.version}}},
        {"service_account", h.token.service_account.value_or("")},
        {"policy_revision", r.policy_revision},
        {"passphrase_bytes", r.secret.size()}};
    return j;
}

}  // namespace diskcrypt
