import CKVMHeaders

/// The KVM ioctls this package issues, named as the kernel names them.
///
/// The raw value is the kernel's name; `request` is the code from the C shim,
/// where it is pinned at compile time. Errors and traces carry these names.
public enum Ioctl: String, CaseIterable, Sendable {
    // System (/dev/kvm)
    case getAPIVersion = "KVM_GET_API_VERSION"
    case createVM = "KVM_CREATE_VM"
    case checkExtension = "KVM_CHECK_EXTENSION"
    case getVCPUMmapSize = "KVM_GET_VCPU_MMAP_SIZE"
    case getSupportedCPUID = "KVM_GET_SUPPORTED_CPUID"
    // VM
    case createVCPU = "KVM_CREATE_VCPU"
    case setNrMMUPages = "KVM_SET_NR_MMU_PAGES"
    case setUserMemoryRegion = "KVM_SET_USER_MEMORY_REGION"
    case setTSSAddr = "KVM_SET_TSS_ADDR"
    case setIdentityMapAddr = "KVM_SET_IDENTITY_MAP_ADDR"
    case setUserMemoryRegion2 = "KVM_SET_USER_MEMORY_REGION2"
    case createIRQChip = "KVM_CREATE_IRQCHIP"
    case irqLine = "KVM_IRQ_LINE"
    case createPIT2 = "KVM_CREATE_PIT2"
    case enableCap = "KVM_ENABLE_CAP"
    case memoryEncryptOp = "KVM_MEMORY_ENCRYPT_OP"
    case memoryEncryptRegRegion = "KVM_MEMORY_ENCRYPT_REG_REGION"
    case memoryEncryptUnregRegion = "KVM_MEMORY_ENCRYPT_UNREG_REGION"
    case setMemoryAttributes = "KVM_SET_MEMORY_ATTRIBUTES"
    case createGuestMemfd = "KVM_CREATE_GUEST_MEMFD"
    case setMemoryAttributes2 = "KVM_SET_MEMORY_ATTRIBUTES2"
    case setMemoryAttributes2RFC = "KVM_SET_MEMORY_ATTRIBUTES2(RFC v1)"
    case armRMIPopulateV12 = "KVM_ARM_RMI_POPULATE(v12)"
    case armRMIPopulate = "KVM_ARM_RMI_POPULATE"
    case setDeviceAttr = "KVM_SET_DEVICE_ATTR"
    case getDeviceAttr = "KVM_GET_DEVICE_ATTR"
    case hasDeviceAttr = "KVM_HAS_DEVICE_ATTR"
    // vCPU
    case run = "KVM_RUN"
    case getRegs = "KVM_GET_REGS"
    case setRegs = "KVM_SET_REGS"
    case getSregs = "KVM_GET_SREGS"
    case setSregs = "KVM_SET_SREGS"
    case setCPUID2 = "KVM_SET_CPUID2"
    case getMPState = "KVM_GET_MP_STATE"
    case preFaultMemory = "KVM_PRE_FAULT_MEMORY"

    /// The request code passed to `ioctl(2)`.
    public var request: UInt {
        switch self {
        case .getAPIVersion: CKVM_GET_API_VERSION
        case .createVM: CKVM_CREATE_VM
        case .checkExtension: CKVM_CHECK_EXTENSION
        case .getVCPUMmapSize: CKVM_GET_VCPU_MMAP_SIZE
        case .getSupportedCPUID: CKVM_GET_SUPPORTED_CPUID
        case .createVCPU: CKVM_CREATE_VCPU
        case .setUserMemoryRegion: CKVM_SET_USER_MEMORY_REGION
        case .setNrMMUPages: CKVM_SET_NR_MMU_PAGES
        case .setTSSAddr: CKVM_SET_TSS_ADDR
        case .setIdentityMapAddr: CKVM_SET_IDENTITY_MAP_ADDR
        case .setUserMemoryRegion2: CKVM_SET_USER_MEMORY_REGION2
        case .createIRQChip: CKVM_CREATE_IRQCHIP
        case .irqLine: CKVM_IRQ_LINE
        case .createPIT2: CKVM_CREATE_PIT2
        case .enableCap: CKVM_ENABLE_CAP
        case .memoryEncryptOp: CKVM_MEMORY_ENCRYPT_OP
        case .memoryEncryptRegRegion: CKVM_MEMORY_ENCRYPT_REG_REGION
        case .memoryEncryptUnregRegion: CKVM_MEMORY_ENCRYPT_UNREG_REGION
        case .setMemoryAttributes: CKVM_SET_MEMORY_ATTRIBUTES
        case .createGuestMemfd: CKVM_CREATE_GUEST_MEMFD
        case .setMemoryAttributes2: CKVM_SET_MEMORY_ATTRIBUTES2
        case .setMemoryAttributes2RFC: CKVM_SET_MEMORY_ATTRIBUTES2_RFC
        case .armRMIPopulateV12: CKVM_ARM_RMI_POPULATE_V12
        case .armRMIPopulate: CKVM_ARM_RMI_POPULATE_V14
        case .setDeviceAttr: CKVM_SET_DEVICE_ATTR
        case .getDeviceAttr: CKVM_GET_DEVICE_ATTR
        case .hasDeviceAttr: CKVM_HAS_DEVICE_ATTR
        case .run: CKVM_RUN
        case .getRegs: CKVM_GET_REGS
        case .setRegs: CKVM_SET_REGS
        case .getSregs: CKVM_GET_SREGS
        case .setSregs: CKVM_SET_SREGS
        case .setCPUID2: CKVM_SET_CPUID2
        case .getMPState: CKVM_GET_MP_STATE
        case .preFaultMemory: CKVM_PRE_FAULT_MEMORY
        }
    }

