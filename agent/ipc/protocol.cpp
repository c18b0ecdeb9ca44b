#include "agent/ipc/protocol.hpp"

#include <algorithm>
#include <array>
#include <set>
#include <vector>

#include "agent/text.hpp"

namespace diskcrypt::proto {

namespace {

using nlohmann::json;

enum class ArgType { string, boolean, uint };

struct ArgSpec {
    std::string_view name;
    ArgType type;
    bool required;
};

struct OpSpec {
    std::string_view op;
    std::vector<ArgSpec> args;
};

// format's arguments; import takes them and its source.
std::vector<ArgSpec> format_spec()
{
    return {{"device", ArgType::string, true},
            {"disk_id", ArgType::string, true},
            {"type", ArgType::string, true},
            {"key", ArgType::string, false},
            {"service_account", ArgType::string, true},
            {"user", ArgType::string, true},
            {"lineage", ArgType::string, false},
            {"sector_size", ArgType::uint, false},
            {"force", ArgType::boolean, false}};
}

const std::vector<OpSpec>& ops()
{
    static const std::vector<ArgSpec> import_spec = [] {
        std::vector<ArgSpec> v = format_spec();
        v.push_back({"source", ArgType::string, true});
        return v;
    }();
    static const std::vector<OpSpec> kOps{
        {"status", {{"disk_id", ArgType::string, false}}},
        {"list", {{"after", ArgType::string, false}}},
        {"attach",
         {{"device", ArgType::string, true},
          {"disk_id", ArgType::string, true},
          {"type", ArgType::string, true},
          {"key", ArgType::string, true},
          {"service_account", ArgType::string, true},
          {"allow_discards", ArgType::boolean, false}}},
        {"detach", {{"disk_id", ArgType::string, true}, {"force", ArgType::boolean, false}}},
        {"format", format_spec()},
        {"verify",
         {{"device", ArgType::string, true},
          {"disk_id", ArgType::string, true},
          {"type", ArgType::string, false},
          {"key", ArgType::string, true},
          {"service_account", ArgType::string, true}}},
        {"copy",
         {{"device", ArgType::string, true},
          {"disk_id", ArgType::string, true},
          {"key", ArgType::string, true},
          {"service_account", ArgType::string, true},
          {"user", ArgType::string, true},
          {"target_device", ArgType::string, true},
          {"target_id", ArgType::string, true},
          {"target_kind", ArgType::string, true},
          {"target_type", ArgType::string, false},
          {"target_service_account", ArgType::string, false},
          {"force", ArgType::boolean, false}}},
        {"rewrap",
         {{"device", ArgType::string, true},
          {"disk_id", ArgType::string, true},
          {"type", ArgType::string, false},
          {"key", ArgType::string, true},
          {"service_account", ArgType::string, true},
          {"user", ArgType::string, true},
          {"to_key", ArgType::string, false}}},
        {"import", import_spec},
        {"key",
         {{"action", ArgType::string, true},
          {"key", ArgType::string, false},
          {"provider", ArgType::string, false},
          {"user", ArgType::string, true},
          {"force", ArgType::boolean, false}}},
        {"decrypt", {{"device", ArgType::string, false}, {"disk_id", ArgType::string, true}}},
        {"recover", {{"device", ArgType::string, true}}},
        {"check-keys", {}},
        {"audit",
         {{"disk_id", ArgType::string, false},
          {"key", ArgType::string, false},
          {"since", ArgType::string, false},
          {"after", ArgType::string, false}}},
        {"auto-attach", {{"devno", ArgType::string, true}}},
        {"auto-detach", {{"devno", ArgType::string, true}}},
    };
    return kOps;
}

[[noreturn]] void fail(const std::string& what) { throw Error(Errc::protocol, what); }

std::string_view type_word(ArgType t)
{
    switch (t) {
        case ArgType::string:
            return "a string";
        case ArgType::boolean:
            return "a boolean";
        case ArgType::uint:
            return "a non-negative integer";
    }
    return "?";
}

bool has_type(const json& v, ArgType t)
{
    switch (t) {
        case ArgType::string:
            return v.is_string();
        case ArgType::boolean:
            return v.is_boolean();
        case ArgType::uint:
            return v.is_number_unsigned() || (v.is_number_integer() && v.get<long long>() >= 0);
    }
    return false;
}

// JSON parse refusing duplicate object keys.
json parse_object(std::string_view text, std::string_view what)
{
    if (text.size() > kMaxMessage) {
        fail(std::string(what) + " is larger than " + std::to_string(kMaxMessage) + " bytes");
    }
    std::vector<std::set<std::string>> stack;
    std::string duplicate;
    const json::parser_callback_t cb = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
        if (event == json::parse_event_t::object_start) {
            stack.emplace_back();
        } else if (event == json::parse_event_t::object_end && !stack.empty()) {
            stack.pop_back();
        } else if (event == json::parse_event_t::key && !stack.empty() &&
                   !stack.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
            duplicate = parsed.get<std::string>();
        }
        return true;
    };
    json j;
    try {
        j = json::parse(text.begin(), text.end(), cb);
    } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers such as 1e9999
        // The parser's message quotes the bytes it choked on: made printable.
        fail(std::string(what) + " is not valid JSON: " + printable(e.what()));
    }
    if (!duplicate.empty()) {
        fail(std::string(what) + " has the field '" + printable(duplicate) + "' twice");
    }
    if (!j.is_object()) {
        fail(std::string(what) + " must be a JSON object");
    }
    return j;
}

