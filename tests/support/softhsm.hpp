// A SoftHSM2 token of its own for one test: token directory in the test's
// tmpfs folder, SOFTHSM2_CONF pointing at it (for this process and its
// children), a user PIN in a 0600 file, keys created through PKCS#11.
#pragma once

#include <p11-kit/pkcs11.h>

#include <string>

#include "agent/raii.hpp"
#include "tests/support/support.hpp"

namespace diskcrypt::test {

inline constexpr const char* kSoftHsmModule = "/usr/lib/softhsm/libsofthsm2.so";

struct KeySpec {
    std::string id;
    CK_KEY_TYPE type = CKK_AES;
    CK_ULONG bytes = 32;
    bool encrypt = true;
    bool decrypt = true;
    bool sensitive = true;
    bool extractable = false;
    bool modifiable = true;  // CKA_MODIFIABLE (false: C_SetAttributeValue is refused)
    std::string label = "diskcrypt-test-key";
};

class SoftHsm {
public:
    explicit SoftHsm(const TempDir& dir, std::string label = "diskcrypt", std::string pin = "4711-user-pin");
    SoftHsm(const SoftHsm&) = delete;
    SoftHsm& operator=(const SoftHsm&) = delete;
    SoftHsm(SoftHsm&&) = delete;
    SoftHsm& operator=(SoftHsm&&) = delete;
    ~SoftHsm();

    [[nodiscard]] const std::string& conf() const { return conf_; }
    [[nodiscard]] const std::string& token_dir() const { return token_dir_; }
    [[nodiscard]] const std::string& pin_file() const { return pin_file_; }
    [[nodiscard]] const std::string& pin() const { return pin_; }
    [[nodiscard]] const std::string& label() const { return label_; }

    // A [providers.NAME] section for this token (plus `extra` lines).
    [[nodiscard]] std::string provider_toml(const std::string& name = "hsm", const std::string& extra = "") const;

    // Generates a key on the token (in a session that is closed again, so the
    // token is logged out afterwards).
    void create_key(const KeySpec& spec);

    // A logged-in session for raw checks (closing it logs out).
    [[nodiscard]] Pkcs11Session session();
    [[nodiscard]] CK_FUNCTION_LIST* functions() const { return fns_; }

private:
    std::string conf_;
    std::string token_dir_;
    std::string pin_file_;
    std::string label_;
    std::string pin_;
    DlHandle module_;
    CK_FUNCTION_LIST* fns_ = nullptr;
    CK_SLOT_ID slot_ = 0;
};

}  // namespace diskcrypt::test
