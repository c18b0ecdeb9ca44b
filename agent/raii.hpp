// Owners for every C handle the agent and the CLI use, in one place.
//
// Each owner releases its handle exactly once, accepts an empty state, and
// says whether it can be copied (never) or moved. Release failures are
// ignored on purpose: there is nothing a destructor can do about them.
#pragma once

#include <blkid/blkid.h>
#include <dlfcn.h>
#include <keyutils.h>
#include <libcryptsetup.h>
#include <libdevmapper.h>
#include <p11-kit/pkcs11.h>
#include <sys/file.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "agent/log.hpp"

namespace diskcrypt {

// A file descriptor (closed on destruction; movable).
class FileDescriptor {
public:
    FileDescriptor() = default;
    explicit FileDescriptor(int fd) : fd_(fd) {}
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    FileDescriptor(FileDescriptor&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    FileDescriptor& operator=(FileDescriptor&& other) noexcept
    {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    ~FileDescriptor() { reset(); }

    [[nodiscard]] int get() const { return fd_; }
    [[nodiscard]] bool valid() const { return fd_ >= 0; }
    explicit operator bool() const { return valid(); }
    int release() { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept
    {
        if (fd_ >= 0) {
            (void)::close(fd_);
        }
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

// The process-wide mutex of libdevmapper's global state (its log function,
// its node-operation queue; agent/dm.cpp). libcryptsetup shares that state:
// crypt_init starts its device-mapper backend and crypt_free stops it (the
// last one resets libdevmapper's log and runs its pending node operations),
// so both run under this mutex: crypt_init only through crypt_init_shared.
std::mutex& libdevmapper_mutex();
// crypt_init under the mutex, with libcryptsetup's backend pinned for the
// process (one context that is never freed), so no crypt_free ever resets
// libdevmapper under a device-mapper call of another thread.
int crypt_init_shared(crypt_device** cd, const char* device);
// The pinning alone, for agent/dm.cpp's first libdevmapper call (under the
// mutex): libcryptsetup's backend starts before the agent sets its
// libdevmapper log, and never resets it.
void pin_cryptsetup_backend();

struct CryptDeviceDeleter {
    void operator()(crypt_device* cd) const
    {
        const std::lock_guard lock(libdevmapper_mutex());
        crypt_free(cd);
    }
};
// A libcryptsetup context (crypt_init_shared .. crypt_free).
using CryptDevice = std::unique_ptr<crypt_device, CryptDeviceDeleter>;

struct BlkidProbeDeleter {
    void operator()(blkid_probe pr) const { blkid_free_probe(pr); }
};
// A libblkid probe (blkid_new_probe .. blkid_free_probe).
using BlkidProbe = std::unique_ptr<std::remove_pointer_t<blkid_probe>, BlkidProbeDeleter>;

struct DlDeleter {
    void operator()(void* handle) const { (void)dlclose(handle); }
};
// A dlopen()ed shared object.
using DlHandle = std::unique_ptr<void, DlDeleter>;

// A PKCS#11 session (C_OpenSession .. C_CloseSession). Borrows the module's
// function list, which must outlive it. Move-only. Closing the last session of
// a token also logs the application out of it.
class Pkcs11Session {
public:
    Pkcs11Session() = default;
    Pkcs11Session(CK_FUNCTION_LIST* fns, CK_SESSION_HANDLE handle) : fns_(fns), handle_(handle) {}
    Pkcs11Session(const Pkcs11Session&) = delete;
    Pkcs11Session& operator=(const Pkcs11Session&) = delete;
    Pkcs11Session(Pkcs11Session&& other) noexcept
        : fns_(std::exchange(other.fns_, nullptr)), handle_(std::exchange(other.handle_, CK_INVALID_HANDLE))
    {
    }
    Pkcs11Session& operator=(Pkcs11Session&& other) noexcept
    {
        if (this != &other) {
            close();
            fns_ = std::exchange(other.fns_, nullptr);
            handle_ = std::exchange(other.handle_, CK_INVALID_HANDLE);
        }
        return *this;
    }
    ~Pkcs11Session() { close(); }

    [[nodiscard]] CK_SESSION_HANDLE get() const { return handle_; }
    [[nodiscard]] CK_FUNCTION_LIST* functions() const { return fns_; }

private:
    void close() noexcept
    {
        if (fns_ != nullptr && handle_ != CK_INVALID_HANDLE) {
            const CK_RV rv = fns_->C_CloseSession(handle_);
            if (rv != CKR_OK) {
                log_debug("C_CloseSession failed (rv 0x" + hex_ulong(rv) + "), ignoring");
            }
        }
        fns_ = nullptr;
        handle_ = CK_INVALID_HANDLE;
    }

    CK_FUNCTION_LIST* fns_ = nullptr;
    CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
};

// An active C_FindObjectsInit on a session, ended by C_FindObjectsFinal.
class Pkcs11FindOperation {
public:
    explicit Pkcs11FindOperation(const Pkcs11Session& session) : session_(session) {}
    Pkcs11FindOperation(const Pkcs11FindOperation&) = delete;
    Pkcs11FindOperation& operator=(const Pkcs11FindOperation&) = delete;
    Pkcs11FindOperation(Pkcs11FindOperation&&) = delete;
    Pkcs11FindOperation& operator=(Pkcs11FindOperation&&) = delete;
    ~Pkcs11FindOperation() { (void)session_.functions()->C_FindObjectsFinal(session_.get()); }

private:
    const Pkcs11Session& session_;
};

struct SdJournalDeleter {
    void operator()(sd_journal* j) const { sd_journal_close(j); }
};
// A systemd journal reader (sd_journal_open .. sd_journal_close).
using SdJournal = std::unique_ptr<sd_journal, SdJournalDeleter>;

struct DmTaskDeleter {
    void operator()(dm_task* t) const { dm_task_destroy(t); }
};
// A libdevmapper task (dm_task_create .. dm_task_destroy).
using DmTask = std::unique_ptr<dm_task, DmTaskDeleter>;

// A key in the kernel keyring that must not outlive its use: invalidated
// (KEYCTL_INVALIDATE: unlinked everywhere and destroyed) on destruction or by
// invalidate(). Move-only.
class KernelKey {
public:
    KernelKey() = default;
    explicit KernelKey(key_serial_t serial) : serial_(serial) {}
    KernelKey(const KernelKey&) = delete;
    KernelKey& operator=(const KernelKey&) = delete;
    KernelKey(KernelKey&& other) noexcept : serial_(std::exchange(other.serial_, 0)) {}
    KernelKey& operator=(KernelKey&& other) noexcept
    {
        if (this != &other) {
            invalidate();
            serial_ = std::exchange(other.serial_, 0);
        }
        return *this;
    }
    ~KernelKey() { invalidate(); }

    [[nodiscard]] key_serial_t get() const { return serial_; }
    // Returns false if the kernel refused (the key is then left to its keyring's lifetime).
    bool invalidate() noexcept
    {
        if (serial_ <= 0) {
            return true;
        }
        const bool ok = keyctl_invalidate(std::exchange(serial_, 0)) == 0;
        if (!ok) {
            log_warning("KEYCTL_INVALIDATE failed, ignoring");
        }
        return ok;
    }

private:
    key_serial_t serial_ = 0;
};

// An exclusive flock() on an open lock file, released (with the file) on
// destruction. Move-only.
class FileLock {
public:
    FileLock() = default;
    explicit FileLock(FileDescriptor fd) : fd_(std::move(fd)) {}
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;
    FileLock(FileLock&&) noexcept = default;
    FileLock& operator=(FileLock&&) noexcept = default;
    ~FileLock()
    {
        if (fd_) {
            (void)flock(fd_.get(), LOCK_UN);
        }
    }
    [[nodiscard]] bool held() const { return fd_.valid(); }

private:
    FileDescriptor fd_;
};

// Runs a callable when the scope ends, unless dismissed (for undo steps).
template <typename F>
class ScopeExit {
public:
    explicit ScopeExit(F f) : f_(std::move(f)) {}
    ScopeExit(const ScopeExit&) = delete;
    ScopeExit& operator=(const ScopeExit&) = delete;
    ScopeExit(ScopeExit&&) = delete;
    ScopeExit& operator=(ScopeExit&&) = delete;
    ~ScopeExit()
    {
        if (active_) {
            f_();
        }
    }
    void dismiss() { active_ = false; }

private:
    F f_;
    bool active_ = true;
};

}  // namespace diskcrypt
