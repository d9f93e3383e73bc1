import GuestMemfd
import LaunchMeasurement
import Populate

/// What to boot: the images, the command line and the machine's size.
public struct BootRequest: Sendable {
    public var kernel: ImageSource
    public var initrd: ImageSource?
    public var commandLine: String = ""
    /// Guest RAM in bytes, a multiple of 4 KiB and at least `Layout.minimumMemory`.
    public var memorySize: UInt64
    public var cpus: Int = 1
    /// Lay the guest out for SEV-SNP: the CPUID, secrets and CC blob pages
    /// (`SNPGuestPages`), reserved in the memory map, and for a bzImage the
    /// blob's address in boot_params.
    public var snp = false

    public init(kernel: ImageSource, initrd: ImageSource? = nil, commandLine: String = "", memorySize: UInt64,
                cpus: Int = 1, snp: Bool = false) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.memorySize = memorySize
        self.cpus = cpus
        self.snp = snp
    }
}

/// The boot protocols snpvmm speaks.
public enum KernelFormat: String, Sendable {
    case pvh = "ELF64 kernel with a Xen PVH entry"
    case bzImage = "Linux bzImage, 64-bit boot protocol"
}

/// Everything a platform needs to start the guest: the memory contents as
/// a launch plan, and the boot vCPU's initial state.
public struct BootSetup: Sendable {
    public var format: KernelFormat
    /// The regions to populate, in order; everything else in RAM starts as zeros.
    public var plan: LaunchPlan
    public var cpu: BootCPUState
    /// The memory map the guest was given (e820 or the PVH memory map).
    public var memoryMap: [MemoryMapEntry]
}

/// Recognises the kernel's format and lays out the guest: kernel, initrd,
/// command line, boot tables and the boot vCPU's state. It touches no KVM
/// object, so any platform (plain, SNP, TDX, CCA) can populate the result.
///
/// The shape follows kvmtool's `x86/kvm.c` loader: try one format, then the
/// next, and give up with an error naming what the file is.
public enum Loader {
    public static func load(_ request: BootRequest) throws(ImageError) -> BootSetup {
        guard request.memorySize >= Layout.minimumMemory, request.memorySize % pageSize == 0 else {
            throw .unsupportedRequest("guest memory must be a multiple of 4 KiB and at least \(Layout.minimumMemory >> 20) MiB")
        }
        guard (1...MPTable.maximumCPUs).contains(request.cpus) else {
            throw .unsupportedRequest("the guest can have 1 to \(MPTable.maximumCPUs) vCPUs")
        }
        if let initrd = request.initrd, initrd.size == 0 {
            throw .empty(role: "initrd", path: initrd.path ?? "")
        }
        let kernel = request.kernel
        guard kernel.size > 0 else { throw .empty(role: "kernel", path: kernel.path ?? "") }
        let magic = try kernel.read(offset: 0, count: Int(min(kernel.size, 4)), "magic number")
        if magic == ELFKernel.magic {
            return try loadPVH(ELFKernel(kernel), request)
        }
        if BzImage.matches(kernel) {
            return try loadBzImage(BzImage(kernel), request)
        }
        throw .unknownFormat(magic: magic)
    }

    // MARK: PVH

