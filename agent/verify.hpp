// `verify`: proves that this host can open a disk, without opening it for
// I/O: reads the header, checks the caller's disk id against it, unwraps the
// secret through the KMS with the AD built from the caller's disk id, and
// opens the keyslot (check only). No secret leaves the agent.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "agent/config.hpp"
#include "agent/header.hpp"
#include "agent/protocol.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {

// Unwraps a header's secret for the disk the caller names. Checks first that
// the header belongs to `disk_id` (Error(binding): "this header belongs to
// disk X, not Y"), that its provider is configured with the same type
// (Error(config)), then asks the KMS (a failed tag is Error(binding)).
SecureBuffer unwrap_secret(const AgentConfig& cfg, const DiskHeader& header, const std::string& disk_id);

struct VerifyResult {
    DiskHeader header;
};

VerifyResult verify_disk(const AgentConfig& cfg, const proto::VerifyArgs& args);
nlohmann::json to_json(const VerifyResult& r);

}  // namespace diskcrypt
