import CKVMHeaders
import GuestMemfd

/// The SEV-SNP CPUID page (`struct snp_cpuid_table`, arch/x86/include/asm/sev.h):
/// the CPUID values the guest may trust, which the firmware checks at
/// launch (page type CPUID). A u32 count, 12 reserved bytes, then one
/// 48-byte entry per leaf: eax_in, ecx_in, xcr0_in (u64), xss_in (u64),
/// eax, ebx, ecx, edx, and 8 reserved bytes.
public enum SNPCPUIDTable {
    /// `SNP_CPUID_COUNT_MAX`: the entries the page holds.
    public static let maximumEntries = 64
    /// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry depends on ECX.
    public static let significantIndex: UInt32 = 1

    /// Why a table cannot be built.
    public struct TooManyEntries: Error, Sendable, CustomStringConvertible {
        public var count: Int
        public var description: String {
            "the vCPUs have \(count) CPUID entries; the SEV-SNP CPUID table holds \(SNPCPUIDTable.maximumEntries)"
        }
    }

    /// The page for the CPUID the vCPUs were given (KVM_SET_CPUID2).
    ///
    /// Leaf 0xD sub-leaves 0 and 1 describe the XSAVE area for XCR0 = 1
    /// (x87 only, the state a guest starts in): xcr0_in 1 and an area of
    /// 0x240 bytes, the 512-byte legacy region and the 64-byte header.
    public static func page(for entries: [kvm_cpuid_entry2]) throws(TooManyEntries) -> [UInt8] {
        guard entries.count <= maximumEntries else { throw TooManyEntries(count: entries.count) }
        var page = [UInt8](repeating: 0, count: Int(pageSize))
        page.storeLittleEndian(UInt32(entries.count), at: 0)
        for (index, entry) in entries.enumerated() {
            let base = 16 + index * 48
            let subleaf = entry.flags & significantIndex != 0 ? entry.index : 0
            var ebx = entry.ebx
            page.storeLittleEndian(entry.function, at: base)
            page.storeLittleEndian(subleaf, at: base + 4)
            if entry.function == 0xD && (subleaf == 0 || subleaf == 1) {
                page.storeLittleEndian(UInt64(1), at: base + 8)
                ebx = 0x240
            }
            page.storeLittleEndian(entry.eax, at: base + 24)
            page.storeLittleEndian(ebx, at: base + 28)
            page.storeLittleEndian(entry.ecx, at: base + 32)
            page.storeLittleEndian(entry.edx, at: base + 36)
        }
        return page
    }
}

/// The confidential-computing blob an SEV-SNP guest kernel finds its CPUID
/// and secrets pages through (`struct cc_blob_sev_info`, 40 bytes, packed:
/// magic "AMDE", version 0, the secrets page's GPA and length, the CPUID
/// page's GPA and length). Linux stops an SNP guest without it.
public enum SNPCCBlob {
    /// `CC_BLOB_SEV_HDR_MAGIC`.
    public static let magic: UInt32 = 0x4544_4D41

    public static func bytes(secretsPage: UInt64, cpuidPage: UInt64) -> [UInt8] {
        var blob = [UInt8](repeating: 0, count: 40)
        blob.storeLittleEndian(magic, at: 0)
        blob.storeLittleEndian(secretsPage, at: 8)
        blob.storeLittleEndian(UInt32(pageSize), at: 16)
        blob.storeLittleEndian(cpuidPage, at: 24)
        blob.storeLittleEndian(UInt32(pageSize), at: 32)
        return blob
    }
}

extension [UInt8] {
    mutating func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        for index in 0..<(T.bitWidth / 8) { self[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }
}
