import CKVMHeaders

/// An SEV-SNP guest policy (SEV-SNP firmware ABI, "Guest Policy"): the
/// 64-bit value KVM_SEV_SNP_LAUNCH_START passes to the firmware, which the
/// attestation report repeats.
public struct SNPGuestPolicy: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit 17 is reserved and must be one.
    static let reservedMustBeOne: UInt64 = 1 << 17

    /// - Parameters:
    ///   - abiMajor, abiMinor: the oldest firmware ABI the guest accepts (bits 15:8 and 7:0).
    ///   - smt: the guest may run with SMT enabled on the host (bit 16).
    ///   - migrateMA: a migration agent may be associated (bit 18).
    ///   - debug: the host may debug the guest (bit 19).
    ///   - singleSocket: the guest may run on one socket only (bit 20).
    public init(abiMajor: UInt8 = 0, abiMinor: UInt8 = 0, smt: Bool = true, migrateMA: Bool = false,
                debug: Bool = false, singleSocket: Bool = false) {
        var value = UInt64(abiMajor) << 8 | UInt64(abiMinor) | Self.reservedMustBeOne
        if smt { value |= 1 << 16 }
        if migrateMA { value |= 1 << 18 }
        if debug { value |= 1 << 19 }
        if singleSocket { value |= 1 << 20 }
        rawValue = value
    }

    /// SMT allowed, ABI 0.0: 0x30000, QEMU's default policy for SNP guests.
    public static let `default` = SNPGuestPolicy()

    public var smt: Bool { rawValue & (1 << 16) != 0 }
    public var debug: Bool { rawValue & (1 << 19) != 0 }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// TD attributes (Intel TDX module ABI, TD_PARAMS.ATTRIBUTES), given to
/// KVM_TDX_INIT_VM; KVM_TDX_CAPABILITIES says which the host supports.
public struct TDXAttributes: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Off-TD debug: the host can read and write the TD's state (bit 0).
    public static let debug = TDXAttributes(rawValue: 1 << 0)
    /// EPT violations on pending private pages are not converted to #VE (bit 28).
    public static let septVEDisable = TDXAttributes(rawValue: 1 << 28)
    /// Protection keys for supervisor pages (bit 30).
    public static let pks = TDXAttributes(rawValue: 1 << 30)
    /// The TD may use the performance monitoring unit (bit 63).
    public static let perfmon = TDXAttributes(rawValue: 1 << 63)
}

/// The extended features a TD may use (TD_PARAMS.XFAM, in XCR0/IA32_XSS bit
/// order). x87 and SSE are required.
public struct TDXXFAM: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let x87 = TDXXFAM(rawValue: 1 << 0)
    public static let sse = TDXXFAM(rawValue: 1 << 1)
    public static let avx = TDXXFAM(rawValue: 1 << 2)
    public static let avx512 = TDXXFAM(rawValue: 0b111 << 5)
    public static let pkru = TDXXFAM(rawValue: 1 << 9)
    public static let amx = TDXXFAM(rawValue: 0b11 << 17)

    /// The features every TD has: x87 and SSE.
    public static let required: TDXXFAM = [.x87, .sse]
}

extension SEVSNP {
    /// `launchStart(policy:gosvw:)` with a typed policy.
    public func launchStart(policy: SNPGuestPolicy, gosvw: [UInt8] = []) throws(KVMError) {
        try launchStart(policy: policy.rawValue, gosvw: gosvw)
    }
}

extension TDX {
    /// `initVM(attributes:xfam:…)` with typed attributes and XFAM.
    public func initVM(attributes: TDXAttributes, xfam: TDXXFAM, mrConfigID: [UInt8] = [], mrOwner: [UInt8] = [],
                       mrOwnerConfig: [UInt8] = [], cpuid: [kvm_cpuid_entry2] = []) throws(KVMError) {
        try initVM(attributes: attributes.rawValue, xfam: xfam.rawValue, mrConfigID: mrConfigID, mrOwner: mrOwner,
                   mrOwnerConfig: mrOwnerConfig, cpuid: cpuid)
    }
}