    public static func loadPVH(_ elf: ELFKernel, _ request: BootRequest) throws(ImageError) -> BootSetup {
        guard let entry = elf.pvhEntry else { throw .noPVHEntryNote }
        guard elf.segments.contains(where: { UInt64(entry) >= $0.physicalAddress && UInt64(entry) < $0.physicalEnd }) else {
            throw .badPVHNote("the entry point \(Hex.number(entry)) is not inside any loadable segment")
        }
        let ram = Layout.ramRanges(memorySize: request.memorySize)
        for segment in elf.segments {
            let inside = ram.contains { segment.physicalAddress >= $0.start && segment.physicalEnd <= $0.start + $0.size }
            guard inside else {
                throw .doesNotFit(what: "kernel segment \(segment.index) [\(Hex.number(segment.physicalAddress)), \(Hex.number(segment.physicalEnd)))",
                                  size: segment.memorySize, detail: "it is outside the guest's RAM, \(describe(ram))")
            }
        }
        let commandLine = try commandLineRegion(request.commandLine, limit: Int(Layout.commandLineCapacity) - 1)
        let kernelRegions = try segmentRegions(elf, source: request.kernel)
        let kernelEnd = elf.segments.filter { $0.physicalAddress < ram[0].size }.map(\.physicalEnd).max() ?? Layout.highMemory
        let memoryMap = Layout.memoryMap(memorySize: request.memorySize, snp: request.snp)

        var modules: [PVH.Module] = []
        var initrdRegion: PlanRegion?
        if let initrd = request.initrd {
            let range = try placeInitrd(size: initrd.size, above: max(kernelEnd, Layout.highMemory),
                                        below: ram[0].size, rule: "the top of RAM below 4 GiB")
            modules.append(PVH.Module(address: range.start.rawValue, size: initrd.size))
            initrdRegion = PlanRegion(name: "initrd", range: range,
                                      contents: try initrd.contents(offset: 0, length: initrd.size, "initrd"))
        }
        let cpu = BootCPUState.pvh(entry: entry, startInfo: Layout.pvhStartInfo)
        var regions = commonRegions(cpu: cpu, cpus: request.cpus)
        regions.append(PlanRegion(name: "hvm_start_info", range: GuestRange(start: Layout.pvhStartInfo, size: pageSize),
                                  contents: .bytes(PVH.startInfoPage(commandLine: Layout.commandLine, modules: modules,
                                                                     memoryMap: memoryMap))))
        regions.append(commandLine)
        regions += kernelRegions
        if let initrdRegion { regions.append(initrdRegion) }
        if request.snp { regions += SNPGuestPages.regions() }
        return try validated(BootSetup(format: .pvh, plan: LaunchPlan(regions: regions), cpu: cpu, memoryMap: memoryMap),
                             request)
    }

    /// The most bytes `segmentRegions` assembles in memory for segments that share pages.
    static let maximumAssembledBytes: UInt64 = 64 << 20

    /// One region per run of `PT_LOAD` segments whose pages touch. A
    /// page-aligned segment alone in its pages is copied straight from the
    /// file; segments that share a page, or start inside one, are assembled
    /// in memory so that each page is written once. Bytes past `p_filesz`
    /// (the BSS) are left to the region's zero fill.
    static func segmentRegions(_ elf: ELFKernel, source: ImageSource) throws(ImageError) -> [PlanRegion] {
        let sorted = elf.segments.sorted { $0.physicalAddress < $1.physicalAddress }
        var groups: [[ELFKernel.Segment]] = []
        for segment in sorted {
            if let last = groups.last?.last, let lastEnd = alignUp(last.physicalEnd),
               segment.physicalAddress < lastEnd {
                guard segment.physicalAddress >= last.physicalEnd else {
                    throw .badSegment(index: segment.index,
                                      reason: "it overlaps program header \(last.index) at \(Hex.number(segment.physicalAddress))")
                }
                groups[groups.count - 1].append(segment)
            } else {
                groups.append([segment])
            }
        }
        var regions: [PlanRegion] = []
        for group in groups {
            let start = group[0].physicalAddress & ~(pageSize - 1)
            guard let end = alignUp(group.last!.physicalEnd) else {
                throw .badSegment(index: group.last!.index, reason: "it ends in the last page of the address space")
            }
            let name = group.count == 1 ? "kernel segment \(group[0].index)"
                : "kernel segments \(group.map { String($0.index) }.joined(separator: ","))"
            let range = GuestRange(start: start, size: end - start)
            if group.count == 1, group[0].physicalAddress == start {
                let segment = group[0]
                let contents: RegionContents = segment.fileSize == 0 ? .zeros
                    : try source.contents(offset: segment.fileOffset, length: segment.fileSize, "program header \(segment.index)")
                regions.append(PlanRegion(name: name, range: range, contents: contents))
                continue
            }
            let filled = group.map { $0.physicalAddress - start + $0.fileSize }.max() ?? 0
            guard filled <= maximumAssembledBytes else {
                throw .badSegment(index: group.last!.index,
                                  reason: "it shares a page with program header \(group[0].index), \(Hex.number(filled)) bytes after its start; snpvmm assembles shared pages only up to 64 MiB")
            }
            var bytes = [UInt8](repeating: 0, count: Int(filled))
            for segment in group where segment.fileSize > 0 {
                let data = try source.read(offset: segment.fileOffset, count: Int(segment.fileSize),
                                           "program header \(segment.index)")
                let at = Int(segment.physicalAddress - start)
                bytes.replaceSubrange(at..<at + data.count, with: data)
            }
            regions.append(PlanRegion(name: name, range: range, contents: .bytes(bytes)))
        }
        return regions
    }