void check_version(const json& j, std::string_view what)
{
    const auto it = j.find("protocol");
    if (it == j.end()) {
        fail(std::string(what) + " has no 'protocol' field");
    }
    if (!it->is_number_integer()) {
        fail(std::string(what) + ": 'protocol' must be an integer");
    }
    if (it->get<long long>() != kVersion) {
        throw Error(Errc::protocol,
                    "protocol version " + dump_json(*it) + " is not supported (this side speaks version " +
                        std::to_string(kVersion) + ")",
                    "use a diskcrypt CLI and agent from the same release");
    }
}

template <typename T>
std::optional<T> opt(const json& args, const char* key)
{
    const auto it = args.find(key);
    if (it == args.end()) {
        return std::nullopt;
    }
    return it->get<T>();
}

}  // namespace

std::string dump_json(const json& j, int indent) { return j.dump(indent, ' ', false, json::error_handler_t::replace); }

Request parse_request(std::string_view text)
{
    const json j = parse_object(text, "request");
    check_version(j, "request");
    for (const auto& [key, value] : j.items()) {
        if (key != "protocol" && key != "op" && key != "args") {
            fail("request has an unknown field '" + printable(key) + "'");
        }
    }
    const auto op_it = j.find("op");
    if (op_it == j.end()) {
        fail("request has no 'op' field");
    }
    if (!op_it->is_string()) {
        fail("request: 'op' must be a string");
    }
    Request r;
    r.op = op_it->get<std::string>();
    const OpSpec* spec = nullptr;
    std::string known;
    for (const auto& o : ops()) {
        known += (known.empty() ? "" : ", ") + std::string(o.op);
        if (o.op == r.op) {
            spec = &o;
        }
    }
    if (spec == nullptr) {
        fail("unknown op '" + printable(r.op) + "' (known: " + known + ")");
    }
    if (const auto a = j.find("args"); a != j.end()) {
        if (!a->is_object()) {
            fail("op " + r.op + ": 'args' must be an object");
        }
        r.args = *a;
    }
    for (const auto& [key, value] : r.args.items()) {
        const ArgSpec* arg = nullptr;
        for (const auto& s : spec->args) {
            if (s.name == key) {
                arg = &s;
            }
        }
        if (arg == nullptr) {
            fail("op " + r.op + ": unknown argument '" + printable(key) + "'");
        }
        if (!has_type(value, arg->type)) {
            fail("op " + r.op + ": argument '" + key + "' must be " + std::string(type_word(arg->type)));
        }
    }
    for (const auto& s : spec->args) {
        if (s.required && !r.args.contains(s.name)) {
            fail("op " + r.op + ": missing argument '" + std::string(s.name) + "'");
        }
    }
    return r;
}

