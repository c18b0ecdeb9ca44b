// diskcrypt-test-unwrap: the tests' own way to a disk's secrets, through the
// test HSM, for checks the agent must never allow: opening a disk with stock
// cryptsetup, and scanning everything for the DEK. Test use only.
//
//   diskcrypt-test-unwrap --config FILE DEVICE DISK-ID          the 32-byte keyslot secret, raw, on stdout
//   diskcrypt-test-unwrap --config FILE DEVICE DISK-ID --dek    the 64-byte DEK, lower-case hex, on stdout
#include <libcryptsetup.h>
#include <unistd.h>

#include <iostream>
#include <string>

#include "agent/config.hpp"
#include "agent/disk/header.hpp"
#include "agent/ops/verify.hpp"
#include "agent/secure_buffer.hpp"

int main(int argc, char** argv)
{
    using namespace diskcrypt;
    const std::string usage = "usage: diskcrypt-test-unwrap --config FILE DEVICE DISK-ID [--dek]";
    if ((argc != 5 && argc != 6) || std::string(argv[1]) != "--config" ||
        (argc == 6 && std::string(argv[5]) != "--dek")) {
        std::cerr << usage << '\n';
        return 2;
    }
    const std::string device = argv[3];
    const std::string disk_id = argv[4];
    try {
        set_log_program("diskcrypt-test-unwrap");
        crypt_token_external_disable();  // as the agent: a header never loads a plugin
        const AgentConfig cfg = load_config(argv[2]);
        const CryptDevice cd = open_luks2(device);
        const DiskHeader header = read_header(cd.get(), device);
        const SecureBuffer secret = unwrap_secret(cfg, header, disk_id);
        if (argc == 5) {
            return ::write(STDOUT_FILENO, secret.data(), secret.size()) == static_cast<ssize_t>(secret.size()) ? 0 : 1;
        }
        SecureBuffer dek(64);
        std::size_t size = dek.size();
        if (crypt_volume_key_get(cd.get(), header.token.keyslot, dek.chars(), &size, secret.chars(), secret.size()) <
            0) {
            std::cerr << "diskcrypt-test-unwrap: the secret does not open the keyslot\n";
            return 1;
        }
        static constexpr std::string_view kHex = "0123456789abcdef";
        std::string hex;
        for (std::size_t i = 0; i < size; ++i) {
            hex += kHex[dek.data()[i] >> 4U];
            hex += kHex[dek.data()[i] & 0xFU];
        }
        std::cout << hex << '\n';
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "diskcrypt-test-unwrap: " << e.what() << '\n';
        return 1;
    }
}