    private static let byRequest: [UInt: Ioctl] = Dictionary(
        uniqueKeysWithValues: allCases.map { ($0.request, $0) })

    /// The ioctl with this request code, if the package knows it.
    public init?(request: UInt) {
        guard let ioctl = Ioctl.byRequest[request] else { return nil }
        self = ioctl
    }
}

/// The sub-commands of `KVM_MEMORY_ENCRYPT_OP`, named as the kernel names them.
public enum EncryptCommand: String, Sendable, CaseIterable {
    case sevInit2 = "KVM_SEV_INIT2"
    case snpLaunchStart = "KVM_SEV_SNP_LAUNCH_START"
    case snpLaunchUpdate = "KVM_SEV_SNP_LAUNCH_UPDATE"
    case snpLaunchFinish = "KVM_SEV_SNP_LAUNCH_FINISH"
    case tdxCapabilities = "KVM_TDX_CAPABILITIES"
    case tdxInitVM = "KVM_TDX_INIT_VM"
    case tdxInitVCPU = "KVM_TDX_INIT_VCPU"
    case tdxInitMemRegion = "KVM_TDX_INIT_MEM_REGION"
    case tdxFinalizeVM = "KVM_TDX_FINALIZE_VM"

    /// The sub-command id placed in `kvm_sev_cmd.id` or `kvm_tdx_cmd.id`.
    public var id: UInt32 {
        switch self {
        case .sevInit2: UInt32(CKVM_SEV_INIT2)
        case .snpLaunchStart: UInt32(CKVM_SEV_SNP_LAUNCH_START)
        case .snpLaunchUpdate: UInt32(CKVM_SEV_SNP_LAUNCH_UPDATE)
        case .snpLaunchFinish: UInt32(CKVM_SEV_SNP_LAUNCH_FINISH)
        case .tdxCapabilities: UInt32(CKVM_TDX_CAPABILITIES)
        case .tdxInitVM: UInt32(CKVM_TDX_INIT_VM)
        case .tdxInitVCPU: UInt32(CKVM_TDX_INIT_VCPU)
        case .tdxInitMemRegion: UInt32(CKVM_TDX_INIT_MEM_REGION)
        case .tdxFinalizeVM: UInt32(CKVM_TDX_FINALIZE_VM)
        }
    }
}

/// A plain syscall on a KVM object.
public enum Syscall: String, Sendable {
    case open, close, mmap, munmap, madvise, fallocate, ftruncate, fstat, read, write, pread, pwrite, lseek
    case memfdCreate = "memfd_create"
}

/// What failed: an ioctl, an encrypt-op sub-command, or a plain syscall.
public enum KVMOperation: Hashable, Sendable, CustomStringConvertible {
    case ioctl(Ioctl)
    case encryptOp(EncryptCommand)
    case syscall(Syscall)

    public var description: String {
        switch self {
        case .ioctl(let ioctl): ioctl.rawValue
        case .encryptOp(let command): "KVM_MEMORY_ENCRYPT_OP(\(command.rawValue))"
        case .syscall(let call): call.rawValue
        }
    }
}
