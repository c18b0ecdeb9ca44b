// Wrapping a keyslot secret for one disk id: what format, copy and rewrap
// share. The AD binds the disk id, the key and version, and the mapping
// (agent/associated_data.hpp, version kAssociatedDataVersion).
#pragma once
#include <string>
#include <string_view>

#include "agent/config.hpp"
#include "agent/disk/associated_data.hpp"
#include "agent/disk/header.hpp"
#include "agent/disk/token.hpp"
#include "agent/secure_buffer.hpp"

namespace diskcrypt {

// The mapping a header describes, with the disk type the wrap binds.
MappingBinding mapping_of(const DiskHeader& header, const std::string& disk_type);

// Describes `key` (Error(kms_key) unless it is enabled and may encrypt and
// decrypt), wraps `secret` under its current version with the AD of
// `disk_id`, `key` and `mapping`, then unwraps the result to prove that the
// KMS opens what it wrapped (Error(kms_unavailable) otherwise; nothing has
// been written by then). Sets token.key (with the version), provider_type,
// ad_version and wrapped; each KMS call is audited.
void wrap_secret(const AgentConfig& cfg, KeyRef key, std::string_view disk_id, const MappingBinding& mapping,
                 const SecureBuffer& secret, Token& token);

}  // namespace diskcrypt
