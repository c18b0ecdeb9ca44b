#include "agent/secure_buffer.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "agent/error.hpp"

namespace diskcrypt {

namespace {

// mlock and munlock by system call: AddressSanitizer replaces the libc
// wrappers with no-ops ("ASan ignores mlock"), which would silently leave
// secrets swappable in the sanitizer build.
int lock_pages(void* p, std::size_t n)
{
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): syscall is a C vararg API
    return static_cast<int>(syscall(SYS_mlock, p, n));
}

int unlock_pages(void* p, std::size_t n)
{
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): syscall is a C vararg API
    return static_cast<int>(syscall(SYS_munlock, p, n));
}

std::size_t page_size()
{
    const long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? static_cast<std::size_t>(ps) : 4096U;
}

}  // namespace

SecureBuffer::SecureBuffer(std::size_t size) : size_(size)
{
    if (size == 0) {
        return;
    }
    const std::size_t ps = page_size();
    mapped_ = (size + ps - 1) / ps * ps;
    void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        const int e = errno;
        size_ = mapped_ = 0;
        throw Error(Errc::internal, errno_text("cannot map memory for a secret", e));
    }
    data_ = static_cast<std::uint8_t*>(p);
    if (lock_pages(data_, mapped_) != 0) {
        const int e = errno;
        release();
        throw Error(Errc::internal, errno_text("cannot lock memory for a secret (mlock)", e),
                    "raise RLIMIT_MEMLOCK (LimitMEMLOCK= in the unit) or run the agent as root");
    }
    // Both are advisory hardening: MADV_DONTDUMP keeps the page out of core
    // dumps, MADV_WIPEONFORK gives a forked child zeros instead of the secret.
    if (madvise(data_, mapped_, MADV_DONTDUMP) != 0 || madvise(data_, mapped_, MADV_WIPEONFORK) != 0) {
        const int e = errno;
        release();
        throw Error(Errc::internal, errno_text("cannot exclude secret memory from dumps (madvise)", e));
    }
}

SecureBuffer::SecureBuffer(SecureBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0))
{
}

SecureBuffer& SecureBuffer::operator=(SecureBuffer&& other) noexcept
{
    if (this != &other) {
        release();
        data_ = std::exchange(other.data_, nullptr);
        size_ = std::exchange(other.size_, 0);
        mapped_ = std::exchange(other.mapped_, 0);
    }
    return *this;
}

SecureBuffer::~SecureBuffer() { release(); }

void SecureBuffer::release() noexcept
{
    if (data_ != nullptr) {
        OPENSSL_cleanse(data_, mapped_);
        (void)unlock_pages(data_, mapped_);
        (void)munmap(data_, mapped_);
    }
    data_ = nullptr;
    size_ = mapped_ = 0;
}

char* SecureBuffer::chars() { return reinterpret_cast<char*>(data_); }

const char* SecureBuffer::chars() const { return reinterpret_cast<const char*>(data_); }

void SecureBuffer::truncate(std::size_t size)
{
    if (size < size_) {
        OPENSSL_cleanse(data_ + size, size_ - size);
        size_ = size;
    }
}

bool SecureBuffer::equals(std::span<const std::uint8_t> other) const
{
    return other.size() == size_ && (size_ == 0 || CRYPTO_memcmp(data_, other.data(), size_) == 0);
}

SecureBuffer SecureBuffer::random(std::size_t size)
{
    SecureBuffer b(size);
    if (size > 0 && RAND_priv_bytes(b.data(), static_cast<int>(size)) != 1) {
        throw Error(Errc::internal, "the random number generator failed (RAND_priv_bytes)");
    }
    return b;
}

void harden_process()
{
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): prctl is a C vararg API
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
        throw Error(Errc::internal, errno_text("cannot make the process non-dumpable (PR_SET_DUMPABLE)", errno));
    }
    const rlimit none{0, 0};
    if (setrlimit(RLIMIT_CORE, &none) != 0) {
        throw Error(Errc::internal, errno_text("cannot disable core dumps (RLIMIT_CORE)", errno));
    }
}

bool process_dumpable()
{
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): prctl is a C vararg API
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0;
}

}  // namespace diskcrypt
