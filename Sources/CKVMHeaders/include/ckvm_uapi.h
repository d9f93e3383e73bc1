/*
 * The parts of the KVM uAPI that confidential-guest memory population needs
 * and that Debian 12's <linux/kvm.h> (6.1) does not have.
 *
 * Every struct and constant is a prefixed copy (ckvm_ / CKVM_) so that it never
 * clashes with a newer distro header that gains the kernel's own names. Sizes
 * and offsets are pinned by _Static_assert in ckvm_checks.c. Older, stable
 * structs (kvm_regs, kvm_sregs, kvm_run, kvm_cpuid2, ...) come from the
 * installed <linux/kvm.h>.
 */
#ifndef CKVM_UAPI_H
#define CKVM_UAPI_H

#include <linux/types.h>

/* ---------------------------------------------------------------------------
 * Capabilities (include/uapi/linux/kvm.h, 6.18)
 * ------------------------------------------------------------------------- */
#define CKVM_CAP_NR_MEMSLOTS             10
#define CKVM_CAP_EXIT_HYPERCALL          201
#define CKVM_CAP_USER_MEMORY2            231
#define CKVM_CAP_MEMORY_FAULT_INFO       232
#define CKVM_CAP_MEMORY_ATTRIBUTES       233
#define CKVM_CAP_GUEST_MEMFD             234
#define CKVM_CAP_VM_TYPES                235
#define CKVM_CAP_PRE_FAULT_MEMORY        236
#define CKVM_CAP_GUEST_MEMFD_FLAGS       244

/* ---------------------------------------------------------------------------
 * VM types (arch/x86/include/uapi/asm/kvm.h, 6.18; arm64 realm bit from the
 * Arm CCA series v14, unmerged)
 * ------------------------------------------------------------------------- */
#define CKVM_X86_DEFAULT_VM              0
#define CKVM_X86_SW_PROTECTED_VM         1
#define CKVM_X86_SEV_VM                  2
#define CKVM_X86_SEV_ES_VM               3
#define CKVM_X86_SNP_VM                  4
#define CKVM_X86_TDX_VM                  5
#define CKVM_VM_TYPE_ARM_REALM           (1UL << 30)

/* ---------------------------------------------------------------------------
 * guest_memfd (include/uapi/linux/kvm.h, 6.18; NO_DIRECT_MAP from the 7.0-era
 * tree, not accepted by 6.18)
 * ------------------------------------------------------------------------- */
#define CKVM_GUEST_MEMFD_FLAG_MMAP           (1ULL << 0)
#define CKVM_GUEST_MEMFD_FLAG_INIT_SHARED    (1ULL << 1)
#define CKVM_GUEST_MEMFD_FLAG_NO_DIRECT_MAP  (1ULL << 2)


struct ckvm_create_guest_memfd {
    __u64 size;
    __u64 flags;
    __u64 reserved[6];
};

/* ---------------------------------------------------------------------------
 * Memslots with a guest_memfd (include/uapi/linux/kvm.h, 6.8+)
 * ------------------------------------------------------------------------- */
#define CKVM_MEM_LOG_DIRTY_PAGES         (1U << 0)
#define CKVM_MEM_READONLY                (1U << 1)
#define CKVM_MEM_GUEST_MEMFD             (1U << 2)

struct ckvm_userspace_memory_region2 {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
    __u64 guest_memfd_offset;
    __u32 guest_memfd;
    __u32 pad1;
    __u64 pad2[14];
};

/* ---------------------------------------------------------------------------
 * Memory attributes (include/uapi/linux/kvm.h, 6.8+)
 * ------------------------------------------------------------------------- */
#define CKVM_MEMORY_ATTRIBUTE_PRIVATE    (1ULL << 3)

struct ckvm_memory_attributes {
    __u64 address;
    __u64 size;
    __u64 attributes;
    __u64 flags;
};