    // MARK: bzImage

    public static func loadBzImage(_ image: BzImage, _ request: BootRequest) throws(ImageError) -> BootSetup {
        let ram = Layout.ramRanges(memorySize: request.memorySize)
        let lowEnd = ram[0].size
        let load = Layout.highMemory
        let (loadEnd, loadOverflow) = load.addingReportingOverflow(image.kernelSize)
        guard !loadOverflow, let kernelEnd = alignUp(loadEnd) else {
            throw .unsupportedBzImage("it is too large to load at \(Hex.number(load))")
        }
        guard let run = image.runAddress(loadAddress: load),
              !run.addingReportingOverflow(UInt64(image.initSize)).overflow else {
            throw .unsupportedBzImage("its pref_address or kernel_alignment puts it beyond the address space")
        }
        let initEnd = run + UInt64(image.initSize)
        let needed = max(initEnd, kernelEnd)
        guard needed <= lowEnd else {
            throw .doesNotFit(what: "kernel", size: nil,
                              detail: "it loads at \(Hex.number(load)) and needs memory up to \(Hex.number(needed)) (init_size \(Hex.number(image.initSize)) from \(Hex.number(run))), but RAM below 4 GiB ends at \(Hex.number(lowEnd))")
        }
        let commandLine = try commandLineRegion(request.commandLine,
                                                limit: min(image.commandLineLimit, Int(Layout.commandLineCapacity) - 1))
        let memoryMap = Layout.memoryMap(memorySize: request.memorySize, snp: request.snp)

        var initrd: (address: UInt64, size: UInt64)?
        var initrdRegion: PlanRegion?
        if let file = request.initrd {
            let limit = min(lowEnd, UInt64(image.initrdAddressMax) + 1)
            let range = try placeInitrd(size: file.size, above: alignUp(needed) ?? needed, below: limit,
                                        rule: "initrd_addr_max \(Hex.number(image.initrdAddressMax)) and the top of RAM below 4 GiB")
            initrd = (range.start.rawValue, file.size)
            initrdRegion = PlanRegion(name: "initrd", range: range,
                                      contents: try file.contents(offset: 0, length: file.size, "initrd"))
        }
        let cpu = BootCPUState.linux64(entry: load + BzImage.entryOffset64, bootParams: Layout.zeroPage)
        var regions = commonRegions(cpu: cpu, cpus: request.cpus)
        let tables = BootCPUState.identityPageTables()
        regions.append(PlanRegion(name: "identity page tables",
                                  range: GuestRange(start: Layout.pml4, size: UInt64(tables.count)), contents: .bytes(tables)))
        regions.append(PlanRegion(name: "boot_params", range: GuestRange(start: Layout.zeroPage, size: pageSize),
                                  contents: .bytes(image.bootParams(loadAddress: load, commandLine: Layout.commandLine,
                                                                    initrd: initrd, memoryMap: memoryMap,
                                                                    ccBlob: request.snp ? Layout.snpCCBlob : nil))))
        regions.append(commandLine)
        regions.append(PlanRegion(name: "kernel", range: GuestRange(start: load, size: kernelEnd - load),
                                  contents: try request.kernel.contents(offset: image.kernelOffset, length: image.kernelSize,
                                                                        "protected-mode kernel")))
        if let initrdRegion { regions.append(initrdRegion) }
        if request.snp { regions += SNPGuestPages.regions() }
        return try validated(BootSetup(format: .bzImage, plan: LaunchPlan(regions: regions), cpu: cpu,
                                       memoryMap: memoryMap), request)
    }

