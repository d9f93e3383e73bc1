import GuestMemfd
/// The guest-physical addresses snpvmm lays an x86 guest out with, in one
/// place (as Firecracker's `arch/x86_64/layout.rs` and kvmtool's
/// `x86/include/kvm/kvm-arch.h` keep theirs).
///
/// Everything below 1 MiB that the loaders write lives in the first 640 KiB
/// of conventional memory; the kernel goes at 1 MiB and above; the last
/// gigabyte below 4 GiB is left to devices, and RAM beyond it continues at
/// 4 GiB.
public enum Layout {
    /// The boot GDT, one page that also leaves the real-mode IVT area alone.
    static let gdt: UInt64 = 0x500
    /// The page holding the GDT, as a plan region.
    static let gdtPage: UInt64 = 0x0

    /// `hvm_start_info`, followed in the same page by the module list and the memory map.
    static let pvhStartInfo: UInt64 = 0x6000
    /// The PVH module list, 0x40 bytes into the start-info page.
    static let pvhModuleList: UInt64 = 0x6040
    /// The PVH memory map, 0x100 bytes into the start-info page.
    static let pvhMemoryMap: UInt64 = 0x6100

    /// `struct boot_params`, the "zero page" of the Linux boot protocol.
    static let zeroPage: UInt64 = 0x7000

    /// The initial stack pointer of the boot vCPU; the stack grows down through 0x8000.
    static let bootStackPointer: UInt64 = 0x8FF0

    /// The identity-mapping page tables of the 64-bit entry: PML4, PDPT, then four page directories.
    static let pml4: UInt64 = 0x9000
    static let pdpt: UInt64 = 0xA000
    static let pageDirectories: UInt64 = 0xB000
    /// The page directories map this much with 2 MiB pages (4 GiB, one directory per GiB).
    static let identityMappedBytes: UInt64 = 4 << 30

    /// The kernel command line, NUL-terminated.
    static let commandLine: UInt64 = 0x2_0000
    /// Room for the command line: up to the MP table's page.
    static let commandLineCapacity: UInt64 = 0x1_0000

    /// The Extended BIOS Data Area: the last KiB of the first 640 KiB, where
    /// the MP floating pointer and table go (Intel MultiProcessor
    /// Specification 1.4, section 4: the first KiB of the EBDA is searched).
    public static let ebda: UInt64 = 0x9_FC00
    /// The page that holds the EBDA, as a plan region.
    static let ebdaPage: UInt64 = 0x9_F000
    /// The end of conventional memory; the legacy VGA and BIOS hole follows up to 1 MiB.
    static let conventionalMemoryEnd: UInt64 = 0xA_0000

    /// The start of "high memory", where bzImage kernels are loaded (Documentation/arch/x86/boot.rst, "Loading The Rest of The Kernel").
    static let highMemory: UInt64 = 0x10_0000

    /// The start of the device hole below 4 GiB; RAM beyond this address moves to 4 GiB.
    static let mmioGap: UInt64 = 0xC000_0000
    /// The IOAPIC's MMIO base (the in-kernel irqchip's).
    public static let ioapic: UInt64 = 0xFEC0_0000
    /// The local APIC's MMIO base.
    static let localAPIC: UInt64 = 0xFEE0_0000
    /// The page KVM_SET_IDENTITY_MAP_ADDR reserves (Intel real mode without unrestricted guest).
    static let kvmIdentityMap: UInt64 = 0xFFFB_C000
    /// The three pages KVM_SET_TSS_ADDR reserves (the same purpose).
    static let kvmTSS: UInt64 = 0xFFFB_D000
    /// Where RAM beyond `mmioGap` continues.
    static let highRAM: UInt64 = 1 << 32

    /// An SEV-SNP guest's CPUID table page, secrets page and CC blob (the
    /// page naming both), reserved in its memory map. They lie between the
    /// command line and the EBDA.
    public static let snpCPUIDPage: UInt64 = 0x3_0000
    public static let snpSecretsPage: UInt64 = 0x3_1000
    public static let snpCCBlob: UInt64 = 0x3_2000
    static let snpPagesSize: UInt64 = 0x3000

    /// The smallest `--memory` snpvmm accepts: the low structures and a small kernel.
    public static let minimumMemory: UInt64 = 2 << 20

    /// The guest-physical RAM ranges a guest of `size` bytes gets, in order:
    /// below the device hole, then above 4 GiB when `size` reaches into the hole.
    public static func ramRanges(memorySize size: UInt64) -> [(start: UInt64, size: UInt64)] {
        if size <= mmioGap { return [(0, size)] }
        return [(0, mmioGap), (highRAM, size - mmioGap)]
    }

    /// The guest's memory map as the firmware tables report it (e820 and the
    /// PVH memory map share it): conventional memory up to the EBDA, the
    /// EBDA reserved, then RAM from 1 MiB.
    /// An SEV-SNP guest's map also reserves its three SNP pages.
    public static func memoryMap(memorySize size: UInt64, snp: Bool = false) -> [MemoryMapEntry] {
        var entries = snp
            ? [MemoryMapEntry(start: 0, size: snpCPUIDPage, type: .ram),
               MemoryMapEntry(start: snpCPUIDPage, size: snpPagesSize, type: .reserved),
               MemoryMapEntry(start: snpCPUIDPage + snpPagesSize, size: ebda - snpCPUIDPage - snpPagesSize, type: .ram)]
            : [MemoryMapEntry(start: 0, size: ebda, type: .ram)]
        entries.append(MemoryMapEntry(start: ebda, size: conventionalMemoryEnd - ebda, type: .reserved))
        for (index, range) in ramRanges(memorySize: size).enumerated() {
            let start = index == 0 ? highMemory : range.start
            let end = range.start + range.size
            if end > start { entries.append(MemoryMapEntry(start: start, size: end - start, type: .ram)) }
        }
        return entries
    }
}

/// One entry of the guest's memory map.
public struct MemoryMapEntry: Equatable, Sendable {
    /// The e820 and PVH type numbers, which agree (arch/x86/include/asm/e820/types.h,
    /// xen/include/public/arch-x86/hvm/start_info.h XEN_HVM_MEMMAP_TYPE_*).
    public enum Kind: UInt32, Sendable {
        case ram = 1
        case reserved = 2
    }

    public var start: UInt64
    public var size: UInt64
    public var type: Kind

    public init(start: UInt64, size: UInt64, type: Kind) {
        self.start = start
        self.size = size
        self.type = type
    }
}