/* ---------------------------------------------------------------------------
 * KVM_EXIT_MEMORY_FAULT (include/uapi/linux/kvm.h, 6.8+): the exit union at
 * offset 32 of struct kvm_run holds these three words.
 * ------------------------------------------------------------------------- */
#define CKVM_EXIT_MEMORY_FAULT           39
#define CKVM_EXIT_TDX                    40
#define CKVM_MEMORY_EXIT_FLAG_PRIVATE    (1ULL << 3)

struct ckvm_memory_fault_exit {
    __u64 flags;
    __u64 gpa;
    __u64 size;
};

/* Explicit conversion requests (include/uapi/linux/kvm_para.h). */
#define CKVM_HC_MAP_GPA_RANGE            12
#define CKVM_MAP_GPA_RANGE_ENCRYPTED     (1ULL << 4)

/* ---------------------------------------------------------------------------
 * KVM_PRE_FAULT_MEMORY (include/uapi/linux/kvm.h, 6.11+)
 * ------------------------------------------------------------------------- */
struct ckvm_pre_fault_memory {
    __u64 gpa;
    __u64 size;
    __u64 flags;
    __u64 padding[5];
};

/* ---------------------------------------------------------------------------
 * KVM_MEMORY_ENCRYPT_OP framing for SEV (arch/x86/include/uapi/asm/kvm.h, 6.11+)
 * ------------------------------------------------------------------------- */
struct ckvm_sev_cmd {
    __u32 id;
    __u32 pad0;
    __u64 data;
    __u32 error;
    __u32 sev_fd;
};

/* enum sev_cmd_id, the subset this project issues. */
#define CKVM_SEV_INIT                    0
#define CKVM_SEV_ES_INIT                 1
#define CKVM_SEV_INIT2                   22
#define CKVM_SEV_SNP_LAUNCH_START        100
#define CKVM_SEV_SNP_LAUNCH_UPDATE       101
#define CKVM_SEV_SNP_LAUNCH_FINISH       102

/* KVM_GET_DEVICE_ATTR on /dev/kvm, group KVM_X86_GRP_SEV. */
#define CKVM_X86_GRP_SEV                 1
#define CKVM_X86_SEV_VMSA_FEATURES       0
#define CKVM_X86_SNP_POLICY_BITS         1

struct ckvm_sev_init {
    __u64 vmsa_features;
    __u32 flags;
    __u16 ghcb_version;
    __u16 pad1;
    __u32 pad2[8];
};

struct ckvm_sev_snp_launch_start {
    __u64 policy;
    __u8  gosvw[16];
    __u16 flags;
    __u8  pad0[6];
    __u64 pad1[4];
};

/* KVM_SEV_SNP_PAGE_TYPE_*: the firmware's own page-type numbers. */
#define CKVM_SEV_SNP_PAGE_TYPE_NORMAL      0x1
#define CKVM_SEV_SNP_PAGE_TYPE_VMSA        0x2 /* firmware only; KVM measures VMSAs itself */
#define CKVM_SEV_SNP_PAGE_TYPE_ZERO        0x3
#define CKVM_SEV_SNP_PAGE_TYPE_UNMEASURED  0x4
#define CKVM_SEV_SNP_PAGE_TYPE_SECRETS     0x5
#define CKVM_SEV_SNP_PAGE_TYPE_CPUID       0x6

struct ckvm_sev_snp_launch_update {
    __u64 gfn_start;
    __u64 uaddr;
    __u64 len;
    __u8  type;
    __u8  pad0;
    __u16 flags;
    __u32 pad1;
    __u64 pad2[4];
};

#define CKVM_SEV_SNP_ID_BLOCK_SIZE       96
#define CKVM_SEV_SNP_ID_AUTH_SIZE        4096
#define CKVM_SEV_SNP_FINISH_DATA_SIZE    32

