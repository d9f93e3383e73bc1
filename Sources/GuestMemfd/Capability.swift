import CKVMHeaders

/// A `KVM_CHECK_EXTENSION` capability, with the kernel's number as raw value.
public enum Capability: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    /// `KVM_CAP_NR_MEMSLOTS`: the number of memslots per address space.
    case nrMemslots = 10
    /// `KVM_CAP_EXIT_HYPERCALL`: mask of hypercalls that can exit to userspace.
    case exitHypercall = 201
    /// `KVM_CAP_USER_MEMORY2`: `KVM_SET_USER_MEMORY_REGION2` exists.
    case userMemory2 = 231
    /// `KVM_CAP_MEMORY_FAULT_INFO`: `KVM_EXIT_MEMORY_FAULT` is reported.
    case memoryFaultInfo = 232
    /// `KVM_CAP_MEMORY_ATTRIBUTES`: mask of attributes `KVM_SET_MEMORY_ATTRIBUTES` accepts.
    case memoryAttributes = 233
    /// `KVM_CAP_GUEST_MEMFD`: `KVM_CREATE_GUEST_MEMFD` exists.
    case guestMemfd = 234
    /// `KVM_CAP_VM_TYPES`: bit n set when `KVM_CREATE_VM(n)` is supported (x86).
    case vmTypes = 235
    /// `KVM_CAP_PRE_FAULT_MEMORY`: `KVM_PRE_FAULT_MEMORY` works (on x86, only with TDP).
    case preFaultMemory = 236
    /// `KVM_CAP_GUEST_MEMFD_FLAGS`: mask of `GUEST_MEMFD_FLAG_*` accepted at creation.
    case guestMemfdFlags = 244
    /// `KVM_CAP_ARM_RMI` as numbered by the Arm CCA series v14 (unmerged).
    case armRMI = 249
    /// `KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`: guest_memfd converts in place and
    /// takes `KVM_SET_MEMORY_ATTRIBUTES2` (in-place conversion series v8, unmerged).
    case guestMemfdMemoryAttributes = 250

    public var name: String {
        switch self {
        case .nrMemslots: "KVM_CAP_NR_MEMSLOTS"
        case .exitHypercall: "KVM_CAP_EXIT_HYPERCALL"
        case .userMemory2: "KVM_CAP_USER_MEMORY2"
        case .memoryFaultInfo: "KVM_CAP_MEMORY_FAULT_INFO"
        case .memoryAttributes: "KVM_CAP_MEMORY_ATTRIBUTES"
        case .guestMemfd: "KVM_CAP_GUEST_MEMFD"
        case .vmTypes: "KVM_CAP_VM_TYPES"
        case .preFaultMemory: "KVM_CAP_PRE_FAULT_MEMORY"
        case .guestMemfdFlags: "KVM_CAP_GUEST_MEMFD_FLAGS"
        case .armRMI: "KVM_CAP_ARM_RMI"
        case .guestMemfdMemoryAttributes: "KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES"
        }
    }

    public var description: String { "\(name) (\(rawValue))" }
}

/// A VM type, the value passed to `KVM_CREATE_VM`.
public struct VMType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }

    /// `KVM_X86_DEFAULT_VM`: an ordinary VM.
    public static let `default` = VMType(rawValue: UInt(CKVM_X86_DEFAULT_VM))
    /// `KVM_X86_SW_PROTECTED_VM`: private memory without hardware protection, a test vehicle.
    public static let swProtected = VMType(rawValue: UInt(CKVM_X86_SW_PROTECTED_VM))
    /// `KVM_X86_SEV_VM`.
    public static let sev = VMType(rawValue: UInt(CKVM_X86_SEV_VM))
    /// `KVM_X86_SEV_ES_VM`.
    public static let sevES = VMType(rawValue: UInt(CKVM_X86_SEV_ES_VM))
    /// `KVM_X86_SNP_VM`.
    public static let snp = VMType(rawValue: UInt(CKVM_X86_SNP_VM))
    /// `KVM_X86_TDX_VM`.
    public static let tdx = VMType(rawValue: UInt(CKVM_X86_TDX_VM))
    /// `KVM_VM_TYPE_ARM_REALM` from the Arm CCA series (unmerged).
    public static let armRealm = VMType(rawValue: UInt(CKVM_VM_TYPE_ARM_REALM))

    /// The x86 types, in `KVM_CAP_VM_TYPES` bit order.
    public static let x86Types: [VMType] = [.default, .swProtected, .sev, .sevES, .snp, .tdx]

    /// True for the types whose guest_memfd memory can be private, which is
    /// what `kvm_arch_has_private_mem()` answers.
    public var hasPrivateMemory: Bool {
        self == .swProtected || self == .snp || self == .tdx || self == .armRealm
    }

    public var name: String {
        switch self {
        case .default: "KVM_X86_DEFAULT_VM"
        case .swProtected: "KVM_X86_SW_PROTECTED_VM"
        case .sev: "KVM_X86_SEV_VM"
        case .sevES: "KVM_X86_SEV_ES_VM"
        case .snp: "KVM_X86_SNP_VM"
        case .tdx: "KVM_X86_TDX_VM"
        case .armRealm: "KVM_VM_TYPE_ARM_REALM"
        default: "VM type \(rawValue)"
        }
    }

    public var description: String { name }
}

