import GuestMemfd
/// The Xen PVH start-of-day structures a PVH kernel finds through %ebx:
/// `hvm_start_info`, its module list and its memory map, all in one page
/// at `Layout.pvhStartInfo`.
///
/// Layouts are those of xen/include/public/arch-x86/hvm/start_info.h,
/// version 1: every address and size is a 64-bit little-endian value, and
/// an address of 0 means "not present".
public enum PVH {
    /// `XEN_HVM_START_MAGIC_VALUE`: "xEn3" with the 0x80 bit of the "E" set.
    static let startMagic: UInt32 = 0x336E_C578
    /// Version 1 adds `memmap_paddr` and `memmap_entries`.
    static let version: UInt32 = 1

    /// `struct hvm_start_info`: magic @0 (u32), version @4, flags @8,
    /// nr_modules @12, modlist_paddr @16 (u64), cmdline_paddr @24,
    /// rsdp_paddr @32, memmap_paddr @40, memmap_entries @48 (u32), reserved @52.
    static let startInfoSize = 56
    /// `struct hvm_modlist_entry`: paddr @0, size @8, cmdline_paddr @16, reserved @24.
    static let moduleEntrySize = 32
    /// `struct hvm_memmap_table_entry`: addr @0, size @8, type @16 (u32), reserved @20.
    static let memoryMapEntrySize = 24

    /// The most memory-map entries that fit between `Layout.pvhMemoryMap` and the end of the page.
    static let memoryMapCapacity = Int(4096 - (Layout.pvhMemoryMap - Layout.pvhStartInfo)) / memoryMapEntrySize

    /// A module handed to the kernel: the initrd is module 0.
    struct Module: Equatable, Sendable {
        var address: UInt64
        var size: UInt64
    }

    /// The start-info page: `hvm_start_info`, then the module list at
    /// `Layout.pvhModuleList` and the memory map at `Layout.pvhMemoryMap`.
    /// The RSDP address is 0: snpvmm provides no ACPI tables.
    static func startInfoPage(commandLine: UInt64, modules: [Module], memoryMap: [MemoryMapEntry]) -> [UInt8] {
        precondition(modules.count <= Int(Layout.pvhMemoryMap - Layout.pvhModuleList) / moduleEntrySize
                     && memoryMap.count <= memoryMapCapacity, "PVH tables larger than their page")
        var page = LittleEndianWriter(count: 4096)
        page.store(startMagic, at: 0)
        page.store(version, at: 4)
        page.store(UInt32(0), at: 8)  // flags: no SIF_* flag applies outside Xen
        page.store(UInt32(modules.count), at: 12)
        page.store(modules.isEmpty ? 0 : Layout.pvhModuleList, at: 16)
        page.store(commandLine, at: 24)
        page.store(UInt64(0), at: 32)  // rsdp_paddr
        page.store(Layout.pvhMemoryMap, at: 40)
        page.store(UInt32(memoryMap.count), at: 48)
        let moduleBase = Int(Layout.pvhModuleList - Layout.pvhStartInfo)
        for (index, module) in modules.enumerated() {
            page.store(module.address, at: moduleBase + index * moduleEntrySize)
            page.store(module.size, at: moduleBase + index * moduleEntrySize + 8)
            // cmdline_paddr 0: modules carry no command line of their own.
        }
        let mapBase = Int(Layout.pvhMemoryMap - Layout.pvhStartInfo)
        for (index, entry) in memoryMap.enumerated() {
            page.store(entry.start, at: mapBase + index * memoryMapEntrySize)
            page.store(entry.size, at: mapBase + index * memoryMapEntrySize + 8)
            page.store(entry.type.rawValue, at: mapBase + index * memoryMapEntrySize + 16)
        }
        return page.bytes
    }
}
