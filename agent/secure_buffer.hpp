// Memory for secrets (the keyslot secret, the DEK, the KMS PIN).
//
// A SecureBuffer is its own anonymous mapping: locked into RAM (mlock), left
// out of core dumps (MADV_DONTDUMP), zeroed in a forked child (MADV_WIPEONFORK),
// and wiped with OPENSSL_cleanse before it is unmapped. If the memory cannot be
// locked the constructor throws: a secret is never held in swappable memory.
// Copies are not allowed; moves transfer the mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace diskcrypt {

class SecureBuffer {
public:
    SecureBuffer() = default;
    explicit SecureBuffer(std::size_t size);
    SecureBuffer(const SecureBuffer&) = delete;
    SecureBuffer& operator=(const SecureBuffer&) = delete;
    SecureBuffer(SecureBuffer&& other) noexcept;
    SecureBuffer& operator=(SecureBuffer&& other) noexcept;
    ~SecureBuffer();

    [[nodiscard]] std::uint8_t* data() { return data_; }
    [[nodiscard]] const std::uint8_t* data() const { return data_; }
    [[nodiscard]] char* chars();
    [[nodiscard]] const char* chars() const;
    [[nodiscard]] std::size_t size() const { return size_; }
    [[nodiscard]] bool empty() const { return size_ == 0; }
    [[nodiscard]] std::span<std::uint8_t> span() { return {data_, size_}; }
    [[nodiscard]] std::span<const std::uint8_t> span() const { return {data_, size_}; }

    // Shrinks the visible size (for example after reading fewer bytes than
    // reserved); the bytes beyond it are wiped at once.
    void truncate(std::size_t size);

    // Constant-time comparison of contents.
    [[nodiscard]] bool equals(std::span<const std::uint8_t> other) const;

    // Fills the buffer from the OS-seeded private DRBG (RAND_priv_bytes).
    static SecureBuffer random(std::size_t size);

private:
    void release() noexcept;

    std::uint8_t* data_ = nullptr;  // the start of the mapping (not owned by a smart pointer: munmap)
    std::size_t size_ = 0;          // visible bytes
    std::size_t mapped_ = 0;        // mapped bytes (whole pages)
};

// Hardens the calling process for key custody: not dumpable (no core dump, no
// ptrace by non-root, /proc/PID/mem unreadable), core size limit 0. Idempotent.
// Throws Error(internal) if the kernel refuses.
void harden_process();

// Whether the process is currently dumpable (PR_GET_DUMPABLE).
bool process_dumpable();

}  // namespace diskcrypt