std::string encode_request(const std::string& op, const json& args)
{
    return dump_json(json{{"protocol", kVersion}, {"op", op}, {"args", args}});
}

std::string encode_result(const json& result)
{
    return dump_json(json{{"protocol", kVersion}, {"ok", true}, {"result", result}});
}

std::string encode_error(const Error& error)
{
    json e = {{"code", errc_name(error.code())}, {"exit", exit_status(error.code())}, {"message", error.what()}};
    if (!error.hint().empty()) {
        e["hint"] = error.hint();
    }
    return dump_json(json{{"protocol", kVersion}, {"ok", false}, {"error", e}});
}

std::string encode_progress(const json& progress)
{
    return dump_json(json{{"protocol", kVersion}, {"progress", progress}});
}

Response parse_response(std::string_view text)
{
    const json j = parse_object(text, "response");
    check_version(j, "response");
    if (const auto p = j.find("progress"); p != j.end() && !j.contains("ok")) {
        if (!p->is_object()) {
            fail("progress message: 'progress' must be an object");
        }
        Response r;
        r.progress = *p;
        return r;
    }
    const auto ok = j.find("ok");
    if (ok == j.end() || !ok->is_boolean()) {
        fail("response has no boolean 'ok' field");
    }
    Response r;
    r.ok = ok->get<bool>();
    if (r.ok) {
        const auto res = j.find("result");
        if (res == j.end() || !res->is_object()) {
            fail("response has no 'result' object");
        }
        r.result = *res;
        return r;
    }
    const auto err = j.find("error");
    if (err == j.end() || !err->is_object()) {
        fail("response has no 'error' object");
    }
    const auto code = err->find("code");
    const auto message = err->find("message");
    if (code == err->end() || !code->is_string() || message == err->end() || !message->is_string()) {
        fail("response error has no 'code' and 'message' strings");
    }
    // A code this side does not know still fails, as an internal error.
    r.code = errc_from_name(code->get<std::string>()).value_or(Errc::internal);
    r.message = message->get<std::string>();
    if (const auto hint = err->find("hint"); hint != err->end() && hint->is_string()) {
        r.hint = hint->get<std::string>();
    }
    return r;
}

FormatArgs format_args(const json& args)
{
    FormatArgs a;
    a.device = args.at("device").get<std::string>();
    a.disk_id = args.at("disk_id").get<std::string>();
    a.type = args.at("type").get<std::string>();
    a.key = opt<std::string>(args, "key");
    a.service_account = args.at("service_account").get<std::string>();
    a.user = args.at("user").get<std::string>();
    a.lineage = opt<std::string>(args, "lineage");
    if (const auto ss = opt<unsigned long long>(args, "sector_size")) {
        if (*ss > 65536) {
            throw Error(Errc::usage, "invalid sector size " + std::to_string(*ss) + ": use 512, 1024, 2048 or 4096");
        }
        a.sector_size = static_cast<unsigned>(*ss);
    }
    a.force = opt<bool>(args, "force").value_or(false);
    return a;
}

json to_json(const FormatArgs& a)
{
    json j = {{"device", a.device}, {"disk_id", a.disk_id}, {"type", a.type}, {"service_account", a.service_account},
              {"user", a.user},     {"force", a.force}};
    if (a.key) {
        j["key"] = *a.key;
    }
    if (a.lineage) {
        j["lineage"] = *a.lineage;
    }
    if (a.sector_size) {
        j["sector_size"] = *a.sector_size;
    }
    return j;
}

