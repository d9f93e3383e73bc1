/// The hash algorithm of a realm's measurements (RmiHashAlgorithm).
public enum CCAHashAlgorithm: UInt8, Sendable, CaseIterable {
    case sha256 = 0
    case sha512 = 1
    /// Added in RMM v2.0.
    case sha384 = 2

    /// The digest length in bytes.
    public var digestLength: Int { digest.digestLength }

    var digest: MessageDigest {
        switch self {
        case .sha256: .sha256
        case .sha384: .sha384
        case .sha512: .sha512
        }
    }
}

/// The fields of RmiRealmParams that the RMM measures when it creates a realm.
///
/// Source: Arm RMM specification (DEN0137) RMI_REALM_CREATE, "initialization
/// of RIM"; TF-RMM `lib/smc/include/smc-rmi.h` `struct rmi_realm_params` and
/// `app/attestation/rmm_stub/src/rim.c` `measurement_realm_params_measure`.
/// Values are the raw RMI encodings the host writes.
public struct CCARealmParameters: Equatable, Sendable {
    public var hashAlgorithm: CCAHashAlgorithm
    /// s2sz: the IPA width in bits.
    public var ipaBits: UInt32
    /// flags0 bit 0.
    public var lpa2: Bool
    /// sve_vl, the RMI encoding (vector length / 128 - 1); nil leaves flags0.SVE clear.
    public var sveVL: UInt32?
    /// The realm's breakpoints and watchpoints, as counts (2 to 16). The
    /// parameters hold each minus one, as ID_AA64DFR0_EL1's BRPs and WRPs do:
    /// TF-RMM's `get_feature_register_0` fills its register that way,
    /// `validate_realm_params` refuses 0 (reserved) and anything above it, and
    /// KVM (`realm_create_rd`) and QEMU fill the fields from that register.
    public var breakpoints: UInt32
    public var watchpoints: UInt32
    /// pmu_num_ctrs; nil leaves flags0.PMU clear.
    public var pmuCounters: UInt32?

    public init(hashAlgorithm: CCAHashAlgorithm = .sha256, ipaBits: UInt32, lpa2: Bool = false, sveVL: UInt32? = nil,
                breakpoints: UInt32, watchpoints: UInt32, pmuCounters: UInt32? = nil) {
        self.hashAlgorithm = hashAlgorithm
        self.ipaBits = ipaBits
        self.lpa2 = lpa2
        self.sveVL = sveVL
        self.breakpoints = breakpoints
        self.watchpoints = watchpoints
        self.pmuCounters = pmuCounters
    }

    /// The 4096-byte RmiRealmParams with only the measured fields set:
    /// flags0 (u64 at 0: LPA2 bit 0, SVE bit 1, PMU bit 2), s2sz at 0x8,
    /// sve_vl at 0x10, num_bps at 0x18, num_wps at 0x20, pmu_num_ctrs at
    /// 0x28, algorithm (u8) at 0x30.
    ///
    /// Counts the RMM refuses give fields it refuses too (`problems`).
    public var measuredBytes: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 4096)
        var flags: UInt64 = 0
        if lpa2 { flags |= 1 << 0 }
        if sveVL != nil { flags |= 1 << 1 }
        if pmuCounters != nil { flags |= 1 << 2 }
        bytes.storeLE(flags, at: 0x0)
        bytes.storeLE(ipaBits, at: 0x8)
        bytes.storeLE(sveVL ?? 0, at: 0x10)
        bytes.storeLE(breakpoints &- 1, at: 0x18)
        bytes.storeLE(watchpoints &- 1, at: 0x20)
        bytes.storeLE(pmuCounters ?? 0, at: 0x28)
        bytes[0x30] = hashAlgorithm.rawValue
        return bytes
    }
}

