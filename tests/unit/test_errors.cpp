// The exit-code table and the PKCS#11 return-code mapping.
#include <catch2/catch.hpp>
#include <set>

#include "agent/error.hpp"
#include "agent/kms/pkcs11.hpp"
#include "agent/kms/provider.hpp"

using diskcrypt::Errc;
namespace p11 = diskcrypt::kms::pkcs11;

TEST_CASE("exit codes: the documented table", "[errors]")
{
    // These numbers are an interface (agent/README.md): never renumber.
    const std::vector<std::pair<Errc, int>> expected = {
        {Errc::internal, 1},
        {Errc::usage, 2},
        {Errc::agent_unavailable, 3},
        {Errc::permission_denied, 4},
        {Errc::device, 5},
        {Errc::device_not_empty, 6},
        {Errc::header, 7},
        {Errc::kms_unavailable, 8},
        {Errc::kms_auth, 9},
        {Errc::kms_key, 10},
        {Errc::binding, 11},
        {Errc::config, 12},
        {Errc::protocol, 13},
        {Errc::not_attached, 14},
        {Errc::busy, 15},
        {Errc::conflict, 16},
        {Errc::kernel, 17},
        {Errc::access_denied, 18},
        {Errc::incomplete, 19},
        {Errc::cancelled, 20},
        {Errc::not_supported, 21},
    };
    REQUIRE(diskcrypt::errc_table().size() == expected.size());
    std::set<int> seen;
    std::set<std::string_view> names;
    for (const auto& [code, status] : expected) {
        CHECK(diskcrypt::exit_status(code) == status);
        CHECK(diskcrypt::errc_from_name(diskcrypt::errc_name(code)) == code);
        seen.insert(status);
        names.insert(diskcrypt::errc_name(code));
    }
    CHECK(seen.size() == expected.size());
    CHECK(names.size() == expected.size());
    CHECK_FALSE(diskcrypt::errc_from_name("no-such").has_value());
}

TEST_CASE("pkcs11: every CK_RV is mapped once, to a clear error", "[errors][pkcs11]")
{
    const p11::Context ctx{"hsm", "/m.so", "diskcrypt", "k1"};
    struct Case {
        CK_RV rv;
        p11::Call call;
        Errc code;
        const char* text;
    };
    const std::vector<Case> cases = {
        {CKR_PIN_INCORRECT, p11::Call::login, Errc::kms_auth, "token 'diskcrypt' rejected the PIN (CKR_PIN_INCORRECT)"},
        {CKR_PIN_LOCKED, p11::Call::login, Errc::kms_auth,
         "the user PIN of token 'diskcrypt' is locked (CKR_PIN_LOCKED)"},
        {CKR_PIN_EXPIRED, p11::Call::login, Errc::kms_auth, "has expired"},
        {CKR_USER_PIN_NOT_INITIALIZED, p11::Call::login, Errc::kms_auth, "cannot log in"},
        {CKR_KEY_FUNCTION_NOT_PERMITTED, p11::Call::encrypt, Errc::kms_key,
         "key 'k1' on token 'diskcrypt' is not allowed to encrypt"},
        {CKR_KEY_FUNCTION_NOT_PERMITTED, p11::Call::decrypt, Errc::kms_key, "is not allowed to decrypt"},
        {CKR_KEY_TYPE_INCONSISTENT, p11::Call::encrypt, Errc::kms_key, "cannot be used for AES-256-GCM"},
        {CKR_GENERAL_ERROR, p11::Call::decrypt, Errc::binding, "refused to unwrap the secret (CKR_GENERAL_ERROR)"},
        {CKR_ENCRYPTED_DATA_INVALID, p11::Call::decrypt, Errc::binding, "the authentication tag does not match"},
        {CKR_GENERAL_ERROR, p11::Call::encrypt, Errc::kms_unavailable, "the PKCS#11 module failed (CKR_GENERAL_ERROR)"},
        {CKR_TOKEN_NOT_PRESENT, p11::Call::open_session, Errc::kms_unavailable, "token 'diskcrypt' is not available"},
        {CKR_DEVICE_REMOVED, p11::Call::encrypt, Errc::kms_unavailable, "is not available (CKR_DEVICE_REMOVED)"},
        {CKR_MECHANISM_INVALID, p11::Call::encrypt, Errc::kms_unavailable, "does not support AES-GCM"},
        {CKR_HOST_MEMORY, p11::Call::encrypt, Errc::internal, "ran out of memory"},
        {0x80000001UL, p11::Call::encrypt, Errc::kms_unavailable, "PKCS#11 call failed (CKR_0x80000001)"},
    };
    for (const auto& c : cases) {
        const diskcrypt::Error e = p11::map_ck_rv(c.rv, c.call, ctx);
        INFO(p11::ckr_name(c.rv) << ": " << e.what());
        CHECK(e.code() == c.code);
        CHECK_THAT(e.what(), Catch::Matchers::StartsWith("provider 'hsm': "));
        CHECK_THAT(e.what(), Catch::Matchers::Contains(c.text));
        CHECK_FALSE(e.hint().empty());
    }
}

TEST_CASE("providers: pkcs11 registers itself", "[kms]")
{
    const auto types = diskcrypt::kms::provider_types();
    CHECK(std::find(types.begin(), types.end(), "pkcs11") != types.end());
    CHECK_THROWS_AS(diskcrypt::kms::register_provider_type("pkcs11",
                                                           [](const std::string&, diskcrypt::ConfigSection&) {
                                                               return std::unique_ptr<diskcrypt::kms::Provider>();
                                                           }),
                    diskcrypt::Error);
}
