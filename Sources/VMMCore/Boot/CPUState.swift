import GuestMemfd
/// A segment as both the GDT entry in guest memory and the hidden part of
/// the segment register KVM_SET_SREGS loads, so the two always agree (the
/// approach of Firecracker's `gdt.rs`).
///
/// Descriptor bit positions are those of the Intel SDM, Vol. 3A, 3.4.5
/// "Segment Descriptors".
public struct Segment: Equatable, Sendable {
    var selector: UInt16
    var base: UInt32 = 0
    /// The 20-bit limit field; in pages when `granularity4K`.
    var limit: UInt32 = 0xF_FFFF
    /// The 4-bit type: 0xB execute/read code (accessed), 0x3 read/write data
    /// (accessed), 0xB in a system descriptor a busy TSS.
    var type: UInt8
    /// S clear: a system descriptor (the TSS).
    var isSystem = false
    var present = true
    /// D/B: 32-bit default operand size.
    var defaultSize32 = true
    /// L: a 64-bit code segment.
    var long = false
    var granularity4K = true

    /// The 8-byte descriptor.
    public var descriptor: UInt64 {
        var value = UInt64(limit & 0xFFFF) | UInt64(base & 0xFF_FFFF) << 16
        value |= UInt64(type & 0xF) << 40
        if !isSystem { value |= 1 << 44 }
        if present { value |= 1 << 47 }
        value |= UInt64((limit >> 16) & 0xF) << 48
        if long { value |= 1 << 53 }
        if defaultSize32 { value |= 1 << 54 }
        if granularity4K { value |= 1 << 55 }
        value |= UInt64(base >> 24) << 56
        return value
    }

    /// The limit in bytes, as the hidden segment register holds it.
    public var byteLimit: UInt32 { granularity4K ? (limit << 12) | 0xFFF : limit }
}

/// The state the boot vCPU starts in: the mode, the registers a boot
/// protocol names, and the segments and tables that mode needs. The GDT and
/// page tables it points at are regions of the launch plan.
public struct BootCPUState: Equatable, Sendable {
    enum Mode: String, Sendable {
        /// Flat 32-bit protected mode with paging off: the PVH entry.
        case protected32 = "32-bit protected mode, paging off"
        /// 64-bit long mode on identity-mapped page tables: the Linux 64-bit entry.
        case long64 = "64-bit long mode, identity-mapped"
    }

    var mode: Mode
    var rip: UInt64
    var rsp: UInt64 = Layout.bootStackPointer
    /// %rsi: `boot_params` for the Linux entry.
    public var rsi: UInt64 = 0
    /// %rbx: `hvm_start_info` for the PVH entry.
    var rbx: UInt64 = 0
    /// Bit 1 is reserved and set; IF, TF and VM are clear, as both protocols require.
    var rflags: UInt64 = 0x2
    public var code: Segment
    public var data: Segment
    public var task: Segment
    var gdtBase: UInt64 = Layout.gdt
    var cr0: UInt64
    public var cr3: UInt64 = 0
    var cr4: UInt64 = 0
    var efer: UInt64 = 0

    // Intel SDM Vol. 3A, 2.5 "Control Registers" and 2.2.1 "Extended Feature Enable Register".
    static let cr0PE: UInt64 = 1 << 0, cr0ET: UInt64 = 1 << 4, cr0PG: UInt64 = 1 << 31
    static let cr4PAE: UInt64 = 1 << 5
    static let eferLME: UInt64 = 1 << 8, eferLMA: UInt64 = 1 << 10

    /// GDT selectors: Linux's `__BOOT_CS` 0x10 and `__BOOT_DS` 0x18
    /// (arch/x86/include/asm/segment.h, required by the 32- and 64-bit boot
    /// protocols of boot.rst); the PVH ABI leaves selectors unspecified, so
    /// it uses the same ones. The TSS follows at 0x20.
    static let codeSelector: UInt16 = 0x10, dataSelector: UInt16 = 0x18, taskSelector: UInt16 = 0x20

    /// The GDT: two null entries, code, data, and a TSS entry whose upper
    /// half (a 16-byte system descriptor in long mode) is the zero entry after it.
    public var gdtBytes: [UInt8] {
        var table = LittleEndianWriter(count: 6 * 8)
        table.store(code.descriptor, at: Int(Self.codeSelector))
        table.store(data.descriptor, at: Int(Self.dataSelector))
        table.store(task.descriptor, at: Int(Self.taskSelector))
        return table.bytes
    }

    var gdtLimit: UInt16 { UInt16(gdtBytes.count - 1) }

    /// The PVH entry state (xen docs/misc/pvh.pandoc): %ebx holds the
    /// start-info address; CR0 has PE and no other writable bit; CR4 is 0;
    /// CS is flat 32-bit execute/read; DS, ES (and here SS, FS, GS) flat
    /// 32-bit read/write; TR a 32-bit busy TSS with base 0 and limit 0x67.
    public static func pvh(entry: UInt32, startInfo: UInt64) -> BootCPUState {
        BootCPUState(mode: .protected32, rip: UInt64(entry), rbx: startInfo,
                     code: Segment(selector: codeSelector, type: 0xB),
                     data: Segment(selector: dataSelector, type: 0x3),
                     task: Segment(selector: taskSelector, limit: 0x67, type: 0xB, isSystem: true,
                                   defaultSize32: false, granularity4K: false),
                     cr0: cr0PE | cr0ET)
    }

    /// The Linux 64-bit entry state (Documentation/arch/x86/boot.rst,
    /// "64-bit Boot Protocol"): long mode with paging on an identity map
    /// covering the kernel, boot_params and command line; CS `__BOOT_CS`
    /// and DS/ES/SS `__BOOT_DS`, both 4 GiB flat; interrupts off; %rsi
    /// holding the address of boot_params.
    public static func linux64(entry: UInt64, bootParams: UInt64) -> BootCPUState {
        BootCPUState(mode: .long64, rip: entry, rsi: bootParams,
                     code: Segment(selector: codeSelector, type: 0xB, defaultSize32: false, long: true),
                     data: Segment(selector: dataSelector, type: 0x3),
                     task: Segment(selector: taskSelector, limit: 0x67, type: 0xB, isSystem: true,
                                   defaultSize32: false, granularity4K: false),
                     cr0: cr0PE | cr0ET | cr0PG, cr3: Layout.pml4, cr4: cr4PAE, efer: eferLME | eferLMA)
    }

    /// Identity-mapping page tables for the first `Layout.identityMappedBytes`
    /// with 2 MiB pages: one PML4 entry, one PDPT entry per GiB, and a page
    /// directory per GiB (Intel SDM Vol. 3A, 4.5 "4-Level Paging").
    /// The bytes start at `Layout.pml4`, one 4 KiB table after another.
    public static func identityPageTables() -> [UInt8] {
        let present: UInt64 = 1 << 0, writable: UInt64 = 1 << 1, largePage: UInt64 = 1 << 7
        let gigabytes = Int(Layout.identityMappedBytes >> 30)
        var tables = LittleEndianWriter(count: (2 + gigabytes) * 4096)
        tables.store(Layout.pdpt | present | writable, at: 0)
        for gigabyte in 0..<gigabytes {
            let directory = Layout.pageDirectories + UInt64(gigabyte) * 4096
            tables.store(directory | present | writable, at: 4096 + gigabyte * 8)
            for entry in 0..<512 {
                let address = UInt64(gigabyte) << 30 | UInt64(entry) << 21
                tables.store(address | present | writable | largePage, at: Int(directory - Layout.pml4) + entry * 8)
            }
        }
        return tables.bytes
    }
}