struct ckvm_sev_snp_launch_finish {
    __u64 id_block_uaddr;
    __u64 id_auth_uaddr;
    __u8  id_block_en;
    __u8  auth_key_en;
    __u8  vcek_disabled;
    __u8  host_data[CKVM_SEV_SNP_FINISH_DATA_SIZE];
    __u8  pad0[3];
    __u16 flags;
    __u64 pad1[4];
};

/* SNP guest policy bits accepted by KVM 6.11-6.18 (SNP ABI names). */
#define CKVM_SNP_POLICY_SMT              (1ULL << 16)
#define CKVM_SNP_POLICY_RSVD_MBO         (1ULL << 17)
#define CKVM_SNP_POLICY_MIGRATE_MA       (1ULL << 18)
#define CKVM_SNP_POLICY_DEBUG            (1ULL << 19)
#define CKVM_SNP_POLICY_SINGLE_SOCKET    (1ULL << 20)

/* SEV firmware status codes (include/uapi/linux/psp-sev.h) used by the flows. */
#define CKVM_SEV_RET_SUCCESS             0x00
#define CKVM_SEV_RET_INVALID_GUEST_STATE 0x02
#define CKVM_SEV_RET_INVALID_ADDRESS     0x09
#define CKVM_SEV_RET_INVALID_PARAM       0x16
#define CKVM_SEV_RET_INVALID_PAGE_STATE  0x1A

/* The GPA the RMP records for a vCPU's VMSA page (arch/x86/kvm/svm/sev.c). */
#define CKVM_SNP_INITIAL_VMSA_GPA        0xFFFFFFFFF000ULL

/* ---------------------------------------------------------------------------
 * Intel TDX (arch/x86/include/uapi/asm/kvm.h, 6.16+)
 * ------------------------------------------------------------------------- */
struct ckvm_tdx_cmd {
    __u32 id;
    __u32 flags;
    __u64 data;
    __u64 hw_error;
};

#define CKVM_TDX_CAPABILITIES            0
#define CKVM_TDX_INIT_VM                 1
#define CKVM_TDX_INIT_VCPU               2
#define CKVM_TDX_INIT_MEM_REGION         3
#define CKVM_TDX_FINALIZE_VM             4
#define CKVM_TDX_GET_CPUID               5

/* kvm_tdx_cmd.flags for KVM_TDX_INIT_MEM_REGION. */
#define CKVM_TDX_MEASURE_MEMORY_REGION   (1U << 0)

/* The leading part of struct kvm_cpuid2; entries follow in memory. */
struct ckvm_cpuid2_header {
    __u32 nent;
    __u32 padding;
};

/*
 * struct kvm_tdx_init_vm ends in a struct kvm_cpuid2 with a flexible array;
 * this copy stops at its 8-byte header and the caller appends the entries.
 */
struct ckvm_tdx_init_vm {
    __u64 attributes;
    __u64 xfam;
    __u64 mrconfigid[6];
    __u64 mrowner[6];
    __u64 mrownerconfig[6];
    __u64 reserved[12];
    struct ckvm_cpuid2_header cpuid;
};

struct ckvm_tdx_capabilities {
    __u64 supported_attrs;
    __u64 supported_xfam;
    __u64 kernel_tdvmcallinfo_1_r11;
    __u64 user_tdvmcallinfo_1_r11;
    __u64 kernel_tdvmcallinfo_1_r12;
    __u64 user_tdvmcallinfo_1_r12;
    __u64 reserved[250];
    struct ckvm_cpuid2_header cpuid;
};

struct ckvm_tdx_init_mem_region {
    __u64 source_addr;
    __u64 gpa;
    __u64 nr_pages;
};


/* ---------------------------------------------------------------------------
 * Legacy SEV region registration (arch/x86/include/uapi/asm/kvm.h).
 * ------------------------------------------------------------------------- */
struct ckvm_enc_region {
    __u64 addr;
    __u64 size;
};

#endif /* CKVM_UAPI_H */
