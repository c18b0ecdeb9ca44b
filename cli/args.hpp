// The diskcrypt CLI's command line (CLI11), parsed into a plain struct.
// Values are checked here with the same rules the agent applies, so a typo
// fails fast with exit status 2; the agent checks them again.
#pragma once

#include <optional>
#include <ostream>
#include <string>

#include "agent/ipc/protocol.hpp"

namespace diskcrypt::cli {

enum class Command {
    format,
    verify,
    status,
    attach,
    detach,
    list,
    copy,
    rewrap,
    decrypt,
    import_image,
    auto_attach,
    auto_detach,
    key,
    check_keys,
    audit
};

struct Arguments {
    Command command = Command::status;
    std::string socket = std::string(proto::kDefaultSocketPath);
    bool json = false;
    proto::FormatArgs format;       // for Command::format
    proto::VerifyArgs verify;       // for Command::verify
    proto::AttachArgs attach;       // for Command::attach
    proto::DetachArgs detach;       // for Command::detach
    proto::StatusArgs status;       // for Command::status
    proto::CopyArgs copy;           // for Command::copy
    proto::RewrapArgs rewrap;       // for Command::rewrap
    proto::DecryptArgs decrypt;     // for Command::decrypt
    proto::ImportArgs import;       // for Command::import_image
    proto::AutoDeviceArgs autodev;  // for Command::auto_attach and auto_detach (MAJ:MIN)
    proto::KeyArgs key;             // for Command::key
    proto::AuditArgs audit;         // for Command::audit
};

// Parses argv (argv[0] is the program name). On --help, a usage error or an
// invalid value, prints to `out`/`err`, sets `exit_code` (0 for help, 2 for
// usage) and returns std::nullopt. Relative device paths are made absolute.
std::optional<Arguments> parse_arguments(int argc, const char* const* argv, std::ostream& out, std::ostream& err,
                                         int& exit_code);

}  // namespace diskcrypt::cli
