// Fuzz target: the whole header path. The input becomes a LUKS2 image in a
// memfd, which open_luks2() loads through libcryptsetup and read_header()
// checks, exactly as attach and verify do (/proc/self/fd/N).
//
// Raw bytes would almost never pass the header checksum, so the input is the
// parts an attacker edits, and this target writes a valid binary header around
// them (both copies, magic, version 2, sizes, offsets, SHA-256 checksum):
//
//   byte 0        bits 0-1: header size 16/32/64/128 KiB (format writes 16);
//                 bit 2: corrupt the secondary copy's checksum
//   bytes 1-40    the binary header's UUID field
//   bytes 41-88   its subsystem field
//   bytes 89-136  its label field
//   the rest      the JSON metadata area (cut to fit, NUL-terminated)
//
// Seeds: corpus/header/, made by make-header-seeds.sh. diskcrypt::Error is the
// expected refusal; anything else is a finding.
#include <libcryptsetup.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "agent/disk/header.hpp"
#include "agent/error.hpp"
#include "agent/log.hpp"
#include "tests/support/luks2_layout.hpp"

namespace {

constexpr std::size_t kImageBytes = std::size_t{2} * 1024 * 1024;  // header area and a little data
using namespace diskcrypt::test::luks2;  // NOLINT(google-build-using-namespace): the layout's names

constexpr std::size_t kPrefix = 1 + kUuidBytes + kSubsystemBytes + kLabelBytes;
constexpr std::size_t kMaxHdrSize = std::size_t{128} * 1024;

// The image, made once by LLVMFuzzerInitialize.
struct Image {
    int fd = -1;
    std::string path;                      // /proc/self/fd/N
    std::size_t extent = 2 * kMaxHdrSize;  // the bytes a header may have touched
    bool verbose = false;                  // DISKCRYPT_FUZZ_VERBOSE=1: print each refusal (to check seeds)
};

Image& image()
{
    static Image img;
    return img;
}

[[noreturn]] void die(const char* what)
{
    std::cerr << "fuzz-header: " << what << ": " << std::strerror(errno) << '\n';  // NOLINT(concurrency-mt-unsafe)
    std::abort();
}

void put_be(std::vector<std::uint8_t>& b, std::size_t at, std::uint64_t v, std::size_t bytes)
{
    for (std::size_t i = 0; i < bytes; ++i) {
        b[at + i] = static_cast<std::uint8_t>(v >> (8 * (bytes - 1 - i)));
    }
}

void sha256(const std::uint8_t* data, std::size_t size, std::uint8_t* out)
{
    unsigned len = 0;
    if (EVP_Digest(data, size, out, &len, EVP_sha256(), nullptr) != 1 || len != 32) {
        std::abort();
    }
}

// Writes one header copy (binary header and JSON area, hdr_size bytes) at
// `offset` of the image.
void write_copy(const std::uint8_t* data, std::size_t size, std::size_t hdr_size, std::size_t offset, bool corrupt)
{
    static std::vector<std::uint8_t> b(kMaxHdrSize);  // reused: this runs thousands of times a second
    std::memset(b.data(), 0, hdr_size);
    static constexpr std::array<std::uint8_t, 6> kPrimary{'L', 'U', 'K', 'S', 0xba, 0xbe};
    static constexpr std::array<std::uint8_t, 6> kSecondary{'S', 'K', 'U', 'L', 0xba, 0xbe};
    std::memcpy(b.data(), offset == 0 ? kPrimary.data() : kSecondary.data(), 6);
    put_be(b, kOffVersion, 2, 2);
    put_be(b, kOffHdrSize, hdr_size, 8);
    put_be(b, kOffSeqid, 1, 8);
    std::memcpy(&b[kOffCsumAlg], "sha256", 6);
    for (std::size_t i = 0; i < 64; ++i) {
        b[kOffSalt + i] = static_cast<std::uint8_t>(i + offset / 512);
    }
    const auto field = [&](std::size_t from, std::size_t len, std::size_t to) {
        if (size > from) {
            std::memcpy(&b[to], data + from, std::min(len - 1, size - from));  // keep a NUL at the end
        }
    };
    field(1, kUuidBytes, kOffUuid);
    field(1 + kUuidBytes, kSubsystemBytes, kOffSubsystem);
    field(1 + kUuidBytes + kSubsystemBytes, kLabelBytes, kOffLabel);
    put_be(b, kOffHdrOffset, offset, 8);
    if (size > kPrefix) {
        std::memcpy(&b[kBinaryHeader], data + kPrefix, std::min(size - kPrefix, hdr_size - kBinaryHeader - 1));
    }
    sha256(b.data(), hdr_size, &b[kOffCsum]);
    if (corrupt) {
        b[kOffCsum] ^= 0xff;
    }
    if (pwrite(image().fd, b.data(), hdr_size, static_cast<off_t>(offset)) != static_cast<ssize_t>(hdr_size)) {
        die("pwrite");
    }
}

// Zeroes [from, to) of the image: what a larger header of an earlier input left.
void clear(std::size_t from, std::size_t to)
{
    static const std::vector<std::uint8_t> zeros(2 * kMaxHdrSize, 0);
    if (to > from &&
        pwrite(image().fd, zeros.data(), to - from, static_cast<off_t>(from)) != static_cast<ssize_t>(to - from)) {
        die("pwrite");
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/)
{
    crypt_token_external_disable();  // as the agent: never load token plugins
    diskcrypt::route_libcryptsetup_log();
    diskcrypt::set_log_level(diskcrypt::LogLevel::error);
    Image& img = image();
    img.fd = memfd_create("fuzz-luks2", MFD_CLOEXEC);
    if (img.fd < 0 || ftruncate(img.fd, static_cast<off_t>(kImageBytes)) != 0) {
        die("memfd");
    }
    img.path = "/proc/self/fd/" + std::to_string(img.fd);
    img.verbose = std::getenv("DISKCRYPT_FUZZ_VERBOSE") != nullptr;  // NOLINT(concurrency-mt-unsafe): single-threaded
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using namespace diskcrypt;
    const std::uint8_t flags = size > 0 ? data[0] : 0;
    const std::size_t hdr_size = std::size_t{16384} << (flags & 3U);
    // Both copies (libcryptsetup may have repaired one last time), then
    // whatever a larger header of an earlier input left behind them.
    write_copy(data, size, hdr_size, 0, false);
    write_copy(data, size, hdr_size, hdr_size, (flags & 4U) != 0);
    Image& img = image();
    clear(2 * hdr_size, img.extent);
    img.extent = 2 * hdr_size;
    try {
        const CryptDevice cd = open_luks2(img.path);
        (void)read_header(cd.get(), img.path);
        if (img.verbose) {
            std::cerr << "fuzz-header: accepted\n";
        }
    } catch (const Error& e) {
        // A refusal: attach and verify fail with a header error.
        if (img.verbose) {
            std::cerr << "fuzz-header: refused: " << e.what() << '\n';
        }
    }
    return 0;
}
