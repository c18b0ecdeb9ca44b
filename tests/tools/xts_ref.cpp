// SPDX-License-Identifier: GPL-2.0-only
//
// xts-ref: an independent reference for the kernel target's ciphertext.
//
// Encrypts or decrypts a region of a disk image with OpenSSL's AES-256-XTS,
// one crypto sector at a time, with plain64 IVs computed the way dm-crypt and
// dm-diskcrypt compute them: IV = little-endian (iv_offset + sector), sector
// counted in 512-byte units, or in sector_size units with --iv-large-sectors.
//
//   xts-ref --key FILE --image IMG --dev-offset SECTORS --length BYTES
//           --sector-size N --iv-offset SECTORS [--iv-large-sectors]
//           (--encrypt | --decrypt) --out FILE
//
// Exit codes: 0 done, 1 I/O or crypto failure, 2 bad arguments.

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::size_t kKeyBytes = 64;
constexpr std::size_t kIvBytes = 16;

using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)>;

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Key bytes, wiped when the object goes away.
class KeyBuffer {
public:
    KeyBuffer() = default;
    KeyBuffer(const KeyBuffer&) = delete;
    KeyBuffer& operator=(const KeyBuffer&) = delete;
    KeyBuffer(KeyBuffer&&) = delete;
    KeyBuffer& operator=(KeyBuffer&&) = delete;
    ~KeyBuffer() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }
    unsigned char* data() { return bytes_.data(); }
    [[nodiscard]] std::size_t size() const { return bytes_.size(); }

private:
    std::array<unsigned char, kKeyBytes> bytes_{};
};

struct Options {
    std::string key_file;
    std::string image;
    std::string out;
    std::uint64_t dev_offset = 0;
    std::uint64_t length = 0;
    std::uint64_t sector_size = 512;
    std::uint64_t iv_offset = 0;
    bool iv_large = false;
    int encrypt = -1;
};

std::uint64_t parse_number(std::string_view name, const char* text)
{
    std::size_t used = 0;
    const std::string s(text);
    if (s.empty() || s[0] < '0' || s[0] > '9') {
        throw UsageError(std::string(name) + ": not a number: " + s);
    }
    const unsigned long long v = std::stoull(s, &used, 10);
    if (used != s.size()) {
        throw UsageError(std::string(name) + ": not a number: " + s);
    }
    return v;
}

Options parse_args(int argc, char** argv)
{
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a(argv[i]);
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                throw UsageError(std::string(a) + " needs a value");
            }
            return argv[++i];
        };
        if (a == "--key") {
            o.key_file = value();
        } else if (a == "--image") {
            o.image = value();
        } else if (a == "--out") {
            o.out = value();
        } else if (a == "--dev-offset") {
            o.dev_offset = parse_number(a, value());
        } else if (a == "--length") {
            o.length = parse_number(a, value());
        } else if (a == "--sector-size") {
            o.sector_size = parse_number(a, value());
        } else if (a == "--iv-offset") {
            o.iv_offset = parse_number(a, value());
        } else if (a == "--iv-large-sectors") {
            o.iv_large = true;
        } else if (a == "--encrypt") {
            o.encrypt = 1;
        } else if (a == "--decrypt") {
            o.encrypt = 0;
        } else {
            throw UsageError("unknown argument: " + std::string(a));
        }
    }
    if (o.key_file.empty() || o.image.empty() || o.out.empty() || o.encrypt < 0) {
        throw UsageError("--key, --image, --out and one of --encrypt/--decrypt are required");
    }
    const auto ss = o.sector_size;
    if (ss < 512 || ss > 4096 || (ss & (ss - 1)) != 0) {
        throw UsageError("--sector-size must be 512, 1024, 2048 or 4096");
    }
    if (o.length == 0 || o.length % ss != 0) {
        throw UsageError("--length must be a non-zero multiple of the sector size");
    }
    return o;
}

void read_key(const std::string& path, KeyBuffer& key)
{
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(key.data()), static_cast<std::streamsize>(key.size()));
    if (in.gcount() != static_cast<std::streamsize>(key.size()) || in.peek() != EOF) {
        throw std::runtime_error(path + ": key file must hold exactly 64 bytes");
    }
}

void run(const Options& o)
{
    KeyBuffer key;
    read_key(o.key_file, key);

    std::ifstream img(o.image, std::ios::binary);
    if (!img) {
        throw std::runtime_error(o.image + ": cannot open");
    }
    std::vector<unsigned char> in(o.length);
    std::vector<unsigned char> out(o.length);
    img.seekg(static_cast<std::streamoff>(o.dev_offset * 512));
    img.read(reinterpret_cast<char*>(in.data()), static_cast<std::streamsize>(in.size()));
    if (img.gcount() != static_cast<std::streamsize>(in.size())) {
        throw std::runtime_error(o.image + ": region past the end of the image");
    }

    CipherCtx ctx(EVP_CIPHER_CTX_new(), &EVP_CIPHER_CTX_free);
    if (!ctx) {
        throw std::runtime_error("EVP_CIPHER_CTX_new failed");
    }
    const auto shift = static_cast<unsigned>(__builtin_ctzll(o.sector_size / 512));
    for (std::uint64_t pos = 0; pos < o.length; pos += o.sector_size) {
        std::uint64_t sector = o.iv_offset + pos / 512;
        if (o.iv_large) {
            sector >>= shift;
        }
        std::array<unsigned char, kIvBytes> iv{};
        for (std::size_t b = 0; b < 8; ++b) {
            iv[b] = static_cast<unsigned char>(sector >> (8 * b));
        }
        int len = 0;
        if (EVP_CipherInit_ex(ctx.get(), EVP_aes_256_xts(), nullptr, key.data(), iv.data(), o.encrypt) != 1 ||
            EVP_CipherUpdate(ctx.get(), out.data() + pos, &len, in.data() + pos, static_cast<int>(o.sector_size)) !=
                1 ||
            static_cast<std::uint64_t>(len) != o.sector_size) {
            throw std::runtime_error("AES-256-XTS failed at byte " + std::to_string(pos));
        }
    }

    std::ofstream dst(o.out, std::ios::binary | std::ios::trunc);
    dst.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (!dst) {
        throw std::runtime_error(o.out + ": write failed");
    }
}

}  // namespace

int main(int argc, char** argv)
{
    try {
        run(parse_args(argc, argv));
        return 0;
    } catch (const UsageError& e) {
        std::cerr << "xts-ref: " << e.what() << '\n';
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "xts-ref: " << e.what() << '\n';
        return 1;
    }
}
