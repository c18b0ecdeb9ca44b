#include "tests/support/softhsm.hpp"

#include <sys/stat.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace diskcrypt::test {

namespace {

void check(CK_RV rv, const char* what)
{
    if (rv != CKR_OK) {
        throw std::runtime_error(std::string(what) + " failed: rv " + std::to_string(rv));
    }
}

}  // namespace

SoftHsm::SoftHsm(const TempDir& dir, std::string label, std::string pin)
    : conf_(dir / "softhsm2.conf"),
      token_dir_(dir / "tokens"),
      pin_file_(dir / "hsm.pin"),
      label_(std::move(label)),
      pin_(std::move(pin))
{
    if (mkdir(token_dir_.c_str(), 0700) != 0) {
        throw std::runtime_error("mkdir " + token_dir_);
    }
    write_file(conf_, "directories.tokendir = " + token_dir_ + "\nobjectstore.backend = file\nlog.level = ERROR\n",
               0600);
    write_file(pin_file_, pin_ + "\n", 0600);
    // For this process (the provider under test) and for the programs it starts.
    setenv("SOFTHSM2_CONF", conf_.c_str(), 1);  // NOLINT(concurrency-mt-unsafe)
    run_ok({"softhsm2-util", "--init-token", "--free", "--label", label_, "--so-pin", "so-" + pin_, "--pin", pin_});

    module_.reset(dlopen(kSoftHsmModule, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE));
    if (!module_) {
        throw std::runtime_error("cannot load SoftHSM2");
    }
    auto* get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(module_.get(), "C_GetFunctionList"));  // NOLINT
    check(get_list(&fns_), "C_GetFunctionList");
    // With locking, as the agent initialises it: SoftHSM2 initialised
    // without arguments runs without mutexes, and the providers' pools use
    // sessions from several threads at once.
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    check(fns_->C_Initialize(&args), "C_Initialize");
    CK_ULONG count = 0;
    check(fns_->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
    std::vector<CK_SLOT_ID> slots(count);
    check(fns_->C_GetSlotList(CK_TRUE, slots.data(), &count), "C_GetSlotList");
    bool found = false;
    for (CK_ULONG i = 0; i < count; ++i) {
        CK_TOKEN_INFO info{};
        if (fns_->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
            std::string(reinterpret_cast<const char*>(info.label), label_.size()) == label_ &&
            (info.flags & CKF_TOKEN_INITIALIZED) != 0) {
            slot_ = slots[i];
            found = true;
        }
    }
    if (!found) {
        throw std::runtime_error("SoftHSM token not found after init");
    }
}

SoftHsm::~SoftHsm()
{
    if (fns_ != nullptr) {
        (void)fns_->C_Finalize(nullptr);
    }
    unsetenv("SOFTHSM2_CONF");  // NOLINT(concurrency-mt-unsafe)
}

std::string SoftHsm::provider_toml(const std::string& name, const std::string& extra) const
{
    return "[providers." + name + "]\ntype = \"pkcs11\"\nmodule = \"" + kSoftHsmModule + "\"\ntoken_label = \"" +
           label_ + "\"\npin_file = \"" + pin_file_ + "\"\n" + extra;
}

Pkcs11Session SoftHsm::session()
{
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    check(fns_->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h), "C_OpenSession");
    Pkcs11Session s(fns_, h);
    const CK_RV rv =
        fns_->C_Login(h, CKU_USER, reinterpret_cast<CK_UTF8CHAR*>(pin_.data()), static_cast<CK_ULONG>(pin_.size()));
    if (rv != CKR_USER_ALREADY_LOGGED_IN) {
        check(rv, "C_Login");
    }
    return s;
}

void SoftHsm::create_key(const KeySpec& spec)
{
    const Pkcs11Session s = session();
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = spec.type;
    CK_ULONG len = spec.bytes;
    CK_BBOOL yes = CK_TRUE;
    CK_BBOOL enc = spec.encrypt ? CK_TRUE : CK_FALSE;
    CK_BBOOL dec = spec.decrypt ? CK_TRUE : CK_FALSE;
    CK_BBOOL sens = spec.sensitive ? CK_TRUE : CK_FALSE;
    CK_BBOOL ext = spec.extractable ? CK_TRUE : CK_FALSE;
    CK_BBOOL mod = spec.modifiable ? CK_TRUE : CK_FALSE;
    std::string id = spec.id;
    std::string label = spec.label;
    std::array<CK_ATTRIBUTE, 12> tmpl{{
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_VALUE_LEN, &len, sizeof(len)},
        {CKA_ENCRYPT, &enc, sizeof(enc)},
        {CKA_DECRYPT, &dec, sizeof(dec)},
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &ext, sizeof(ext)},
        {CKA_MODIFIABLE, &mod, sizeof(mod)},
        {CKA_ID, id.data(), static_cast<CK_ULONG>(id.size())},
        {CKA_LABEL, label.data(), static_cast<CK_ULONG>(label.size())},
    }};
    CK_MECHANISM mech{spec.type == CKK_AES ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN, nullptr, 0};
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
    check(fns_->C_GenerateKey(s.get(), &mech, tmpl.data(), static_cast<CK_ULONG>(tmpl.size()), &key), "C_GenerateKey");
}

}  // namespace diskcrypt::test