    // MARK: Shared pieces

    /// Checks the plan against the guest's RAM before anything is created,
    /// so that an overlap (a kernel segment on the boot tables, say) is a
    /// usage error rather than a half-built VM.
    static func validated(_ setup: BootSetup, _ request: BootRequest) throws(ImageError) -> BootSetup {
        let ram = Layout.ramRanges(memorySize: request.memorySize).map { GuestRange(start: $0.start, size: $0.size) }
        do {
            try setup.plan.validate(memory: ram)
        } catch {
            throw .plan(error)
        }
        return setup
    }

    /// The GDT page and the MP table page, which every format gets.
    static func commonRegions(cpu: BootCPUState, cpus: Int) -> [PlanRegion] {
        let gdt = [UInt8](repeating: 0, count: Int(Layout.gdt - Layout.gdtPage)) + cpu.gdtBytes
        let mp = [UInt8](repeating: 0, count: Int(Layout.ebda - Layout.ebdaPage)) + MPTable.bytes(cpus: cpus, at: Layout.ebda)
        return [
            PlanRegion(name: "boot GDT", range: GuestRange(start: Layout.gdtPage, size: pageSize), contents: .bytes(gdt)),
            PlanRegion(name: "MP table", range: GuestRange(start: Layout.ebdaPage, size: pageSize), contents: .bytes(mp)),
        ]
    }

    /// The NUL-terminated command line at `Layout.commandLine`.
    static func commandLineRegion(_ text: String, limit: Int) throws(ImageError) -> PlanRegion {
        let bytes = Array(text.utf8)
        guard bytes.count <= limit else { throw .commandLineTooLong(length: bytes.count, limit: limit) }
        let size = alignUp(UInt64(bytes.count + 1))!
        return PlanRegion(name: "command line", range: GuestRange(start: Layout.commandLine, size: size),
                          contents: .bytes(bytes + [0]))
    }

    /// The highest page-aligned range of `size` bytes that ends by `below`
    /// and starts at or above `above`, as QEMU and Firecracker place initrds.
    static func placeInitrd(size: UInt64, above: UInt64, below: UInt64, rule: String) throws(ImageError) -> GuestRange {
        guard let rounded = alignUp(size), rounded <= below, (below - rounded) & ~(pageSize - 1) >= above else {
            throw .doesNotFit(what: "initrd", size: size,
                              detail: "it must lie between the kernel's end at \(Hex.number(above)) and \(Hex.number(below)) (\(rule))")
        }
        let start = (below - rounded) & ~(pageSize - 1)
        return GuestRange(start: start, size: rounded)
    }

    static func alignUp(_ value: UInt64) -> UInt64? {
        let (sum, overflow) = value.addingReportingOverflow(pageSize - 1)
        return overflow ? nil : sum & ~(pageSize - 1)
    }

    static func describe(_ ram: [(start: UInt64, size: UInt64)]) -> String {
        ram.map { "[\(Hex.number($0.start)), \(Hex.number($0.start + $0.size)))" }.joined(separator: " and ")
    }
}