VerifyArgs verify_args(const json& args)
{
    return VerifyArgs{args.at("device").get<std::string>(), args.at("disk_id").get<std::string>(),
                      opt<std::string>(args, "type"), args.at("key").get<std::string>(),
                      args.at("service_account").get<std::string>()};
}

json to_json(const VerifyArgs& a)
{
    json j = {{"device", a.device}, {"disk_id", a.disk_id}, {"key", a.key}, {"service_account", a.service_account}};
    if (a.type) {
        j["type"] = *a.type;
    }
    return j;
}

AttachArgs attach_args(const json& args)
{
    return AttachArgs{args.at("device").get<std::string>(),
                      args.at("disk_id").get<std::string>(),
                      args.at("type").get<std::string>(),
                      args.at("key").get<std::string>(),
                      args.at("service_account").get<std::string>(),
                      opt<bool>(args, "allow_discards").value_or(false)};
}

json to_json(const AttachArgs& a)
{
    json j = {{"device", a.device},
              {"disk_id", a.disk_id},
              {"type", a.type},
              {"key", a.key},
              {"service_account", a.service_account}};
    if (a.allow_discards) {
        j["allow_discards"] = true;
    }
    return j;
}

DetachArgs detach_args(const json& args)
{
    return DetachArgs{args.at("disk_id").get<std::string>(), opt<bool>(args, "force").value_or(false)};
}

json to_json(const DetachArgs& a) { return json{{"disk_id", a.disk_id}, {"force", a.force}}; }

ListArgs list_args(const json& args) { return ListArgs{opt<std::string>(args, "after")}; }

json to_json(const ListArgs& a)
{
    json j = json::object();
    if (a.after) {
        j["after"] = *a.after;
    }
    return j;
}

StatusArgs status_args(const json& args) { return StatusArgs{opt<std::string>(args, "disk_id")}; }

json to_json(const StatusArgs& a)
{
    json j = json::object();
    if (a.disk_id) {
        j["disk_id"] = *a.disk_id;
    }
    return j;
}

CopyArgs copy_args(const json& args)
{
    CopyArgs a;
    a.device = args.at("device").get<std::string>();
    a.disk_id = args.at("disk_id").get<std::string>();
    a.key = args.at("key").get<std::string>();
    a.service_account = args.at("service_account").get<std::string>();
    a.user = args.at("user").get<std::string>();
    a.target_device = args.at("target_device").get<std::string>();
    a.target_id = args.at("target_id").get<std::string>();
    a.target_kind = args.at("target_kind").get<std::string>();
    a.target_type = opt<std::string>(args, "target_type");
    a.target_service_account = opt<std::string>(args, "target_service_account");
    a.force = opt<bool>(args, "force").value_or(false);
    return a;
}

json to_json(const CopyArgs& a)
{
    json j = {{"device", a.device},
              {"disk_id", a.disk_id},
              {"key", a.key},
              {"service_account", a.service_account},
              {"user", a.user},
              {"target_device", a.target_device},
              {"target_id", a.target_id},
              {"target_kind", a.target_kind}};
    if (a.target_type) {
        j["target_type"] = *a.target_type;
    }
    if (a.target_service_account) {
        j["target_service_account"] = *a.target_service_account;
    }
    if (a.force) {
        j["force"] = true;
    }
    return j;
}

AuditArgs audit_args(const json& args)
{
    return AuditArgs{opt<std::string>(args, "disk_id"), opt<std::string>(args, "key"), opt<std::string>(args, "since"),
                     opt<std::string>(args, "after")};
}

json to_json(const AuditArgs& a)
{
    json j = json::object();
    for (const auto& [name, value] : {std::pair{"disk_id", &a.disk_id}, std::pair{"key", &a.key},
                                      std::pair{"since", &a.since}, std::pair{"after", &a.after}}) {
        if (*value) {
            j[name] = **value;
        }
    }
    return j;
}

