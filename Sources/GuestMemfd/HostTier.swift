/// A part of KVM that guest memory population builds on, named as the
/// environment variables `SNPVMM_REQUIRE_KVM` and `SNPVMM_HIDE_KVM_CAPS`
/// name it.
public enum KVMFeature: String, CaseIterable, Sendable, CustomStringConvertible {
    /// A `/dev/kvm` this process can open read-write.
    case kvm
    /// `KVM_CREATE_GUEST_MEMFD` (`KVM_CAP_GUEST_MEMFD`).
    case guestMemfd = "guest_memfd"
    /// guest_memfd the host can map and write on a default VM
    /// (`GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED` in `KVM_CAP_GUEST_MEMFD_FLAGS`).
    case mmap
    /// `KVM_SET_MEMORY_ATTRIBUTES` with `KVM_MEMORY_ATTRIBUTE_PRIVATE` (`KVM_CAP_MEMORY_ATTRIBUTES`).
    case memoryAttributes = "attributes"
    /// `KVM_PRE_FAULT_MEMORY` (`KVM_CAP_PRE_FAULT_MEMORY`).
    case preFault = "pre_fault"
    /// A confidential VM type: `KVM_X86_SNP_VM` or `KVM_X86_TDX_VM` in `KVM_CAP_VM_TYPES`.
    case confidential

    public var description: String { rawValue }

    /// Parses a comma-separated list of feature names, such as the value of
    /// `SNPVMM_REQUIRE_KVM`; an empty list is no features.
    ///
    /// - Throws: `KVMFeatureListError` naming the first unknown name.
    public static func list(_ text: String) throws(KVMFeatureListError) -> Set<KVMFeature> {
        var features: Set<KVMFeature> = []
        for name in text.split(separator: ",", omittingEmptySubsequences: true) {
            let name = name.trimmingSpaces
            guard let feature = KVMFeature(rawValue: name) else { throw KVMFeatureListError(name: name, list: text) }
            features.insert(feature)
        }
        return features
    }

    /// What a VMM gives up on a host without this feature, in one line.
    public var costWhenMissing: String {
        switch self {
        case .kvm:
            "no VM can run here; only offline measurement (snpvmm measure) and the emulated launch work"
        case .guestMemfd:
            "guest RAM comes from a memfd mapped shared (as QEMU's memory-backend-memfd), and no guest memory can be private"
        case .mmap:
            "the host cannot write guest_memfd in place, so plain guests run from memfd RAM instead"
        case .memoryAttributes:
            "a VM has no private memory of its own: conversion exits and KVM_X86_SW_PROTECTED_VM cannot be used"
        case .preFault:
            "the guest faults each page in on first touch; population pre-faults with MADV_POPULATE_WRITE instead"
        case .confidential:
            "SEV-SNP and TDX launches run only on the emulated platforms (--emulate)"
        }
    }
}

/// An unknown name in a list of KVM features.
public struct KVMFeatureListError: Error, Equatable, Sendable, CustomStringConvertible {
    public var name: String
    public var list: String

    public init(name: String, list: String) {
        self.name = name
        self.list = list
    }

    public var description: String {
        "unknown KVM feature '\(name)' in '\(list)' (known: \(KVMFeature.allCases.map(\.rawValue).joined(separator: ", ")))"
    }
}

/// How much of guest memory population a host's KVM supports, each tier
/// adding to the one below it.
public enum KVMTier: Int, CaseIterable, Comparable, Sendable, CustomStringConvertible {
    /// No usable `/dev/kvm`.
    case t0 = 0
    /// KVM without guest_memfd: guest RAM is ordinary shared memory.
    case t1
    /// guest_memfd, but the host cannot map it on a default VM.
    case t2
    /// guest_memfd with MMAP and INIT_SHARED: population in place.
    case t3
    /// T3 plus memory attributes or pre-fault.
    case t4
    /// T4 plus a confidential VM type (SEV-SNP or TDX).
    case t5

    public static func < (lhs: KVMTier, rhs: KVMTier) -> Bool { lhs.rawValue < rhs.rawValue }

    /// "T3".
    public var name: String { "T\(rawValue)" }

    public var summary: String {
        switch self {
        case .t0: "no usable /dev/kvm"
        case .t1: "KVM without guest_memfd"
        case .t2: "guest_memfd without MMAP|INIT_SHARED"
        case .t3: "guest_memfd with MMAP|INIT_SHARED"
        case .t4: "guest_memfd with MMAP|INIT_SHARED, and memory attributes or pre-fault"
        case .t5: "confidential VM types (SEV-SNP or TDX)"
        }
    }

    public var description: String { "\(name) (\(summary))" }
}

extension HostCapabilities {
    /// Whether the host has `feature`; `.kvm` holds for any host whose
    /// capabilities could be read.
    public func has(_ feature: KVMFeature) -> Bool {
        switch feature {
        case .kvm: true
        case .guestMemfd: guestMemfd
        case .mmap: guestMemfd && guestMemfdFlags.isSuperset(of: [.mmap, .initShared])
        case .memoryAttributes: memoryAttributes.contains(.private)
        case .preFault: preFaultMemory
        case .confidential: vmTypes.contains(.snp) || vmTypes.contains(.tdx)
        }
    }

    /// The tier these capabilities reach.
    public var tier: KVMTier {
        guard has(.guestMemfd) else { return .t1 }
        guard has(.mmap) else { return .t2 }
        guard has(.memoryAttributes) || has(.preFault) else { return .t3 }
        return has(.confidential) ? .t5 : .t4
    }

    /// Why `feature` is missing, naming the capability and the value the
    /// host gave, as a skipped test or a refused request reports it; nil
    /// where the host has it.
    public func whyMissing(_ feature: KVMFeature) -> String? {
        guard !has(feature) else { return nil }
        switch feature {
        case .kvm:
            return nil
        case .guestMemfd:
            return "host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0)"
        case .mmap:
            return guestMemfd
                ? "host KVM's guest_memfd lacks MMAP|INIT_SHARED (KVM_CAP_GUEST_MEMFD_FLAGS = \(guestMemfdFlags))"
                : "host KVM lacks guest_memfd, so it has no MMAP|INIT_SHARED (KVM_CAP_GUEST_MEMFD = 0)"
        case .memoryAttributes:
            return "host KVM lacks private memory attributes (KVM_CAP_MEMORY_ATTRIBUTES = \(memoryAttributes.rawValue))"
        case .preFault:
            return "host KVM lacks pre-fault (KVM_CAP_PRE_FAULT_MEMORY = 0)"
        case .confidential:
            return "host KVM offers no confidential VM type (KVM_CAP_VM_TYPES: \(vmTypes.map(\.name).joined(separator: ", ")))"
        }
    }
}

extension Substring {
    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
