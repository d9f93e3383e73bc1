/*
 * KVM ioctl request codes as named constants, and the syscall trampolines the
 * Swift kernel seam calls.
 *
 * Swift cannot import the function-like _IO/_IOW/_IOR/_IOWR macros, so each
 * request code is a static const computed from them here. The encoding
 * (include/uapi/asm-generic/ioctl.h, shared by x86-64 and arm64) is
 *     dir << 30 | size << 16 | type << 8 | nr,   type = KVMIO = 0xAE,
 * with dir 0 = none, 1 = write, 2 = read, 3 = read/write. ckvm_checks.c pins
 * every value as a literal and against the host header where it has one.
 */
#ifndef CKVM_IOCTLS_H
#define CKVM_IOCTLS_H

#include <errno.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/ioctl.h>
#include <linux/kvm.h>
#include "ckvm_uapi.h"

#define CKVM_KVMIO 0xAE

/* System ioctls (/dev/kvm). */
static const unsigned long CKVM_GET_API_VERSION        = _IO(CKVM_KVMIO, 0x00);
static const unsigned long CKVM_CREATE_VM              = _IO(CKVM_KVMIO, 0x01);
static const unsigned long CKVM_CHECK_EXTENSION        = _IO(CKVM_KVMIO, 0x03);
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE     = _IO(CKVM_KVMIO, 0x04);
static const unsigned long CKVM_GET_SUPPORTED_CPUID    = _IOWR(CKVM_KVMIO, 0x05, struct kvm_cpuid2);

/* VM ioctls. */
static const unsigned long CKVM_CREATE_VCPU            = _IO(CKVM_KVMIO, 0x41);
static const unsigned long CKVM_SET_USER_MEMORY_REGION = _IOW(CKVM_KVMIO, 0x46, struct kvm_userspace_memory_region);
static const unsigned long CKVM_SET_NR_MMU_PAGES       = _IO(CKVM_KVMIO, 0x44);
static const unsigned long CKVM_SET_TSS_ADDR           = _IO(CKVM_KVMIO, 0x47);
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR  = _IOW(CKVM_KVMIO, 0x48, __u64);
static const unsigned long CKVM_SET_USER_MEMORY_REGION2 = _IOW(CKVM_KVMIO, 0x49, struct ckvm_userspace_memory_region2);
static const unsigned long CKVM_CREATE_IRQCHIP         = _IO(CKVM_KVMIO, 0x60);
static const unsigned long CKVM_IRQ_LINE               = _IOW(CKVM_KVMIO, 0x61, struct kvm_irq_level);
static const unsigned long CKVM_CREATE_PIT2            = _IOW(CKVM_KVMIO, 0x77, struct kvm_pit_config);
static const unsigned long CKVM_ENABLE_CAP             = _IOW(CKVM_KVMIO, 0xa3, struct kvm_enable_cap);
/* The size field is sizeof(unsigned long), not the size of the command struct. */
static const unsigned long CKVM_MEMORY_ENCRYPT_OP      = _IOWR(CKVM_KVMIO, 0xba, unsigned long);
static const unsigned long CKVM_MEMORY_ENCRYPT_REG_REGION   = _IOR(CKVM_KVMIO, 0xbb, struct ckvm_enc_region);
static const unsigned long CKVM_MEMORY_ENCRYPT_UNREG_REGION = _IOR(CKVM_KVMIO, 0xbc, struct ckvm_enc_region);
static const unsigned long CKVM_SET_MEMORY_ATTRIBUTES  = _IOW(CKVM_KVMIO, 0xd2, struct ckvm_memory_attributes);
static const unsigned long CKVM_CREATE_GUEST_MEMFD     = _IOWR(CKVM_KVMIO, 0xd4, struct ckvm_create_guest_memfd);

/* Device attributes (system fd for the x86 SEV group, VM, vCPU or device). */
static const unsigned long CKVM_SET_DEVICE_ATTR        = _IOW(CKVM_KVMIO, 0xe1, struct kvm_device_attr);
static const unsigned long CKVM_GET_DEVICE_ATTR        = _IOW(CKVM_KVMIO, 0xe2, struct kvm_device_attr);
static const unsigned long CKVM_HAS_DEVICE_ATTR        = _IOW(CKVM_KVMIO, 0xe3, struct kvm_device_attr);

/* vCPU ioctls. */
static const unsigned long CKVM_RUN                    = _IO(CKVM_KVMIO, 0x80);
static const unsigned long CKVM_GET_REGS               = _IOR(CKVM_KVMIO, 0x81, struct kvm_regs);
static const unsigned long CKVM_SET_REGS               = _IOW(CKVM_KVMIO, 0x82, struct kvm_regs);
static const unsigned long CKVM_GET_SREGS              = _IOR(CKVM_KVMIO, 0x83, struct kvm_sregs);
static const unsigned long CKVM_SET_SREGS              = _IOW(CKVM_KVMIO, 0x84, struct kvm_sregs);
static const unsigned long CKVM_SET_CPUID2             = _IOW(CKVM_KVMIO, 0x90, struct kvm_cpuid2);
static const unsigned long CKVM_GET_MP_STATE           = _IOR(CKVM_KVMIO, 0x98, struct kvm_mp_state);
static const unsigned long CKVM_PRE_FAULT_MEMORY       = _IOWR(CKVM_KVMIO, 0xd5, struct ckvm_pre_fault_memory);

