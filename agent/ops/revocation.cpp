#include "agent/ops/revocation.hpp"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include "agent/audit.hpp"
#include "agent/disk/token.hpp"
#include "agent/dm.hpp"
#include "agent/error.hpp"
#include "agent/log.hpp"
#include "agent/ops/attach.hpp"
#include "agent/text.hpp"

namespace diskcrypt {

namespace {

// What this process knows about revoked disks, and the last check.
struct RevocationState {
    std::mutex mutex;
    std::map<std::string, RevokedDisk, std::less<>> revoked;
    std::optional<std::string> last_check;
    std::mutex check_mutex;  // one check at a time (periodic and on demand)
};

RevocationState& state()
{
    static RevocationState s;
    return s;
}

bool is_revoked_now(const DiskInfo& d) { return d.target == "diskcrypt" && d.suspended && d.key_state == "wiped"; }

// One disk's revocation or restoration, as its own audit event.
template <typename F>
void audited(const std::string& event, const DiskInfo& d, const std::string& note, F&& fn, RevocationReport& report)
{
    audit::Context ctx;
    if (const audit::Context* outer = audit::current()) {
        ctx = *outer;  // an on-demand check: the caller
    } else {
        ctx.op = "revocation-check";
        ctx.uid = getuid();
        ctx.pid = getpid();
    }
    ctx.disk_id = d.disk_id;
    ctx.device = d.backing_device;
    ctx.luks_uuid = d.luks_uuid;
    ctx.key = d.key;
    ctx.service_account.clear();
    ctx.user.clear();
    audit::Scope scope(ctx);
    try {
        std::forward<F>(fn)();
    } catch (const Error& e) {
        audit::emit(
            audit::Event{event, "failed", scope.context(), std::string(errc_name(e.code())), note + ": " + e.what()});
        log_error(event + " of disk " + d.disk_id + " failed: " + e.what());
        report.failed.emplace_back(d.disk_id, e.what());
        return;
    } catch (const std::exception& e) {
        const std::string what = printable(e.what());
        audit::emit(audit::Event{event, "failed", scope.context(), "internal", note + ": " + what});
        log_error(event + " of disk " + d.disk_id + " failed: " + what);
        report.failed.emplace_back(d.disk_id, what);
        return;
    }
    audit::emit(audit::Event{event, "ok", scope.context(), {}, note});
    log_warning(event + " of disk " + d.disk_id + ": " + note);
    (event == "revoke" ? report.revoked : report.restored).push_back(d.disk_id);
}

}  // namespace

RevocationReport check_revocation(const AgentConfig& cfg)
{
    RevocationState& s = state();
    const std::lock_guard check_lock(s.check_mutex);
    const auto started = std::chrono::steady_clock::now();
    RevocationReport report;
    report.time = utc_timestamp();
    if (!dm::available()) {
        return report;
    }
    // The disks whose key state could matter, by key.
    std::map<std::string, KeyCheck, std::less<>> by_key;
    std::map<std::string, std::vector<DiskInfo>, std::less<>> disks_of;
    std::vector<DiskInfo> attached = list_disks(true);
    {
        // Forget disks that are gone (detached) or no longer revoked.
        const std::lock_guard lock(s.mutex);
        std::erase_if(s.revoked, [&attached](const auto& entry) {
            return std::none_of(attached.begin(), attached.end(),
                                [&entry](const DiskInfo& d) { return d.disk_id == entry.first && is_revoked_now(d); });
        });
    }
    for (DiskInfo& d : attached) {
        if (d.target != "diskcrypt" || !d.key || d.key->version.empty()) {
            continue;  // a forced detach's dm-error, an empty device, an unreadable header
        }
        const RevocationMode mode = cfg.revocation.mode_for(*d.key);
        if (mode == RevocationMode::keep && !is_revoked_now(d)) {
            continue;
        }
        KeyCheck& k = by_key[d.key->spec()];
        k.key = KeyRef{d.key->provider, d.key->key_id, ""};
        k.mode = mode;
        k.disks.push_back(d.disk_id);
        disks_of[d.key->spec()].push_back(std::move(d));
    }
    for (auto& [spec, k] : by_key) {
        std::vector<DiskInfo>& disks = disks_of[spec];
        kms::Provider* provider = cfg.provider(k.key.provider);
        if (provider == nullptr) {
            k.error = "provider '" + k.key.provider + "' is not configured on this host";
            log_warning("revocation check of key " + spec + ": " + k.error);
            report.keys.push_back(k);
            continue;
        }
        std::set<std::string> wanted;
        for (const DiskInfo& d : disks) {
            wanted.insert(d.key->version);
        }
        try {
            k.states = provider->version_states(k.key.key_id, std::vector<std::string>(wanted.begin(), wanted.end()));
        } catch (const std::exception& e) {
            // Unreachable, slow, refused: never a revocation.
            k.error = printable(e.what());
            log_warning("revocation check of key " + spec + ": the KMS did not answer (" + k.error +
                        "); attached disks keep their state");
            report.keys.push_back(k);
            continue;
        }
        for (const DiskInfo& d : disks) {
            const auto it = k.states.find(d.key->version);
            if (it == k.states.end()) {
                continue;  // the provider did not say: nothing changes
            }
            const std::string& st = it->second;
            const std::string version_text = "key " + spec + " version " + d.key->version;
            if (st != "active" && !is_revoked_now(d) && k.mode == RevocationMode::revoke) {
                std::string note = version_text;
                note += " is " + st;
                note += ": the mapping is suspended and its kernel key wiped; I/O waits until the key is active again";
                audited(
                    "revoke", d, note,
                    [&] {
                        wipe_disk_key(cfg, d.disk_id);
                        const std::lock_guard lock(s.mutex);
                        s.revoked[d.disk_id] = RevokedDisk{*d.key, st, utc_timestamp(), false};
                    },
                    report);
            } else if (st == "active" && is_revoked_now(d)) {
                audited(
                    "restore", d, version_text + " is active again: the disk was re-keyed from its header and resumed",
                    [&] {
                        rekey_disk(cfg, d.disk_id);
                        const std::lock_guard lock(s.mutex);
                        s.revoked.erase(d.disk_id);
                    },
                    report);
            } else if (st != "active" && is_revoked_now(d)) {
                const std::lock_guard lock(s.mutex);
                auto [entry, added] = s.revoked.try_emplace(d.disk_id);
                if (added) {
                    entry->second = RevokedDisk{*d.key, st, utc_timestamp(), true};
                } else {
                    entry->second.state = st;
                }
            }
        }
        report.keys.push_back(k);
    }
    report.elapsed_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
    {
        const std::lock_guard lock(s.mutex);
        s.last_check = report.time + ": " + std::to_string(report.keys.size()) + " key(s) checked, " +
                       std::to_string(report.revoked.size()) + " disk(s) revoked, " +
                       std::to_string(report.restored.size()) + " restored, " + std::to_string(report.failed.size()) +
                       " failed";
    }
    return report;
}

nlohmann::json to_json(const RevocationReport& r)
{
    nlohmann::json keys = nlohmann::json::array();
    for (const KeyCheck& k : r.keys) {
        nlohmann::json states = nlohmann::json::object();
        for (const auto& [version, st] : k.states) {
            states[version] = st;
        }
        keys.push_back({{"provider", k.key.provider},
                        {"id", k.key.key_id},
                        {"mode", revocation_mode_name(k.mode)},
                        {"disks", k.disks},
                        {"states", states},
                        {"error", k.error.empty() ? nlohmann::json() : nlohmann::json(k.error)}});
    }
    nlohmann::json failed = nlohmann::json::array();
    for (const auto& [disk, why] : r.failed) {
        failed.push_back({{"disk_id", disk}, {"error", why}});
    }
    return {{"time", r.time},         {"keys", keys},     {"revoked", r.revoked},
            {"restored", r.restored}, {"failed", failed}, {"elapsed_ms", r.elapsed_ms}};
}

std::optional<RevokedDisk> revoked_disk(const std::string& disk_id)
{
    RevocationState& s = state();
    const std::lock_guard lock(s.mutex);
    const auto it = s.revoked.find(disk_id);
    if (it == s.revoked.end()) {
        return std::nullopt;
    }
    return it->second;
}

nlohmann::json to_json(const RevokedDisk& r)
{
    return {{"key", {{"provider", r.key.provider}, {"id", r.key.key_id}, {"version", r.key.version}}},
            {"state", r.state},
            {"since", r.since},
            {"found", r.found}};
}

std::optional<std::string> last_revocation_check()
{
    RevocationState& s = state();
    const std::lock_guard lock(s.mutex);
    return s.last_check;
}

RevocationMonitor::RevocationMonitor(const AgentConfig& cfg) : cfg_(cfg), thread_([this] { loop(); }) {}

void RevocationMonitor::loop()
{
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        lock.unlock();
        try {
            (void)check_revocation(cfg_);
        } catch (const std::exception& e) {  // never out of the thread
            log_error("revocation check failed: " + printable(e.what()));
        }
        lock.lock();
        (void)wake_.wait_for(lock, cfg_.revocation.interval, [this] { return stopping_; });
    }
    finished_ = true;
    done_.notify_all();
}

bool RevocationMonitor::stop(std::chrono::seconds grace)
{
    std::unique_lock lock(mutex_);
    stopping_ = true;
    wake_.notify_all();
    if (!done_.wait_for(lock, grace, [this] { return finished_; })) {
        lock.unlock();
        if (thread_.joinable()) {
            thread_.detach();
        }
        return false;
    }
    lock.unlock();
    if (thread_.joinable()) {
        thread_.join();
    }
    return true;
}

RevocationMonitor::~RevocationMonitor() { (void)stop(std::chrono::seconds(30)); }

}  // namespace diskcrypt