extension CCARealmParameters {
    /// What the RMM would refuse in these parameters (`validate_realm_params`):
    /// breakpoint and watchpoint counts outside 2 to 16 (the architecture's
    /// range; a host register may allow fewer), more than 31 PMU counters.
    public var problems: [String] {
        var found: [String] = []
        if !(2...16).contains(breakpoints) { found.append("\(breakpoints) breakpoints (a realm has 2 to 16)") }
        if !(2...16).contains(watchpoints) { found.append("\(watchpoints) watchpoints (a realm has 2 to 16)") }
        if let pmuCounters, pmuCounters > 31 { found.append("\(pmuCounters) PMU counters (at most 31)") }
        return found
    }
}

/// The Realm Initial Measurement (RIM) of an Arm CCA realm, extended the way
/// the RMM extends it while the host builds the realm.
///
/// RMI_REALM_CREATE sets RIM = H(measured RmiRealmParams). Each later
/// measured command hashes a 256-byte measurement descriptor that embeds the
/// current RIM, and the hash becomes the new RIM:
/// - RMI_DATA_CREATE: RmmMeasurementDescriptorData (type 0: IPA at 0x50,
///   flags at 0x58, the granule's hash at 0x60, or zeros when unmeasured);
/// - RMI_REC_CREATE of a runnable REC: RmmMeasurementDescriptorRec (type 1:
///   the hash of the measured RmiRecParams at 0x50);
/// - RMI_RTT_INIT_RIPAS, RMM 1.x only: RmmMeasurementDescriptorRipas (type 2:
///   base at 0x50, top at 0x58). RMM v2.0 no longer measures it.
///
/// Sources: Arm RMM specification (DEN0137) "Realm Initial Measurement" and
/// the measurement descriptor types; TF-RMM `app/attestation/rmm_stub/src/rim.c`,
/// `measurement_descs.h` and `runtime/rmi/rec.c` (only runnable RECs are
/// measured, since RMM 1.0-eac3); TF-RMM commit bdb07f46 (INIT_RIPAS not
/// measured in v2.0). Cross-check: veraison/cca-realm-measurements `realm.rs`.
public struct CCARealmMeasurement: Sendable, Equatable {
    public let algorithm: CCAHashAlgorithm
    /// The current RIM: 32, 48 or 64 bytes for SHA-256, SHA-384, SHA-512.
    public private(set) var rim: [UInt8]

    /// The size of one granule.
    public static let granuleSize = 4096

    /// RMI_REALM_CREATE.
    public init(parameters: CCARealmParameters) {
        algorithm = parameters.hashAlgorithm
        rim = parameters.hashAlgorithm.digest.hash(parameters.measuredBytes)
    }

    /// RMI_DATA_CREATE of one granule at `ipa`. With `measure`
    /// (RMI_MEASURE_CONTENT) the granule's 4096 bytes are hashed into the
    /// descriptor; without it only the IPA and flags are.
    /// - Throws: `CCAMeasurementError` for an unaligned IPA or measured contents that are not 4096 bytes.
    public mutating func dataCreate(ipa: UInt64, contents: UnsafeRawBufferPointer?, measure: Bool) throws(CCAMeasurementError) {
        guard ipa % UInt64(Self.granuleSize) == 0 else { throw .unalignedGranule(ipa: ipa) }
        guard measure else {
            extendData(ipa: ipa, contentDigest: nil)
            return
        }
        guard let contents, contents.count == Self.granuleSize else {
            throw .wrongGranuleLength(ipa: ipa, length: contents?.count ?? 0)
        }
        extendData(ipa: ipa, contentDigest: algorithm.digest.hash(contents))
    }