KeyArgs key_args(const json& args)
{
    KeyArgs a;
    a.action = args.at("action").get<std::string>();
    a.key = opt<std::string>(args, "key");
    a.provider = opt<std::string>(args, "provider");
    a.user = args.at("user").get<std::string>();
    a.force = opt<bool>(args, "force").value_or(false);
    return a;
}

json to_json(const KeyArgs& a)
{
    json j = {{"action", a.action}, {"user", a.user}};
    if (a.key) {
        j["key"] = *a.key;
    }
    if (a.provider) {
        j["provider"] = *a.provider;
    }
    if (a.force) {
        j["force"] = true;
    }
    return j;
}

RewrapArgs rewrap_args(const json& args)
{
    RewrapArgs a;
    a.device = args.at("device").get<std::string>();
    a.disk_id = args.at("disk_id").get<std::string>();
    a.type = opt<std::string>(args, "type");
    a.key = args.at("key").get<std::string>();
    a.service_account = args.at("service_account").get<std::string>();
    a.user = args.at("user").get<std::string>();
    a.to_key = opt<std::string>(args, "to_key");
    return a;
}

json to_json(const RewrapArgs& a)
{
    json j = {{"device", a.device},
              {"disk_id", a.disk_id},
              {"key", a.key},
              {"service_account", a.service_account},
              {"user", a.user}};
    if (a.type) {
        j["type"] = *a.type;
    }
    if (a.to_key) {
        j["to_key"] = *a.to_key;
    }
    return j;
}

ImportArgs import_args(const json& args)
{
    json rest = args;
    rest.erase("source");
    return ImportArgs{format_args(rest), args.at("source").get<std::string>()};
}

json to_json(const ImportArgs& a)
{
    json j = to_json(a.format);
    j["source"] = a.source;
    return j;
}

Response parse_recover_response(std::span<const std::uint8_t> message, std::span<const std::uint8_t>& secret)
{
    constexpr std::uint64_t kMaxSecret = 1024;
    const auto nul = std::find(message.begin(), message.end(), std::uint8_t{0});
    const auto text_bytes = static_cast<std::size_t>(nul - message.begin());
    secret = {};
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): bytes as text
    Response r = parse_response(std::string_view(reinterpret_cast<const char*>(message.data()), text_bytes));
    if (r.progress) {
        fail("a recover response carries no progress");
    }
    const std::size_t after = nul == message.end() ? 0 : message.size() - text_bytes - 1;
    if (!r.ok) {
        if (nul != message.end()) {
            fail("an error response carries no secret");
        }
        return r;
    }
    const auto declared = r.result.find("passphrase_bytes");
    if (!r.result.is_object() || declared == r.result.end() || !declared->is_number_unsigned() ||
        declared->get<std::uint64_t>() == 0 || declared->get<std::uint64_t>() > kMaxSecret) {
        fail("a recover response must announce 1 to " + std::to_string(kMaxSecret) + " passphrase_bytes");
    }
    if (nul == message.end() || declared->get<std::uint64_t>() != after) {
        fail("a recover response announces " + std::to_string(declared->get<std::uint64_t>()) +
             " passphrase_bytes and carries " + std::to_string(after));
    }
    secret = message.subspan(text_bytes + 1);
    return r;
}

RecoverArgs recover_args(const json& args) { return RecoverArgs{args.at("device").get<std::string>()}; }

AutoDeviceArgs auto_device_args(const json& args) { return AutoDeviceArgs{args.at("devno").get<std::string>()}; }

json to_json(const AutoDeviceArgs& a) { return {{"devno", a.devno}}; }

json to_json(const RecoverArgs& a) { return json{{"device", a.device}}; }

DecryptArgs decrypt_args(const json& args)
{
    return DecryptArgs{opt<std::string>(args, "device"), args.at("disk_id").get<std::string>()};
}

json to_json(const DecryptArgs& a)
{
    json j = {{"disk_id", a.disk_id}};
    if (a.device) {
        j["device"] = *a.device;
    }
    return j;
}

}  // namespace diskcrypt::proto
