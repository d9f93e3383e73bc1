import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import Populate

/// The pages an SEV-SNP guest kernel finds through its confidential
/// computing blob (`struct cc_blob_sev_info`, arch/x86/include/asm/sev.h,
/// the layout OVMF defines): the CPUID table, which the firmware checks at
/// launch, and the secrets page, which the firmware fills. Linux stops an
/// SNP guest without them (snp_init, snp_setup_cpuid_table).
enum SNPGuestPages {
    /// `CC_BLOB_SEV_HDR_MAGIC`, "AMDE".
    static let ccBlobMagic: UInt32 = 0x4544_4D41
    /// `SNP_CPUID_COUNT_MAX`: entries the table holds.
    static let maximumCPUIDEntries = 64
    /// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`: the entry depends on ECX.
    static let significantIndex: UInt32 = 1

    /// The plan regions: the CPUID page (its table is written at launch,
    /// from the CPUID the vCPUs get), the secrets page and the CC blob.
    static func regions() -> [PlanRegion] {
        [
            PlanRegion(name: "SNP CPUID table", range: GuestRange(start: Layout.snpCPUIDPage, size: pageSize),
                       contents: .zeros, kind: .cpuid),
            PlanRegion(name: "SNP secrets page", range: GuestRange(start: Layout.snpSecretsPage, size: pageSize),
                       contents: .zeros, kind: .secrets),
            PlanRegion(name: "SNP CC blob", range: GuestRange(start: Layout.snpCCBlob, size: pageSize),
                       contents: .bytes(ccBlob())),
        ]
    }

    /// `struct cc_blob_sev_info` (40 bytes, packed): magic, version 0, the
    /// secrets page and the CPUID page with their lengths.
    static func ccBlob() -> [UInt8] {
        var blob = LittleEndianWriter(count: 40)
        blob.store(ccBlobMagic, at: 0)
        blob.store(Layout.snpSecretsPage, at: 8)
        blob.store(UInt32(pageSize), at: 16)
        blob.store(Layout.snpCPUIDPage, at: 24)
        blob.store(UInt32(pageSize), at: 32)
        return blob.bytes
    }

    /// Why a CPUID table cannot be built.
    struct TooManyEntries: Error, CustomStringConvertible {
        var count: Int
        var description: String {
            "KVM gives the vCPUs \(count) CPUID entries; the SEV-SNP CPUID table holds \(SNPGuestPages.maximumCPUIDEntries)"
        }
    }

    /// The CPUID page (`struct snp_cpuid_table`): a u32 count, 12 reserved
    /// bytes, then one 48-byte entry per leaf (eax_in, ecx_in, xcr0_in,
    /// xss_in, eax, ebx, ecx, edx, reserved), from the CPUID KVM gives the
    /// vCPUs. The firmware corrects what the host cannot offer.
    ///
    /// Leaf 0xD sub-leaves 0 and 1 describe the XSAVE area for XCR0 = 1
    /// (x87 only, the state a guest starts in): xcr0_in 1 and an area of
    /// 0x240 bytes, the 512-byte legacy region and the 64-byte header.
    static func cpuidTable(_ entries: [kvm_cpuid_entry2]) throws(TooManyEntries) -> [UInt8] {
        guard entries.count <= maximumCPUIDEntries else { throw TooManyEntries(count: entries.count) }
        var page = LittleEndianWriter(count: Int(pageSize))
        page.store(UInt32(entries.count), at: 0)
        for (index, entry) in entries.enumerated() {
            let base = 16 + index * 48
            let indexed = entry.flags & significantIndex != 0
            let subleaf = indexed ? entry.index : 0
            var ebx = entry.ebx
            page.store(entry.function, at: base)
            page.store(subleaf, at: base + 4)
            if entry.function == 0xD && (subleaf == 0 || subleaf == 1) {
                page.store(UInt64(1), at: base + 8)
                ebx = 0x240
            }
            page.store(entry.eax, at: base + 24)
            page.store(ebx, at: base + 28)
            page.store(entry.ecx, at: base + 32)
            page.store(entry.edx, at: base + 36)
        }
        return page.bytes
    }
}