/// Flags of `KVM_CREATE_GUEST_MEMFD`.
public struct GuestMemfdFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `GUEST_MEMFD_FLAG_MMAP`: the file can be mmap()ed (6.18+).
    public static let mmap = GuestMemfdFlags(rawValue: CKVM_GUEST_MEMFD_FLAG_MMAP)
    /// `GUEST_MEMFD_FLAG_INIT_SHARED`: the file starts shared, so the host may touch it (6.18+).
    public static let initShared = GuestMemfdFlags(rawValue: CKVM_GUEST_MEMFD_FLAG_INIT_SHARED)
    /// `GUEST_MEMFD_FLAG_NO_DIRECT_MAP`: pages leave the kernel's direct map (7.0-era trees).
    public static let noDirectMap = GuestMemfdFlags(rawValue: CKVM_GUEST_MEMFD_FLAG_NO_DIRECT_MAP)

    /// `GUEST_MEMFD_FLAG_HUGETLB` (the guest_memfd HugeTLB series, unmerged):
    /// HugeTLB pages of the size `hugetlbPageSize` gives back the file.
    public static let hugetlb = GuestMemfdFlags(rawValue: CKVM_GUEST_MEMFD_FLAG_HUGETLB)

    /// HugeTLB backing with 2 MiB or 1 GiB pages (the size as log2 in bits 63:58).
    public static func hugetlb(pageSize: UInt64) -> GuestMemfdFlags {
        let log2 = UInt64(pageSize.trailingZeroBitCount)
        return GuestMemfdFlags(rawValue: CKVM_GUEST_MEMFD_FLAG_HUGETLB | (log2 << UInt64(CKVM_GUEST_MEMFD_HUGETLB_SHIFT)))
    }

    /// The HugeTLB page size these flags ask for, or nil without HUGETLB.
    public var hugetlbPageSize: UInt64? {
        guard contains(.hugetlb) else { return nil }
        return 1 << ((rawValue & CKVM_GUEST_MEMFD_HUGETLB_MASK) >> UInt64(CKVM_GUEST_MEMFD_HUGETLB_SHIFT))
    }

    public var description: String {
        var names: [String] = []
        if contains(.mmap) { names.append("MMAP") }
        if contains(.initShared) { names.append("INIT_SHARED") }
        if contains(.noDirectMap) { names.append("NO_DIRECT_MAP") }
        if let size = hugetlbPageSize { names.append("HUGETLB(\(size >= 1 << 30 ? "\(size >> 30)G" : "\(size >> 20)M"))") }
        let unknown = rawValue & ~(GuestMemfdFlags.mmap.rawValue | GuestMemfdFlags.initShared.rawValue
            | GuestMemfdFlags.noDirectMap.rawValue | GuestMemfdFlags.hugetlb.rawValue
            | (contains(.hugetlb) ? CKVM_GUEST_MEMFD_HUGETLB_MASK : 0))
        if unknown != 0 { names.append("0x" + String(unknown, radix: 16)) }
        return names.isEmpty ? "none" : names.joined(separator: "|")
    }
}

/// Memory attributes of `KVM_SET_MEMORY_ATTRIBUTES`; the empty set means shared.
public struct MemoryAttributes: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
    public static let `private` = MemoryAttributes(rawValue: CKVM_MEMORY_ATTRIBUTE_PRIVATE)

    public var description: String {
        if rawValue == 0 { return "shared" }
        if self == .private { return "PRIVATE" }
        return "0x" + String(rawValue, radix: 16)
    }
}

/// What a host's KVM offers, read once through `KVM_CHECK_EXTENSION`.
public struct HostCapabilities: Hashable, Sendable, CustomStringConvertible {
    public var apiVersion: Int
    /// VM types `KVM_CREATE_VM` accepts (`KVM_CAP_VM_TYPES`; the default type alone where the cap is absent).
    public var vmTypes: [VMType]
    public var userMemory2: Bool
    public var guestMemfd: Bool
    /// Flags `KVM_CREATE_GUEST_MEMFD` accepts on a VM of the default type.
    public var guestMemfdFlags: GuestMemfdFlags
    /// Attributes `KVM_SET_MEMORY_ATTRIBUTES` accepts, as the system fd reports them.
    public var memoryAttributes: MemoryAttributes
    public var memoryFaultInfo: Bool
    public var preFaultMemory: Bool
    public var memslots: Int

    public var description: String {
        """
        KVM API version      \(apiVersion)
        VM types             \(vmTypes.map(\.name).joined(separator: ", "))
        guest_memfd          \(guestMemfd ? "yes" : "no"), flags \(guestMemfdFlags)
        memslots (REGION2)   \(memslots) per address space, REGION2 \(userMemory2 ? "yes" : "no")
        memory attributes    \(memoryAttributes.isEmpty ? "none" : memoryAttributes.description)
        memory-fault exits   \(memoryFaultInfo ? "yes" : "no")
        pre-fault memory     \(preFaultMemory ? "yes" : "no")
        """
    }
}