    /// Measured RMI_DATA_CREATE of every granule that `contents`, loaded at
    /// `ipa`, touches, in ascending IPA order: the bytes are placed at their
    /// offset in the first granule and the last granule is padded with zeros,
    /// as a VMM copies a blob into zeroed memory. Granule hashes are computed
    /// on all cores, then folded in order.
    public mutating func dataCreate(loading contents: [UInt8], at ipa: UInt64) {
        let start = ipa & ~UInt64(Self.granuleSize - 1)
        let lead = Int(ipa - start)
        let total = (lead + contents.count + Self.granuleSize - 1) / Self.granuleSize * Self.granuleSize
        var padded = [UInt8](repeating: 0, count: max(total, 0))
        padded.replaceSubrange(lead..<(lead + contents.count), with: contents)
        padded.withUnsafeBytes { bytes in
            ParallelPageHasher.forEachPageDigest(bytes, algorithm: algorithm.digest) {
                granule, digest in
                extendData(ipa: start + UInt64(granule * Self.granuleSize), contentDigest: Array(digest))
            }
        }
    }

    /// RMI_REC_CREATE. Only a runnable REC extends the RIM; the measured
    /// RmiRecParams keeps flags (u64 at 0), pc (at 0x200) and gprs[0..7] (at 0x300).
    public mutating func recCreate(pc: UInt64, gprs: [UInt64], runnable: Bool) {
        guard runnable else { return }
        var params = [UInt8](repeating: 0, count: 4096)
        params.storeLE(UInt64(1), at: 0)
        params.storeLE(pc, at: 0x200)
        for (index, value) in gprs.prefix(8).enumerated() { params.storeLE(value, at: 0x300 + 8 * index) }
        var descriptor = descriptorHeader(type: 1)
        descriptor.replaceSubrange(0x50..<(0x50 + algorithm.digestLength), with: algorithm.digest.hash(params))
        rim = algorithm.digest.hash(descriptor)
    }

    /// RMI_RTT_INIT_RIPAS as RMM 1.x measures it: one descriptor per RTT
    /// entry the command covers, given here as [base, top). RMM v2.0 does
    /// not measure INIT_RIPAS; do not call this for a v2.0 realm.
    public mutating func initRIPAS(base: UInt64, top: UInt64) {
        var descriptor = descriptorHeader(type: 2)
        descriptor.storeLE(base, at: 0x50)
        descriptor.storeLE(top, at: 0x58)
        rim = algorithm.digest.hash(descriptor)
    }

    /// A 256-byte descriptor with its type, length and the current RIM.
    private func descriptorHeader(type: UInt8) -> [UInt8] {
        var descriptor = [UInt8](repeating: 0, count: 0x100)
        descriptor[0] = type
        descriptor.storeLE(UInt64(0x100), at: 0x8)
        descriptor.replaceSubrange(0x10..<(0x10 + rim.count), with: rim)
        return descriptor
    }

    private mutating func extendData(ipa: UInt64, contentDigest: [UInt8]?) {
        var descriptor = descriptorHeader(type: 0)
        descriptor.storeLE(ipa, at: 0x50)
        descriptor.storeLE(UInt64(contentDigest == nil ? 0 : 1), at: 0x58)
        if let contentDigest { descriptor.replaceSubrange(0x60..<(0x60 + contentDigest.count), with: contentDigest) }
        rim = algorithm.digest.hash(descriptor)
    }
}

/// A realm operation the RMM would refuse.
public enum CCAMeasurementError: Error, Equatable, Sendable, CustomStringConvertible {
    case unalignedGranule(ipa: UInt64)
    case wrongGranuleLength(ipa: UInt64, length: Int)

    public var description: String {
        switch self {
        case .unalignedGranule(let ipa): "RMI_DATA_CREATE needs a 4 KiB aligned IPA, got 0x\(String(ipa, radix: 16))"
        case .wrongGranuleLength(let ipa, let length):
            "measured granule at IPA 0x\(String(ipa, radix: 16)) has \(length) bytes of contents, not 4096"
        }
    }
}

extension Array where Element == UInt8 {
    /// Stores `value` little-endian at `offset`; the caller has checked the bounds.
    mutating func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for index in 0..<MemoryLayout<T>.size {
            self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index))
        }
    }
}
