/*
 * Compile-time pins for the shim: struct sizes, key field offsets and every
 * request code, the latter both as literals and, where the installed
 * <linux/kvm.h> defines the same ioctl, against the host's own macro.
 * The numbers follow include/uapi/linux/kvm.h and
 * arch/x86/include/uapi/asm/kvm.h (6.18) and the Arm CCA series v12/v14.
 */
#include <stddef.h>
#include "CKVMHeaders.h"

#define SIZE(type, bytes) _Static_assert(sizeof(type) == (bytes), #type " size")
#define OFFSET(type, field, bytes) \
    _Static_assert(offsetof(type, field) == (bytes), #type "." #field " offset")
#define CODE(name, literal) _Static_assert(CKVM_##name == (literal), "CKVM_" #name)

/* guest_memfd */
SIZE(struct ckvm_create_guest_memfd, 64);
OFFSET(struct ckvm_create_guest_memfd, flags, 8);
OFFSET(struct ckvm_create_guest_memfd, reserved, 16);

/* memslots */
SIZE(struct ckvm_userspace_memory_region2, 160);
OFFSET(struct ckvm_userspace_memory_region2, guest_phys_addr, 8);
OFFSET(struct ckvm_userspace_memory_region2, memory_size, 16);
OFFSET(struct ckvm_userspace_memory_region2, userspace_addr, 24);
OFFSET(struct ckvm_userspace_memory_region2, guest_memfd_offset, 32);
OFFSET(struct ckvm_userspace_memory_region2, guest_memfd, 40);
OFFSET(struct ckvm_userspace_memory_region2, pad2, 48);
_Static_assert(sizeof(struct kvm_userspace_memory_region) == 32, "region v1 is the first 32 bytes of v2");

/* attributes, pre-fault, memory-fault exit */
SIZE(struct ckvm_memory_attributes, 32);
OFFSET(struct ckvm_memory_attributes, attributes, 16);
OFFSET(struct ckvm_memory_attributes, flags, 24);
SIZE(struct ckvm_memory_attributes2, 128);
OFFSET(struct ckvm_memory_attributes2, error_offset, 32);
SIZE(struct ckvm_memory_attributes2_rfc, 64);
SIZE(struct ckvm_pre_fault_memory, 64);
OFFSET(struct ckvm_pre_fault_memory, size, 8);
OFFSET(struct ckvm_pre_fault_memory, flags, 16);
SIZE(struct ckvm_memory_fault_exit, 24);
_Static_assert(offsetof(struct kvm_run, exit_reason) == 8, "kvm_run.exit_reason");
_Static_assert(offsetof(struct kvm_run, io) == 32, "kvm_run exit union");
_Static_assert(offsetof(struct kvm_run, kvm_valid_regs) == 288, "kvm_run.kvm_valid_regs");

/* SEV / SNP */
SIZE(struct ckvm_sev_cmd, 24);
OFFSET(struct ckvm_sev_cmd, data, 8);
OFFSET(struct ckvm_sev_cmd, error, 16);
OFFSET(struct ckvm_sev_cmd, sev_fd, 20);
SIZE(struct ckvm_sev_init, 48);
OFFSET(struct ckvm_sev_init, flags, 8);
OFFSET(struct ckvm_sev_init, ghcb_version, 12);
SIZE(struct ckvm_sev_snp_launch_start, 64);
OFFSET(struct ckvm_sev_snp_launch_start, gosvw, 8);
OFFSET(struct ckvm_sev_snp_launch_start, flags, 24);
OFFSET(struct ckvm_sev_snp_launch_start, pad1, 32);
SIZE(struct ckvm_sev_snp_launch_update, 64);
OFFSET(struct ckvm_sev_snp_launch_update, uaddr, 8);
OFFSET(struct ckvm_sev_snp_launch_update, len, 16);
OFFSET(struct ckvm_sev_snp_launch_update, type, 24);
OFFSET(struct ckvm_sev_snp_launch_update, flags, 26);
OFFSET(struct ckvm_sev_snp_launch_update, pad2, 32);
SIZE(struct ckvm_sev_snp_launch_finish, 88);
OFFSET(struct ckvm_sev_snp_launch_finish, id_block_en, 16);
OFFSET(struct ckvm_sev_snp_launch_finish, host_data, 19);
OFFSET(struct ckvm_sev_snp_launch_finish, flags, 54);
OFFSET(struct ckvm_sev_snp_launch_finish, pad1, 56);
SIZE(struct ckvm_enc_region, 16);

/* TDX */
SIZE(struct ckvm_tdx_cmd, 24);
OFFSET(struct ckvm_tdx_cmd, flags, 4);
OFFSET(struct ckvm_tdx_cmd, data, 8);
OFFSET(struct ckvm_tdx_cmd, hw_error, 16);
SIZE(struct ckvm_tdx_init_vm, 264);
OFFSET(struct ckvm_tdx_init_vm, mrconfigid, 16);
OFFSET(struct ckvm_tdx_init_vm, mrowner, 64);
OFFSET(struct ckvm_tdx_init_vm, mrownerconfig, 112);
OFFSET(struct ckvm_tdx_init_vm, reserved, 160);
OFFSET(struct ckvm_tdx_init_vm, cpuid, 256);
SIZE(struct ckvm_tdx_capabilities, 2056);
OFFSET(struct ckvm_tdx_capabilities, cpuid, 2048);
SIZE(struct ckvm_tdx_init_mem_region, 24);
OFFSET(struct ckvm_tdx_init_mem_region, gpa, 8);
OFFSET(struct ckvm_tdx_init_mem_region, nr_pages, 16);
_Static_assert(sizeof(struct kvm_cpuid2) == 8, "kvm_cpuid2 header");
_Static_assert(sizeof(struct kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2");

/* Arm CCA */
SIZE(struct ckvm_arm_rmi_populate, 32);
OFFSET(struct ckvm_arm_rmi_populate, source_uaddr, 16);
OFFSET(struct ckvm_arm_rmi_populate, flags, 24);
OFFSET(struct ckvm_arm_rmi_populate, reserved, 28);

/* Host structs whose sizes enter request codes. */
_Static_assert(sizeof(struct kvm_enable_cap) == 104, "kvm_enable_cap");
_Static_assert(sizeof(struct kvm_device_attr) == 24, "kvm_device_attr");
_Static_assert(sizeof(struct kvm_regs) == 144, "kvm_regs");
_Static_assert(sizeof(struct kvm_sregs) == 312, "kvm_sregs");
_Static_assert(sizeof(struct kvm_pit_config) == 64, "kvm_pit_config");
_Static_assert(sizeof(struct kvm_irq_level) == 8, "kvm_irq_level");

/* Request codes: dir<<30 | size<<16 | 0xAE<<8 | nr. */
CODE(GET_API_VERSION, 0x0000AE00);               /* none, nr 0x00 */
CODE(CREATE_VM, 0x0000AE01);                     /* none, nr 0x01 */
CODE(CHECK_EXTENSION, 0x0000AE03);               /* none, nr 0x03 */
CODE(GET_VCPU_MMAP_SIZE, 0x0000AE04);            /* none, nr 0x04 */
CODE(GET_SUPPORTED_CPUID, 0xC008AE05);           /* rw, 8, nr 0x05 */
CODE(CREATE_VCPU, 0x0000AE41);                   /* none, nr 0x41 */
CODE(SET_NR_MMU_PAGES, 0x0000AE44);              /* none, nr 0x44 */
CODE(SET_USER_MEMORY_REGION, 0x4020AE46);        /* w, 32, nr 0x46 */
CODE(SET_TSS_ADDR, 0x0000AE47);                  /* none, nr 0x47 */
CODE(SET_IDENTITY_MAP_ADDR, 0x4008AE48);         /* w, 8, nr 0x48 */
CODE(SET_USER_MEMORY_REGION2, 0x40A0AE49);       /* w, 160, nr 0x49 */
CODE(CREATE_IRQCHIP, 0x0000AE60);                /* none, nr 0x60 */
CODE(IRQ_LINE, 0x4008AE61);                      /* w, 8, nr 0x61 */
CODE(CREATE_PIT2, 0x4040AE77);                   /* w, 64, nr 0x77 */
CODE(RUN, 0x0000AE80);                           /* none, nr 0x80 */
CODE(GET_REGS, 0x8090AE81);                      /* r, 144, nr 0x81 */
CODE(SET_REGS, 0x4090AE82);                      /* w, 144, nr 0x82 */
CODE(GET_SREGS, 0x8138AE83);                     /* r, 312, nr 0x83 */
CODE(SET_SREGS, 0x4138AE84);                     /* w, 312, nr 0x84 */
CODE(SET_CPUID2, 0x4008AE90);                    /* w, 8, nr 0x90 */
CODE(GET_MP_STATE, 0x8004AE98);                  /* r, 4, nr 0x98 */
CODE(ENABLE_CAP, 0x4068AEA3);                    /* w, 104, nr 0xa3 */
CODE(MEMORY_ENCRYPT_OP, 0xC008AEBA);             /* rw, 8 (unsigned long), nr 0xba */
CODE(MEMORY_ENCRYPT_REG_REGION, 0x8010AEBB);     /* r, 16, nr 0xbb */
CODE(MEMORY_ENCRYPT_UNREG_REGION, 0x8010AEBC);   /* r, 16, nr 0xbc */
CODE(SET_MEMORY_ATTRIBUTES, 0x4020AED2);         /* w, 32, nr 0xd2 */
CODE(CREATE_GUEST_MEMFD, 0xC040AED4);            /* rw, 64, nr 0xd4 */
CODE(PRE_FAULT_MEMORY, 0xC040AED5);              /* rw, 64, nr 0xd5 */
CODE(SET_MEMORY_ATTRIBUTES2, 0xC080AED2);        /* rw, 128, nr 0xd2 (in-place series v8) */
CODE(SET_MEMORY_ATTRIBUTES2_RFC, 0xC040AED6);    /* rw, 64, nr 0xd6 (in-place series RFC v1) */
CODE(ARM_RMI_POPULATE_V12, 0x4020AED7);          /* w, 32, nr 0xd7 (CCA v12) */
CODE(ARM_RMI_POPULATE_V14, 0xC020AED7);          /* rw, 32, nr 0xd7 (CCA v14) */
CODE(SET_DEVICE_ATTR, 0x4018AEE1);               /* w, 24, nr 0xe1 */
CODE(GET_DEVICE_ATTR, 0x4018AEE2);               /* w, 24, nr 0xe2 */
CODE(HAS_DEVICE_ATTR, 0x4018AEE3);               /* w, 24, nr 0xe3 */

/* Against the installed header, wherever it already has the ioctl. */
#define HOST(name) _Static_assert(CKVM_##name == KVM_##name, "CKVM_" #name " differs from <linux/kvm.h>")
#ifdef KVM_GET_API_VERSION
HOST(GET_API_VERSION);
HOST(CREATE_VM);
HOST(CHECK_EXTENSION);
HOST(GET_VCPU_MMAP_SIZE);
HOST(GET_SUPPORTED_CPUID);
HOST(CREATE_VCPU);
HOST(SET_USER_MEMORY_REGION);
HOST(SET_NR_MMU_PAGES);
HOST(SET_TSS_ADDR);
HOST(SET_IDENTITY_MAP_ADDR);
HOST(CREATE_IRQCHIP);
HOST(IRQ_LINE);
HOST(CREATE_PIT2);
HOST(RUN);
HOST(GET_REGS);
HOST(SET_REGS);
HOST(GET_SREGS);
HOST(SET_SREGS);
HOST(SET_CPUID2);
HOST(GET_MP_STATE);
HOST(ENABLE_CAP);
HOST(MEMORY_ENCRYPT_OP);
HOST(MEMORY_ENCRYPT_REG_REGION);
HOST(MEMORY_ENCRYPT_UNREG_REGION);
HOST(SET_DEVICE_ATTR);
HOST(GET_DEVICE_ATTR);
HOST(HAS_DEVICE_ATTR);
#endif
#ifdef KVM_SET_USER_MEMORY_REGION2
HOST(SET_USER_MEMORY_REGION2);
#endif
#ifdef KVM_SET_MEMORY_ATTRIBUTES
HOST(SET_MEMORY_ATTRIBUTES);
#endif
#ifdef KVM_CREATE_GUEST_MEMFD
HOST(CREATE_GUEST_MEMFD);
#endif
#ifdef KVM_PRE_FAULT_MEMORY
HOST(PRE_FAULT_MEMORY);
#endif
#ifdef KVM_CAP_GUEST_MEMFD
_Static_assert(CKVM_CAP_GUEST_MEMFD == KVM_CAP_GUEST_MEMFD, "KVM_CAP_GUEST_MEMFD");
#endif
#ifdef KVM_EXIT_MEMORY_FAULT
_Static_assert(CKVM_EXIT_MEMORY_FAULT == KVM_EXIT_MEMORY_FAULT, "KVM_EXIT_MEMORY_FAULT");
#endif

/* A target needs one symbol; this one names the uAPI revision carried. */
const char ckvm_uapi_revision[] = "linux-6.18 + arm-cca-v14";
