/*
 * Unmerged kernel interfaces: the guest_memfd HugeTLB series, guest_memfd
 * in-place conversion (KVM_SET_MEMORY_ATTRIBUTES2), and the Arm CCA series.
 * Their numbers are the series' own, or assumed where a series has none
 * that still fits, and may change before they merge; GuestMemfd issues
 * none of them, and reads none of their capabilities, unless the caller
 * opts in (ExperimentalInterfaces).
 */
#ifndef CKVM_EXPERIMENTAL_H
#define CKVM_EXPERIMENTAL_H
#include "ckvm_uapi.h"
#include "ckvm_ioctls.h"

/* Arm CCA series, unmerged: v12 used 247, v14 uses 249. */
#define CKVM_CAP_ARM_RMI_V12             247
#define CKVM_CAP_ARM_RMI_V14             249

/* The guest_memfd HugeTLB series (unmerged; RFC v2 of May 2025): the file is
 * backed by HugeTLB pages whose size is given as log2 in bits 63:58, as
 * memfd_create's MFD_HUGE_* do. RFC v2 used bit 2, which NO_DIRECT_MAP has
 * taken since; this package assumes the next free bit until the series is
 * merged. KVM_CAP_GUEST_MEMFD_FLAGS lists the bit where the kernel has it. */
#define CKVM_GUEST_MEMFD_FLAG_HUGETLB        (1ULL << 3)
#define CKVM_GUEST_MEMFD_HUGETLB_SHIFT       58
#define CKVM_GUEST_MEMFD_HUGETLB_MASK        (0x3FULL << CKVM_GUEST_MEMFD_HUGETLB_SHIFT)
#define CKVM_GUEST_MEMFD_HUGETLB_2MB         (21ULL << CKVM_GUEST_MEMFD_HUGETLB_SHIFT)
#define CKVM_GUEST_MEMFD_HUGETLB_1GB         (30ULL << CKVM_GUEST_MEMFD_HUGETLB_SHIFT)

/*
 * KVM_SET_MEMORY_ATTRIBUTES2, from the guest_memfd in-place conversion series
 * (unmerged; v8, June 2026). Issued on a guest_memfd descriptor, where the
 * first word is a byte offset into the file. All or nothing; on error the
 * struct is copied back with error_offset naming the page that blocked.
 * Enabled by the kvm.gmem_in_place_conversion module parameter and reported
 * by KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES.
 */
#define CKVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES 250

struct ckvm_memory_attributes2 {
    __u64 offset;
    __u64 size;
    __u64 attributes;
    __u64 flags;
    __u64 error_offset;
    __u64 reserved[11];
};

/* RFC v1 of the same series (October 2025): 64 bytes, nr 0xd6, VM or gmem fd. */
struct ckvm_memory_attributes2_rfc {
    __u64 address;
    __u64 size;
    __u64 attributes;
    __u64 flags;
    __u64 error_offset;
    __u64 reserved[3];
};

/* ---------------------------------------------------------------------------
 * Arm CCA populate, Steven Price's series v12/v14 (unmerged). v12 declared the
 * ioctl _IOW and returned bytes populated; v14 made it _IOWR, returning 0 and
 * writing back base/size/source_uaddr.
 * ------------------------------------------------------------------------- */
#define CKVM_ARM_RMI_POPULATE_FLAGS_MEASURE  (1U << 0)

struct ckvm_arm_rmi_populate {
    __u64 base;
    __u64 size;
    __u64 source_uaddr;
    __u32 flags;
    __u32 reserved;
};

/* Realm IPA states (Arm RMM specification). */
#define CKVM_RMI_RIPAS_EMPTY             0
#define CKVM_RMI_RIPAS_RAM               1
#define CKVM_RMI_RIPAS_DESTROYED         2
#define CKVM_RMI_RIPAS_DEV               3

/* Unmerged proposals; their numbers are not stable. ATTRIBUTES2 reuses nr 0xd2
 * with a larger in/out struct in the in-place series v8; RFC v1 used 0xd6. */
static const unsigned long CKVM_SET_MEMORY_ATTRIBUTES2 = _IOWR(CKVM_KVMIO, 0xd2, struct ckvm_memory_attributes2);
static const unsigned long CKVM_SET_MEMORY_ATTRIBUTES2_RFC = _IOWR(CKVM_KVMIO, 0xd6, struct ckvm_memory_attributes2_rfc);
static const unsigned long CKVM_ARM_RMI_POPULATE_V12   = _IOW(CKVM_KVMIO, 0xd7, struct ckvm_arm_rmi_populate);
static const unsigned long CKVM_ARM_RMI_POPULATE_V14   = _IOWR(CKVM_KVMIO, 0xd7, struct ckvm_arm_rmi_populate);

#endif /* CKVM_EXPERIMENTAL_H */
