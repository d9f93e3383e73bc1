/// The vCPU signature SEV-SNP guests see: CPUID Fn0000_0001_EAX, which KVM
/// puts in RDX of the initial VMSA.
///
/// Source: AMD CPUID Specification (publication 25481), "CPUID
/// Fn0000_0001_EAX Family, Model, Stepping Identifiers"; the type table is
/// sev-snp-measure's `vcpu_types.py`, which lists QEMU's `builtin_x86_defs`.
public enum SNPVCPUSignature {
    /// The signature of a family, model and stepping:
    /// `ext_family << 20 | ext_model << 16 | base_family << 8 | base_model << 4 | stepping`.
    /// Families above 0xF are split into base 0xF plus an 8-bit extension.
    ///
    /// The arithmetic wraps in 64 bits exactly as sev-snp-measure's Python
    /// integers do once ctypes stores the result in the 64-bit RDX field,
    /// so out-of-range command-line values give the same bits.
    public static func signature(family: Int64, model: Int64, stepping: Int64) -> UInt64 {
        let (baseFamily, extendedFamily): (Int64, Int64) = family > 0xF ? (0xF, (family &- 0xF) & 0xFF) : (family, 0)
        let value = (extendedFamily << 20) | (((model >> 4) & 0xF) << 16) | (baseFamily &<< 8)
            | ((model & 0xF) << 4) | (stepping & 0xF)
        return UInt64(bitPattern: value)
    }

    /// Named vCPU types and their (family, model, stepping), in sev-snp-measure's order.
    public static let types: [(name: String, family: Int64, model: Int64, stepping: Int64)] = [
        ("EPYC", 23, 1, 2), ("EPYC-v1", 23, 1, 2), ("EPYC-v2", 23, 1, 2), ("EPYC-IBPB", 23, 1, 2),
        ("EPYC-v3", 23, 1, 2), ("EPYC-v4", 23, 1, 2),
        ("EPYC-Rome", 23, 49, 0), ("EPYC-Rome-v1", 23, 49, 0), ("EPYC-Rome-v2", 23, 49, 0), ("EPYC-Rome-v3", 23, 49, 0),
        ("EPYC-Milan", 25, 1, 1), ("EPYC-Milan-v1", 25, 1, 1), ("EPYC-Milan-v2", 25, 1, 1),
        ("EPYC-Genoa", 25, 17, 0), ("EPYC-Genoa-v1", 25, 17, 0),
        ("EPYC-Turin", 26, 0, 0),
    ]

    /// The signature of a named vCPU type, or nil for a name not in `types`.
    public static func signature(named name: String) -> UInt64? {
        types.first { $0.name == name }.map { signature(family: $0.family, model: $0.model, stepping: $0.stepping) }
    }
}
