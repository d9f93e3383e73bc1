import Fixtures
import Foundation
import GuestMemfd
import Populate
import VMMCore
import Testing

/// The loader's launch plans: which regions, where, with what contents, and
/// the clear error for an image that does not fit.
@Suite struct LoaderTests {
    static let memory: UInt64 = 256 << 20

    static func load(kernel: [UInt8], initrd: [UInt8]? = nil, commandLine: String = "", memory: UInt64 = memory,
                     cpus: Int = 1) throws(ImageError) -> BootSetup {
        try Loader.load(BootRequest(kernel: ImageSource(bytes: kernel), initrd: initrd.map { ImageSource(bytes: $0) },
                                    commandLine: commandLine, memorySize: memory, cpus: cpus))
    }

    @Test func pvhFixturePlanHoldsTablesCommandLineSegmentsAndInitrdInOrder() throws {
        let initrd = Fixtures.pvhCheckModule(Array(repeating: 7, count: 100))
        let setup = try Loader.load(BootRequest(
            kernel: ImageSource(path: Fixtures.pvhCheckPath, role: "kernel"), initrd: ImageSource(bytes: initrd),
            commandLine: "console=ttyS0", memorySize: Self.memory))
        #expect(setup.format == .pvh)
        #expect(setup.plan.regions.map(\.name) == ["boot GDT", "MP table", "hvm_start_info", "command line",
                                                   "kernel segment 0", "kernel segment 1", "initrd"])
        let ranges = setup.plan.regions.map(\.range)
        #expect(ranges[2] == GuestRange(start: 0x6000, size: 0x1000))
        #expect(ranges[3] == GuestRange(start: 0x2_0000, size: 0x1000))
        #expect(ranges[4] == GuestRange(start: 0x10_0000, size: 0x1000))
        // The data segment: p_paddr 0x200000, 0x404 file bytes and an 8 KiB BSS (three pages).
        #expect(ranges[5] == GuestRange(start: 0x20_0000, size: 0x3000))
        guard case .file(Fixtures.pvhCheckPath, 0x2000, 0x404) = setup.plan.regions[5].contents else {
            Issue.record("the data segment should come from the file: \(setup.plan.regions[5].contents)")
            return
        }
        // The initrd sits in the last page below the top of RAM.
        #expect(ranges[6] == GuestRange(start: Self.memory - 0x1000, size: 0x1000))
        #expect(setup.plan.regions[3].contents == .bytes(Array("console=ttyS0".utf8) + [0]))
        #expect(setup.cpu == BootCPUState.pvh(entry: 0x10_0000, startInfo: 0x6000))
    }

    /// hvm_start_info, field by field (start_info.h, version 1).
    @Test func startInfoNamesCommandLineModuleAndMemoryMap() throws {
        let setup = try Self.load(kernel: ELFBuilder.pvh([0xF4]).build(), initrd: [1, 2, 3], commandLine: "x")
        guard case .bytes(let page) = setup.plan.regions.first(where: { $0.name == "hvm_start_info" })?.contents else {
            Issue.record("no start info")
            return
        }
        let info = LittleEndianBytes(bytes: page, what: "start info")
        #expect(try info.u32(0) == 0x336E_C578)  // magic
        #expect(try info.u32(4) == 1)            // version
        #expect(try info.u32(12) == 1)           // nr_modules
        #expect(try info.u64(16) == 0x6040)      // modlist_paddr
        #expect(try info.u64(24) == 0x2_0000)    // cmdline_paddr
        #expect(try info.u64(32) == 0)           // rsdp_paddr
        #expect(try info.u64(40) == 0x6100)      // memmap_paddr
        #expect(try info.u32(48) == 3)           // memmap_entries
        #expect(try info.u64(0x40) == Self.memory - 0x1000)  // module 0 paddr
        #expect(try info.u64(0x48) == 3)                     // module 0 size
        #expect(try info.u64(0x100 + 2 * 24) == 0x10_0000)   // third map entry: RAM from 1 MiB
        #expect(try info.u64(0x100 + 2 * 24 + 8) == Self.memory - 0x10_0000)
        #expect(try info.u32(0x100 + 2 * 24 + 16) == 1)
    }

    @Test func memoryBeyondThreeGiBContinuesAtFourGiB() {
        #expect(Layout.memoryMap(memorySize: 5 << 30) == [
            MemoryMapEntry(start: 0, size: 0x9_FC00, type: .ram),
            MemoryMapEntry(start: 0x9_FC00, size: 0x400, type: .reserved),
            MemoryMapEntry(start: 0x10_0000, size: 0xC000_0000 - 0x10_0000, type: .ram),
            MemoryMapEntry(start: 1 << 32, size: 2 << 30, type: .ram),
        ])
    }

    @Test func segmentsSharingAPageAreAssembledIntoOneRegion() throws {
        let builder = ELFBuilder(segments: [
            .init(physicalAddress: 0x10_0000, data: [0xF4, 0xF4], memorySize: 0x10),
            .init(physicalAddress: 0x10_0800, data: [1, 2, 3]),
            .init(physicalAddress: 0x10_2004, data: [9], memorySize: 0x1000),
        ], pvhEntry: 0x10_0000)
        let setup = try Self.load(kernel: builder.build())
        let kernel = setup.plan.regions.filter { $0.name.hasPrefix("kernel") }
        #expect(kernel.map(\.name) == ["kernel segments 0,1", "kernel segment 2"])
        #expect(kernel[0].range == GuestRange(start: 0x10_0000, size: 0x1000))
        var expected = [UInt8](repeating: 0, count: 0x803)
        expected[0] = 0xF4; expected[1] = 0xF4
        expected[0x800...] = [1, 2, 3]
        #expect(kernel[0].contents == .bytes(expected))
        // An unaligned segment starts its page with zeros; its BSS runs into the next page.
        #expect(kernel[1].range == GuestRange(start: 0x10_2000, size: 0x2000))
        #expect(kernel[1].contents == .bytes([0, 0, 0, 0, 9]))
    }

    @Test func segmentsSharingAPageFarApartAreRefusedRatherThanAssembled() {
        let builder = ELFBuilder(segments: [
            .init(physicalAddress: 0x10_0000, data: [0xF4], memorySize: 0x800_0001),
            .init(physicalAddress: 0x810_0800, data: [1]),
        ], pvhEntry: 0x10_0000)
        #expect(throws: ImageError.badSegment(index: 1, reason: "it shares a page with program header 0, 0x8000801 bytes after its start; snpvmm assembles shared pages only up to 64 MiB")) {
            try Self.load(kernel: builder.build())
        }
    }

    /// The loader, on the fixture with its program headers corrupted byte
    /// by byte, lays out a plan that fits guest RAM or refuses in one line.
    @Test func corruptedProgramHeadersGiveAValidPlanOrAOneLineRefusal() throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.pvhCheckPath)))
        var refused = 0, laidOut = 0
        for offset in 64..<(64 + 3 * 56) {
            for value: UInt8 in [0x00, 0x10, 0x80, 0xFF] {
                var corrupted = bytes
                corrupted[offset] = value
                do {
                    let setup = try Self.load(kernel: corrupted, initrd: [1])
                    let ram = Layout.ramRanges(memorySize: Self.memory).map { GuestRange(start: $0.start, size: $0.size) }
                    #expect(throws: Never.self, "offset \(offset) = \(value)") { try setup.plan.validate(memory: ram) }
                    laidOut += 1
                } catch {
                    #expect(!error.description.isEmpty && !error.description.contains("\n"))
                    refused += 1
                }
            }
        }
        #expect(refused > 0 && laidOut > 0)
    }

    @Test func bzImagePlanMapsFourGiBAndPassesBootParamsInRSI() throws {
        let setup = try Self.load(kernel: BzImageBuilder().build(), initrd: [5, 6], commandLine: "quiet")
        #expect(setup.format == .bzImage)
        #expect(setup.plan.regions.map(\.name) == ["boot GDT", "MP table", "identity page tables", "boot_params",
                                                   "command line", "kernel", "initrd"])
        #expect(setup.plan.regions[2].range == GuestRange(start: 0x9000, size: 0x6000))
        #expect(setup.plan.regions[5].range == GuestRange(start: 0x10_0000, size: 0x1000))
        #expect(setup.cpu == BootCPUState.linux64(entry: 0x10_0200, bootParams: 0x7000))
        #expect(setup.cpu.rsi == 0x7000 && setup.cpu.cr3 == 0x9000)
    }

    struct Misfit: CustomTestStringConvertible, Sendable {
        let name: String
        let kernel: [UInt8]
        let initrd: [UInt8]?
        let commandLine: String
        let memory: UInt64
        let message: String
        var testDescription: String { name }
    }

    static let misfits: [Misfit] = [
        Misfit(name: "segment beyond memory", kernel: ELFBuilder.pvh([0xF4], at: 0x1000_0000).build(), initrd: nil,
               commandLine: "", memory: 256 << 20,
               message: "kernel segment 0 [0x10000000, 0x10000001) (1 bytes) does not fit: it is outside the guest's RAM, [0x0, 0x10000000)"),
        Misfit(name: "segment on the start info", kernel: ELFBuilder.pvh([0xF4], at: 0x6000).build(), initrd: nil,
               commandLine: "", memory: 256 << 20,
               message: "plan region 4 'kernel segment 0' [0x6000, 0x7000) overlaps region 2 'hvm_start_info'"),
        Misfit(name: "initrd larger than memory", kernel: ELFBuilder.pvh([0xF4]).build(),
               initrd: Array(repeating: 1, count: 3 << 20), commandLine: "", memory: 2 << 20,
               message: "initrd (3145728 bytes) does not fit: it must lie between the kernel's end at 0x100001 and 0x200000 (the top of RAM below 4 GiB)"),
        Misfit(name: "bzImage init area beyond memory", kernel: BzImageBuilder().build(), initrd: nil, commandLine: "",
               memory: 16 << 20,
               message: "kernel does not fit: it loads at 0x100000 and needs memory up to 0x1400000 (init_size 0x400000 from 0x1000000), but RAM below 4 GiB ends at 0x1000000"),
        Misfit(name: "command line longer than cmdline_size", kernel: BzImageBuilder().build(), initrd: nil,
               commandLine: String(repeating: "a", count: 2048), memory: 256 << 20,
               message: "the command line is 2048 bytes; this kernel accepts at most 2047"),
        Misfit(name: "neither format", kernel: Array("#!/bin/sh\n".utf8), initrd: nil, commandLine: "", memory: 256 << 20,
               message: "is neither an ELF64 kernel with a PVH entry note nor a Linux bzImage (it starts with 23 21 2f 62)"),
        Misfit(name: "ELF without PVH note", kernel: ELFBuilder(segments: [.init(physicalAddress: 0x10_0000, data: [1])]).build(),
               initrd: nil, commandLine: "", memory: 256 << 20,
               message: "is an ELF64 kernel without a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or boot its bzImage"),
    ]

    @Test(arguments: misfits)
    func imagesThatDoNotFitAreRejectedWithOneLine(_ misfit: Misfit) {
        do {
            _ = try Self.load(kernel: misfit.kernel, initrd: misfit.initrd, commandLine: misfit.commandLine,
                              memory: misfit.memory)
            Issue.record("loaded")
        } catch {
            #expect(error.description == misfit.message)
        }
    }

    @Test func mpTableListsEveryCPUAndSumsToZero() {
        let table = MPTable.bytes(cpus: 4, at: Layout.ebda)
        #expect(Array(table[0..<4]) == Array("_MP_".utf8))
        #expect(table[0..<16].reduce(UInt8(0), &+) == 0)
        let config = Array(table[16...])
        #expect(Array(config[0..<4]) == Array("PCMP".utf8))
        #expect(Int(config[4]) | Int(config[5]) << 8 == config.count)
        #expect(config.reduce(UInt8(0), &+) == 0)
        // Processor entries first: type 0, APIC ids 0...3, CPU 0 the boot processor.
        let processors = (0..<4).map { Array(config[44 + 20 * $0..<64 + 20 * $0]) }
        #expect(processors.map { $0[0] } == [0, 0, 0, 0])
        #expect(processors.map { $0[1] } == [0, 1, 2, 3])
        #expect(processors.map { $0[3] } == [3, 1, 1, 1])
        #expect(MPTable.bytes(cpus: MPTable.maximumCPUs, at: Layout.ebda).count <= 1024)
    }

    /// The descriptors the boot GDT holds (Intel SDM 3.4.5).
    @Test func gdtDescriptorsAreFlatFourGiBSegments() {
        let pvh = BootCPUState.pvh(entry: 0x10_0000, startInfo: 0x6000)
        #expect(pvh.code.descriptor == 0x00CF_9B00_0000_FFFF)
        #expect(pvh.data.descriptor == 0x00CF_9300_0000_FFFF)
        #expect(pvh.task.descriptor == 0x0000_8B00_0000_0067)
        #expect(pvh.code.byteLimit == 0xFFFF_FFFF && pvh.task.byteLimit == 0x67)
        let linux = BootCPUState.linux64(entry: 0x10_0200, bootParams: 0x7000)
        #expect(linux.code.descriptor == 0x00AF_9B00_0000_FFFF)
        #expect(Array(linux.gdtBytes[0x10..<0x18]) == [0xFF, 0xFF, 0, 0, 0, 0x9B, 0xAF, 0])
    }

    @Test func identityPageTablesMapTheFirstFourGiBWithLargePages() throws {
        let tables = LittleEndianBytes(bytes: BootCPUState.identityPageTables(), what: "tables")
        #expect(try tables.u64(0) == 0xA003)                       // PML4[0] -> PDPT
        #expect(try tables.u64(0x1000 + 3 * 8) == 0xE003)          // PDPT[3] -> PD 3
        #expect(try tables.u64(0x2000) == 0x83)                    // 0 -> 0, 2 MiB
        #expect(try tables.u64(0x2000 + 511 * 8) == 0x3FE0_0083)   // last entry of the first GiB
        #expect(try tables.u64(0x5000 + 511 * 8) == 0xFFE0_0083)   // the last 2 MiB below 4 GiB
    }
}