/* ---------------------------------------------------------------------------
 * Trampolines. Each returns its result or -errno, captured right after the
 * call, so Swift never reads errno after other code has run.
 * ------------------------------------------------------------------------- */

/* ioctl(2) with the argument as the kernel sees it: an unsigned long that is
 * either a value (KVM_CREATE_VM's type) or a user pointer. */
static inline long ckvm_ioctl(int fd, unsigned long request, unsigned long argument) {
    long result = ioctl(fd, request, argument);
    return result < 0 ? -errno : result;
}

static inline int ckvm_open(const char *_Nonnull path, int flags) {
    int fd = open(path, flags);
    return fd < 0 ? -errno : fd;
}

static inline int ckvm_close(int fd) {
    return close(fd) < 0 ? -errno : 0;
}

/* mmap(2); on failure returns NULL and stores errno in *error. */
static inline void *_Nullable ckvm_mmap(void *_Nullable address, size_t length, int protection,
                                        int flags, int fd, long offset, int *_Nonnull error) {
    void *result = mmap(address, length, protection, flags, fd, (off_t)offset);
    if (result == MAP_FAILED) {
        *error = errno;
        return 0;
    }
    *error = 0;
    return result;
}

static inline int ckvm_munmap(void *_Nonnull address, size_t length) {
    return munmap(address, length) < 0 ? -errno : 0;
}

static inline int ckvm_madvise(void *_Nonnull address, size_t length, int advice) {
    return madvise(address, length, advice) < 0 ? -errno : 0;
}

/* fallocate(2) through syscall(2): the libc wrapper needs _GNU_SOURCE, which
 * a module header cannot count on. */
static inline int ckvm_fallocate(int fd, int mode, long offset, long length) {
    return syscall(SYS_fallocate, fd, mode, offset, length) < 0 ? -errno : 0;
}

/* fstat(2): the size and block size of a file, or -errno. */
static inline int ckvm_fstat(int fd, long long *_Nonnull size, long *_Nonnull block_size) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    *size = st.st_size;
    *block_size = st.st_blksize;
    return 0;
}

/* read(2) or, with offset >= 0, pread(2); the bytes moved, or -errno. */
static inline long ckvm_read(int fd, void *_Nonnull buffer, size_t count, long offset) {
    long done = offset < 0 ? read(fd, buffer, count) : pread(fd, buffer, count, offset);
    return done < 0 ? -errno : done;
}

/* write(2) or, with offset >= 0, pwrite(2); the bytes moved, or -errno. */
static inline long ckvm_write(int fd, const void *_Nonnull buffer, size_t count, long offset) {
    long done = offset < 0 ? write(fd, buffer, count) : pwrite(fd, buffer, count, offset);
    return done < 0 ? -errno : done;
}

/* lseek(2); the new offset, or -errno. */
static inline long ckvm_lseek(int fd, long offset, int whence) {
    long result = lseek(fd, offset, whence);
    return result < 0 ? -errno : result;
}

/* memfd_create(2) through syscall(2), for the fake kernel's guest_memfd backing. */
static inline int ckvm_memfd_create(const char *_Nonnull name, unsigned int flags) {
    long fd = syscall(SYS_memfd_create, name, flags);
    return fd < 0 ? -errno : (int)fd;
}

/* Constants that Swift cannot import from libc macros on every toolchain. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
static const int CKVM_MADV_POPULATE_READ = MADV_POPULATE_READ;
static const int CKVM_MADV_POPULATE_WRITE = MADV_POPULATE_WRITE;
static const int CKVM_FALLOC_FL_KEEP_SIZE = 0x01;
static const int CKVM_FALLOC_FL_PUNCH_HOLE = 0x02;
static const int CKVM_FALLOC_FL_ZERO_RANGE = 0x10;
/* lseek(2) whence: the next offset holding data (needs _GNU_SOURCE in libc). */
static const int CKVM_SEEK_DATA = 3;

/* The data bytes of a KVM_EXIT_MMIO, inside the exit union. */
static inline __u8 *_Nonnull ckvm_run_mmio_data(struct kvm_run *_Nonnull run) {
    return run->mmio.data;
}

/* The exit union of struct kvm_run starts at byte 32 on every architecture. */
static inline struct ckvm_memory_fault_exit *_Nonnull ckvm_run_memory_fault(struct kvm_run *_Nonnull run) {
    return (struct ckvm_memory_fault_exit *)((char *)run + 32);
}

#endif /* CKVM_IOCTLS_H */
