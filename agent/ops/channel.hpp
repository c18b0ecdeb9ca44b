// What a long operation (copy) may tell its caller while it runs, and how it
// learns that it should stop. The server gives each request one; tests and
// short operations use NoChannel.
#pragma once
#include <nlohmann/json.hpp>

namespace diskcrypt {

class OpChannel {
public:
    OpChannel() = default;
    OpChannel(const OpChannel&) = delete;
    OpChannel& operator=(const OpChannel&) = delete;
    OpChannel(OpChannel&&) = delete;
    OpChannel& operator=(OpChannel&&) = delete;
    virtual ~OpChannel() = default;
    // Best effort: never blocks, may drop updates the caller does not read.
    virtual void progress(const nlohmann::json& update) = 0;
    // Whether the caller hung up or the agent is stopping.
    [[nodiscard]] virtual bool cancelled() = 0;
};

class NoChannel final : public OpChannel {
public:
    void progress(const nlohmann::json& /*update*/) override {}
    [[nodiscard]] bool cancelled() override { return false; }
};

}  // namespace diskcrypt
