import Fixtures
import Foundation
import GuestMemfd
import LaunchMeasurement
@testable import Populate
import VMMCore
import Testing

/// Hostile and broken input, one named case a row: command lines and files
/// given to `snpvmm run`, kernel images given to the loaders, firmware given
/// to the OVMF and TDVF parsers and the SNP measurement, and launch plans
/// given to the population engine over the fake KVM. Each must be refused
/// with one line that names what is wrong (the flag, the file, the offset,
/// the field, the region), as exit status 2 from the CLI or a typed error
/// from the library, and no guest may start.
///
/// Bad images are built here from the good fixtures (cut short, bytes
/// patched), so the table shows exactly what each case damages.
@Suite struct BadInputTests {
    // MARK: The command line

    /// A `snpvmm run` command line and what its one error line must name.
    struct CLICase: CustomTestStringConvertible, Sendable {
        let name: String
        let arguments: @Sendable (TemporaryDirectory, String) throws -> [String]
        let mentions: @Sendable (TemporaryDirectory) -> [String]
        var testDescription: String { name }

        init(_ name: String, _ arguments: @escaping @Sendable (TemporaryDirectory, String) throws -> [String],
             mentions: @escaping @Sendable (TemporaryDirectory) -> [String]) {
            self.name = name
            self.arguments = arguments
            self.mentions = mentions
        }

        init(_ name: String, _ arguments: @escaping @Sendable (TemporaryDirectory, String) throws -> [String],
             mentions: [String]) {
            self.init(name, arguments, mentions: { _ in mentions })
        }
    }

    static let cliCases: [CLICase] = [
        CLICase("single-dash flag", { _, k in ["-kernel", k] }, mentions: ["unknown option '-kernel'"]),
        CLICase("bare file name without a flag", { _, k in [k] }, mentions: ["unexpected argument '\(Fixtures.pvhCheckPath)'"]),
        CLICase("misspelt flag", { _, k in ["--kernel", k, "--mem", "64M"] }, mentions: ["unknown option '--mem'"]),
        CLICase("memory without a value", { _, k in ["--kernel", k, "--memory"] }, mentions: ["--memory needs a value"]),
        CLICase("empty memory size", { _, k in ["--kernel", k, "--memory="] }, mentions: ["--memory ''", "is not a size"]),
        CLICase("negative memory size", { _, k in ["--kernel", k, "--memory", "-64M"] },
                mentions: ["--memory '-64M'", "is not a size"]),
        CLICase("memory size of zero", { _, k in ["--kernel", k, "--memory", "0"] },
                mentions: ["--memory '0'", "less than the 2 MiB"]),
        CLICase("memory size past 2^64", { _, k in ["--kernel", k, "--memory", "99999999999999999999999"] },
                mentions: ["--memory '99999999999999999999999'", "is not a size"]),
        CLICase("memory size that overflows with its unit", { _, k in ["--kernel", k, "--memory", "17179869184T"] },
                mentions: ["--memory '17179869184T'", "more than the 1 TiB"]),
        CLICase("memory size in bytes without a unit", { _, k in ["--kernel", k, "--memory", "64B"] },
                mentions: ["--memory '64B'", "is not a size"]),
        CLICase("memory size in non-ASCII digits", { _, k in ["--kernel", k, "--memory", "６４M"] },
                mentions: ["--memory '６４M'", "is not a size"]),
        CLICase("too many vCPUs", { _, k in ["--kernel", k, "--cpus", "33"] }, mentions: ["--cpus '33'", "1 to 32"]),
        CLICase("vCPUs not a number", { _, k in ["--kernel", k, "--cpus", "two"] }, mentions: ["--cpus 'two'"]),
        CLICase("value on a switch", { _, k in ["--kernel", k, "--platform", "snp", "--emulate=yes"] },
                mentions: ["--emulate takes no value"]),
        CLICase("platform without a value", { _, k in ["--kernel", k, "--platform"] }, mentions: ["--platform needs a value"]),
        CLICase("kernel path through a regular file", { d, k in ["--kernel", try d.write("plain", [1]) + "/vmlinuz"] },
                mentions: { d in ["kernel '\(d.path)/plain/vmlinuz'", "Not a directory"] }),
        CLICase("kernel path that loops", { d, _ in
            try Self.symlink(d.path + "/loop", to: d.path + "/loop")
            return ["--kernel", d.path + "/loop"]
        }, mentions: { d in ["kernel '\(d.path)/loop'", "Too many levels of symbolic links"] }),
        CLICase("kernel path longer than PATH_MAX", { d, _ in ["--kernel", d.path + "/" + String(repeating: "a/", count: 2100)] },
                mentions: ["cannot read kernel", "File name too long"]),
        CLICase("kernel is a character device", { _, _ in ["--kernel", "/dev/zero"] },
                mentions: ["kernel '/dev/zero'", "not a regular file"]),
        CLICase("kernel is a FIFO with no writer", { d, _ in
            try Self.fifo(d.path + "/fifo")
            return ["--kernel", d.path + "/fifo"]
        }, mentions: { d in ["kernel '\(d.path)/fifo'", "not a regular file"] }),
        CLICase("initrd is a directory", { d, k in ["--kernel", k, "--initrd", d.path] },
                mentions: { d in ["initrd '\(d.path)'", "not a regular file"] }),
        CLICase("empty initrd", { d, k in ["--kernel", k, "--initrd", try d.write("initrd", [])] },
                mentions: { d in ["initrd '\(d.path)/initrd' is empty"] }),
        CLICase("ELF kernel cut inside its program headers", { d, _ in
            ["--kernel", try d.write("cut.elf", Array(try Self.pvhCheck().prefix(100)))]
        }, mentions: { d in ["kernel '\(d.path)/cut.elf'", "program header table at offset 0x40", "100-byte file"] }),
        CLICase("ELF kernel without the PVH note", { d, _ in
            var elf = ELFBuilder.pvh([0xF4]); elf.pvhEntry = nil
            return ["--kernel", try d.write("nonote.elf", elf.build())]
        }, mentions: { d in ["kernel '\(d.path)/nonote.elf'", "without a Xen PVH entry note"] }),
        CLICase("bzImage cut inside its setup header", { d, _ in
            ["--kernel", try d.write("cut.bz", Array(BzImageBuilder().build().prefix(0x220)))]
        }, mentions: { d in ["kernel '\(d.path)/cut.bz'", "setup header at offset 0x1f1", "544-byte file"] }),
        CLICase("bzImage with boot protocol 2.10", { d, _ in
            var image = BzImageBuilder(); image.version = 0x020A
            return ["--kernel", try d.write("old.bz", image.build())]
        }, mentions: { d in ["kernel '\(d.path)/old.bz'", "boot protocol 2.10 predates 2.12"] }),
        CLICase("command line longer than the bzImage accepts", { d, _ in
            var image = BzImageBuilder(); image.commandLineSize = 15
            return ["--kernel", try d.write("short-cmdline.bz", image.build()), "--append", "console=ttyS0 quiet"]
        }, mentions: ["command line is 19 bytes", "at most 15"]),
        CLICase("initrd above the bzImage's initrd_addr_max", { d, _ in
            var image = BzImageBuilder(); image.initrdAddressMax = 0x15F_FFFF
            return ["--kernel", try d.write("low-initrd.bz", image.build()),
                    "--initrd", try d.write("initrd", [UInt8](repeating: 7, count: 4 << 20))]
        }, mentions: ["initrd (4194304 bytes) does not fit", "initrd_addr_max 0x15fffff"]),
    ]

    @Test(arguments: cliCases)
    func badCommandLineIsRefusedWithOneLineStatusTwoAndNoGuestOutput(_ bad: CLICase) throws {
        let directory = try TemporaryDirectory()
        let arguments = try bad.arguments(directory, Fixtures.pvhCheckPath)
        let outcome = try Snpvmm.run(["run"] + arguments)
        #expect(outcome.status == 2, "\(outcome)")
        // The serial console is standard output: nothing on it means no guest ran.
        #expect(outcome.stdout.isEmpty, "\(outcome)")
        #expect(outcome.stderr.hasPrefix("snpvmm: run: ") && outcome.stderr.hasSuffix("\n"), "\(outcome)")
        #expect(outcome.stderr.filter { $0 == "\n" }.count == 1, "not one line: \(outcome.stderr.debugDescription)")
        for mention in bad.mentions(directory) {
            #expect(outcome.stderr.contains(mention), "the line does not name \(mention.debugDescription): \(outcome.stderr)")
        }
    }

    /// `snpvmm measure` takes any 64-bit --vcpus, as sev-snp-measure does;
    /// one VMSA per vCPU made 2^62 of them a trap, not an error.
    @Test func measureRefusesMoreVCPUsThanKVMAllowsWithOneLine() throws {
        let outcome = try Snpvmm.run(["measure", "--mode", "snp", "--vcpus", "4611686018427387904", "--vcpu-type", "EPYC-Milan",
                                      "--ovmf", Fixtures.measurementDirectory + "/" + MeasurementVectors.bookworm])
        #expect(outcome == Snpvmm.Outcome(
            stdout: "",
            stderr: "snpvmm measure: error: argument --vcpus: 4611686018427387904 is more than the 4096 vCPUs a KVM guest can have\n",
            status: 2))
    }

    // MARK: Loaders and firmware

    /// Bytes given to a parser or loader, the typed error they must give,
    /// and what its description must name.
    struct LibraryCase: CustomTestStringConvertible, Sendable {
        let name: String
        /// Runs the input; the description of the error thrown (nil when the
        /// input was accepted) and whether the error is the expected one.
        let attempt: @Sendable () -> (description: String?, expected: Bool, error: String)
        let mentions: [String]
        var testDescription: String { name }

        init<E: Error & Equatable & CustomStringConvertible>(
            _ name: String, _ expected: E, mentions: [String], _ body: @escaping @Sendable () throws(E) -> Void
        ) {
            self.name = name
            self.mentions = mentions
            attempt = {
                do throws(E) {
                    try body()
                    return (nil, false, "")
                } catch {
                    return (error.description, error == expected, "\(error)")
                }
            }
        }
    }

    static let libraryCases: [LibraryCase] = elfCases + bzImageCases + ovmfCases + tdvfCases

    @Test(arguments: libraryCases)
    func badImageGivesATypedErrorWithOneLineNamingTheProblem(_ bad: LibraryCase) {
        let outcome = bad.attempt()
        guard let description = outcome.description else {
            Issue.record("the input was accepted")
            return
        }
        #expect(outcome.expected, "unexpected error: \(outcome.error)")
        #expect(!description.contains("\n"), "not one line: \(description.debugDescription)")
        for mention in bad.mentions {
            #expect(description.contains(mention), "\(description.debugDescription) does not name \(mention.debugDescription)")
        }
    }

    /// Lays out a guest from in-memory images; the loaders touch no KVM
    /// object, so a refusal here is a refusal before any VM exists.
    static func load(_ kernel: [UInt8], initrd: [UInt8]? = nil, append: String = "",
                     memory: UInt64 = 256 << 20) throws(ImageError) {
        _ = try Loader.load(BootRequest(kernel: ImageSource(bytes: kernel), initrd: initrd.map { ImageSource(bytes: $0) },
                                        commandLine: append, memorySize: memory))
    }

    static let elfCases: [LibraryCase] = {
        let good = ELFBuilder.pvh([0xF4])
        // ELFBuilder.pvh: the ELF header, two program headers (PT_LOAD, PT_NOTE),
        // one code byte at 176, then the note at 177.
        let noteOffset = 64 + 2 * 56 + 1
        let unknownClass = elf { $0.elfClass = 0 }, arm = elf { $0.machine = 40 }, relocatable = elf { $0.type = 1 }
        let noNote = elf { $0.pvhEntry = nil }, entryOutside = elf { $0.pvhEntry = 0x30_0000 }
        let overlapping = ELFBuilder(segments: [.init(physicalAddress: 0x10_0000, data: [UInt8](repeating: 0x90, count: 0x2000)),
                                                .init(physicalAddress: 0x10_1000, data: [0xF4])], pvhEntry: 0x10_0000)
        return [
            LibraryCase("ELF header cut short", ImageError.truncated(what: "ELF header", offset: 0, count: 64, size: 40),
                        mentions: ["ELF header", "40-byte file"]) { () throws(ImageError) in
                try load(Array(pvhCheckOrEmpty().prefix(40)))
            },
            LibraryCase("ELF program header table cut short",
                        ImageError.truncated(what: "program header table", offset: 64, count: 3 * 56, size: 200),
                        mentions: ["program header table at offset 0x40", "200-byte file"]) { () throws(ImageError) in
                try load(Array(pvhCheckOrEmpty().prefix(200)))
            },
            LibraryCase("ELF of unknown class", ImageError.unsupportedELF("an ELF of unknown class 0"),
                        mentions: ["unknown class 0"]) { () throws(ImageError) in try load(unknownClass) },
            LibraryCase("ELF for 32-bit ARM", ImageError.unsupportedELF("an ELF for machine 40, not x86-64 (62)"),
                        mentions: ["machine 40"]) { () throws(ImageError) in try load(arm) },
            LibraryCase("big-endian ELF", ImageError.unsupportedELF("a big-endian ELF"),
                        mentions: ["big-endian"]) { () throws(ImageError) in try load(patched(good.build(), at: 5, [2])) },
            LibraryCase("relocatable object", ImageError.unsupportedELF("a relocatable object (ET_REL)"),
                        mentions: ["ET_REL"]) { () throws(ImageError) in try load(relocatable) },
            LibraryCase("program headers of 32 bytes",
                        ImageError.unsupportedELF("an ELF whose program headers are 32 bytes each, not Elf64_Phdr's 56"),
                        mentions: ["32 bytes each"]) { () throws(ImageError) in try load(patched(good.build(), at: 54, [32, 0])) },
            LibraryCase("PT_LOAD file bytes past the end of the file",
                        ImageError.badSegment(index: 0, reason: "its 1 file bytes at offset 0x10000 run past the end of the \(good.build().count)-byte file"),
                        mentions: ["program header 0", "offset 0x10000"]) { () throws(ImageError) in
                try load(patched(good.build(), at: 64 + 8, [0x00, 0x00, 0x01]))
            },
            LibraryCase("PT_LOAD p_filesz above p_memsz", ImageError.badSegment(index: 0, reason: "p_filesz 0x1 exceeds p_memsz 0x0"),
                        mentions: ["program header 0", "p_filesz 0x1"]) { () throws(ImageError) in
                try load(patched(good.build(), at: 64 + 40, [0]))
            },
            LibraryCase("PT_LOAD outside RAM",
                        ImageError.doesNotFit(what: "kernel segment 0 [0x10000000, 0x10000001)", size: 1,
                                              detail: "it is outside the guest's RAM, [0x0, 0x1000000)"),
                        mentions: ["kernel segment 0", "0x10000000"]) { () throws(ImageError) in
                try load(ELFBuilder.pvh([0xF4], at: 0x1000_0000).build(), memory: 16 << 20)
            },
            LibraryCase("PT_LOAD straddling the end of RAM",
                        ImageError.doesNotFit(what: "kernel segment 0 [0xfff000, 0x1001000)", size: 0x2000,
                                              detail: "it is outside the guest's RAM, [0x0, 0x1000000)"),
                        mentions: ["kernel segment 0", "0x1001000"]) { () throws(ImageError) in
                try load(ELFBuilder.pvh([UInt8](repeating: 0xF4, count: 0x2000), at: 0xFF_F000).build(), memory: 16 << 20)
            },
            LibraryCase("PT_LOAD in the MMIO gap below 4 GiB",
                        ImageError.doesNotFit(what: "kernel segment 0 [0xc0000000, 0xc0000001)", size: 1,
                                              detail: "it is outside the guest's RAM, [0x0, 0xc0000000) and [0x100000000, 0x140000000)"),
                        mentions: ["kernel segment 0", "0xc0000000"]) { () throws(ImageError) in
                try load(ELFBuilder.pvh([0xF4], at: 0xC000_0000).build(), memory: 4 << 30)
            },
            LibraryCase("overlapping PT_LOADs", ImageError.badSegment(index: 1, reason: "it overlaps program header 0 at 0x101000"),
                        mentions: ["program header 1", "program header 0", "0x101000"]) { () throws(ImageError) in
                try load(overlapping.build())
            },
            LibraryCase("PT_LOAD over the boot GDT",
                        ImageError.plan(PlanError(index: 4, region: "kernel segment 0", range: GuestRange(start: 0, size: 0x1000),
                                                  reason: .overlaps(other: "boot GDT", otherIndex: 0))),
                        mentions: ["kernel segment 0", "boot GDT"]) { () throws(ImageError) in
                try load(ELFBuilder.pvh([0xF4], at: 0x100).build())
            },
            LibraryCase("no PVH note", ImageError.noPVHEntryNote, mentions: ["XEN_ELFNOTE_PHYS32_ENTRY"]) { () throws(ImageError) in
                try load(noNote)
            },
            LibraryCase("PVH entry outside every segment",
                        ImageError.badPVHNote("the entry point 0x300000 is not inside any loadable segment"),
                        mentions: ["0x300000"]) { () throws(ImageError) in try load(entryOutside) },
            LibraryCase("PVH note name past its segment", ImageError.badPVHNote("a note's name runs past its segment"),
                        mentions: ["name runs past"]) { () throws(ImageError) in
                try load(patched(good.build(), at: noteOffset, [0x00, 0x01]))
            },
            LibraryCase("initrd larger than RAM",
                        ImageError.doesNotFit(what: "initrd", size: 8 << 20,
                                              detail: "it must lie between the kernel's end at 0x100001 and 0x800000 (the top of RAM below 4 GiB)"),
                        mentions: ["initrd (8388608 bytes)", "0x800000"]) { () throws(ImageError) in
                try load(good.build(), initrd: [UInt8](repeating: 1, count: 8 << 20), memory: 8 << 20)
            },
            LibraryCase("unknown format", ImageError.unknownFormat(magic: [0x4D, 0x5A, 0x90, 0x00]),
                        mentions: ["4d 5a 90 00"]) { () throws(ImageError) in
                try load([0x4D, 0x5A, 0x90, 0x00] + [UInt8](repeating: 0, count: 60))
            },
            LibraryCase("three bytes of ELF magic", ImageError.unknownFormat(magic: [0x7F, 0x45, 0x4C]),
                        mentions: ["7f 45 4c"]) { () throws(ImageError) in try load([0x7F, 0x45, 0x4C]) },
        ]
    }()

    static let bzImageCases: [LibraryCase] = {
        let good = BzImageBuilder().build()
        return [
            LibraryCase("bzImage with boot protocol 2.11",
                        ImageError.unsupportedBzImage("boot protocol 2.11 predates 2.12, the first with a 64-bit entry"),
                        mentions: ["2.11"]) { () throws(ImageError) in try load(image { $0.version = 0x020B }) },
            LibraryCase("zImage", ImageError.unsupportedBzImage("it is a zImage (LOADED_HIGH clear in loadflags)"),
                        mentions: ["LOADED_HIGH"]) { () throws(ImageError) in try load(image { $0.loadFlags = 0 }) },
            LibraryCase("bzImage without the 64-bit entry",
                        ImageError.unsupportedBzImage("it has no 64-bit entry point (XLF_KERNEL_64 clear in xloadflags)"),
                        mentions: ["XLF_KERNEL_64"]) { () throws(ImageError) in try load(image { $0.xloadflags = 0x7E }) },
            LibraryCase("setup header shorter than its protocol",
                        ImageError.unsupportedBzImage("its 49-byte setup header ends before xloadflags at 0x236"),
                        mentions: ["xloadflags at 0x236"]) { () throws(ImageError) in try load(image { $0.headerLength = 0x20 }) },
            LibraryCase("setup header cut short by the file",
                        ImageError.truncated(what: "setup header", offset: 0x1F1, count: 0x7B, size: 0x220),
                        mentions: ["setup header at offset 0x1f1", "544-byte file"]) { () throws(ImageError) in
                try load(Array(good.prefix(0x220)))
            },
            LibraryCase("setup_sects past the end of the file",
                        ImageError.truncated(what: "protected-mode kernel", offset: 65 * 512, count: 1, size: UInt64(good.count)),
                        mentions: ["protected-mode kernel at offset 0x8200"]) { () throws(ImageError) in
                try load(patched(good, at: 0x1F1, [64]))
            },
            LibraryCase("init_size larger than RAM",
                        ImageError.doesNotFit(what: "kernel", size: nil,
                                              detail: "it loads at 0x100000 and needs memory up to 0x11000000 (init_size 0x10000000 from 0x1000000), but RAM below 4 GiB ends at 0x4000000"),
                        mentions: ["init_size 0x10000000", "0x4000000"]) { () throws(ImageError) in
                try load(image { $0.initSize = 0x1000_0000 }, memory: 64 << 20)
            },
            LibraryCase("pref_address at the top of the address space",
                        ImageError.unsupportedBzImage("its pref_address or kernel_alignment puts it beyond the address space"),
                        mentions: ["pref_address"]) { () throws(ImageError) in
                try load(image { $0.relocatable = 0; $0.preferredAddress = 0xFFFF_FFFF_FFFF_F000 })
            },
            LibraryCase("initrd above initrd_addr_max",
                        ImageError.doesNotFit(what: "initrd", size: 4 << 20,
                                              detail: "it must lie between the kernel's end at 0x1400000 and 0x1600000 (initrd_addr_max 0x15fffff and the top of RAM below 4 GiB)"),
                        mentions: ["initrd (4194304 bytes)", "initrd_addr_max 0x15fffff"]) { () throws(ImageError) in
                try load(image { $0.initrdAddressMax = 0x15F_FFFF }, initrd: [UInt8](repeating: 1, count: 4 << 20))
            },
            LibraryCase("command line longer than cmdline_size", ImageError.commandLineTooLong(length: 16, limit: 15),
                        mentions: ["16 bytes", "at most 15"]) { () throws(ImageError) in
                try load(image { $0.commandLineSize = 15 }, append: String(repeating: "x", count: 16))
            },
        ]
    }()

    // Offsets in Debian bookworm's 2 MiB OVMF image (Tests/Fixtures/Measurement/OVMF).
    static let footerSize = 0x1F_FFCE, resetBlockEntry = 0x1F_FFBC, resetBlockData = 0x1F_FFB8
    static let secondEntry = 0x1F_FFA6, hashTableEntry = 0x1F_FF8C
    static let sevMetadataOffset = 0x1F_FF6E, tdxMetadataOffset = 0x1F_FF58
    static let sevMetadata = 0x1F_FAD4, tdvfMetadata = 0x1F_F7C0
    static let imageSize = 0x20_0000

    /// The one-byte PVH kernel of `ELFBuilder.pvh` with one change.
    static func elf(_ change: (inout ELFBuilder) -> Void) -> [UInt8] {
        var builder = ELFBuilder.pvh([0xF4])
        change(&builder)
        return builder.build()
    }

    /// A bzImage from `BzImageBuilder` with one change.
    static func image(_ change: (inout BzImageBuilder) -> Void) -> [UInt8] {
        var builder = BzImageBuilder()
        change(&builder)
        return builder.build()
    }

    /// The SNP launch updates and VMSAs for an OVMF image, whose footer table must parse.
    static func snpSteps(_ bytes: [UInt8], vcpus: Int = 1) throws(SNPMeasurementError) {
        let image: OVMFImage
        do { image = try OVMFImage(bytes: bytes) } catch { Issue.record("the footer table should parse: \(error)"); return }
        let measurement = SNPGuestMeasurement(vcpus: vcpus, vcpuSignature: 0xA00F11)
        _ = try measurement.launchSteps(for: image)
        _ = try measurement.vmsaPages(for: image)
    }

    static func tdvf(_ bytes: [UInt8]) throws(TDVFError) { _ = try TDVFImage(bytes: bytes) }

    /// The offset of `field` in TDVF metadata section `index` of bookworm's image.
    static func section(_ index: Int, _ field: Int) -> Int { tdvfMetadata + 16 + 32 * index + field }

    static let ovmfCases: [LibraryCase] = {
        let resetBlock = EFIGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
        return [
            LibraryCase("OVMF shorter than its footer", OVMFError.imageTooSmall(size: 40),
                        mentions: ["40 bytes"]) { () throws(OVMFError) in _ = try OVMFImage(bytes: Array(bookworm().prefix(40))) },
            LibraryCase("OVMF cut short by one byte", SNPMeasurementError.firmwareNotWholePages(size: imageSize - 1),
                        mentions: ["\(imageSize - 1)"]) { () throws(SNPMeasurementError) in
                try snpSteps(Array(bookworm().prefix(imageSize - 1)))
            },
            LibraryCase("OVMF cut short by a page, losing its footer table", SNPMeasurementError.missingResetBlock,
                        mentions: ["SEV_ES_RESET_BLOCK"]) { () throws(SNPMeasurementError) in
                try snpSteps(Array(bookworm().prefix(imageSize - 4096)))
            },
            LibraryCase("footer table longer than the bytes before it",
                        OVMFError.footerTableTooLarge(tableSize: 0xFFFF - 18, available: 4096 - 50),
                        mentions: ["\(0xFFFF - 18) bytes", "only 4046 bytes"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(Array(bookworm().suffix(4096)), at: 4096 - 50, [0xFF, 0xFF]))
            },
            LibraryCase("GUID table entry shorter than its trailer",
                        OVMFError.entryTooShort(guid: resetBlock, offset: resetBlockEntry, length: 4),
                        mentions: ["\(resetBlock)", "0x1fffbc", "length 4"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: resetBlockEntry, [4, 0]))
            },
            LibraryCase("GUID table entry of length 0",
                        OVMFError.entryTooShort(guid: EFIGUID("4c2eb361-7d9b-4cc3-8081-127c90d3d294"), offset: secondEntry, length: 0),
                        mentions: ["0x1fffa6", "length 0"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: secondEntry, [0, 0]))
            },
            LibraryCase("GUID table entry longer than the table",
                        OVMFError.entryOverrunsTable(guid: EFIGUID("7255371f-3a3b-4b04-927b-1da6efa8d454"), offset: hashTableEntry,
                                                     length: 128, remaining: 70),
                        mentions: ["0x1fff8c", "length 128", "70 bytes"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: hashTableEntry, [128, 0]))
            },
            LibraryCase("SEV metadata offset before the start of the image",
                        OVMFError.metadataOutsideImage(offsetFromEnd: 0x30_0000, imageSize: imageSize),
                        mentions: ["0x300000", "\(imageSize)-byte image"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: sevMetadataOffset, [0, 0, 0x30, 0]))
            },
            LibraryCase("SEV metadata header past the end of the image",
                        OVMFError.metadataOutsideImage(offsetFromEnd: 8, imageSize: imageSize),
                        mentions: ["0x8 from the end"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: sevMetadataOffset, [8, 0, 0, 0]))
            },
            LibraryCase("SEV metadata signature damaged",
                        OVMFError.wrongMetadataSignature(found: Array("BSEV".utf8), offset: sevMetadata),
                        mentions: ["'ASEV'", "0x1ffad4", "42 53 45 56"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: sevMetadata, Array("B".utf8)))
            },
            LibraryCase("SEV metadata version 0", OVMFError.wrongMetadataVersion(0),
                        mentions: ["version: 0"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: sevMetadata + 8, [0]))
            },
            LibraryCase("SEV metadata size too small for its items",
                        OVMFError.metadataItemsOutside(count: 5, headerSize: 16, available: 0x52C - 16),
                        mentions: ["5 items", "size 16"]) { () throws(OVMFError) in
                _ = try OVMFImage(bytes: patched(bookworm(), at: sevMetadata + 4, [16]))
            },
            LibraryCase("SEV metadata section of unknown type",
                        SNPMeasurementError.unknownSectionType(index: 1, section: SEVMetadataSection(gpa: 0x80A000, size: 0x3000,
                                                                                                    type: .init(rawValue: 7))),
                        mentions: ["type 7", "section 1", "0x80a000"]) { () throws(SNPMeasurementError) in
                try snpSteps(patched(bookworm(), at: sevMetadata + 16 + 12 + 8, [7]))
            },
            LibraryCase("SEV metadata section not in whole pages",
                        SNPMeasurementError.sectionNotWholePages(index: 0, section: SEVMetadataSection(gpa: 0x800000, size: 0x9001,
                                                                                                      type: .snpSecMem)),
                        mentions: ["section 0", "size 0x9001"]) { () throws(SNPMeasurementError) in
                try snpSteps(patched(bookworm(), at: sevMetadata + 16 + 4, [0x01]))
            },
            // Before the 4 GiB bound, one SHA-384 per page: thousands of such sections took hours.
            LibraryCase("SEV metadata asking for more than 4 GiB of pages",
                        SNPMeasurementError.metadataTooLarge(pages: 1_048_597, sections: 5),
                        mentions: ["1048597 pages", "4 GiB"]) { () throws(SNPMeasurementError) in
                try snpSteps(patched(bookworm(), at: sevMetadata + 16 + 4, [0x00, 0xF0, 0xFF, 0xFF]))
            },
            // Before the bound, 2^62 vCPUs trapped allocating their VMSAs.
            LibraryCase("2^62 vCPUs", SNPMeasurementError.tooManyVCPUs(1 << 62),
                        mentions: ["\(1 << 62) vCPUs", "4096"]) { () throws(SNPMeasurementError) in
                try snpSteps(bookworm(), vcpus: 1 << 62)
            },
            LibraryCase("AP reset address 0 with two vCPUs", SNPMeasurementError.noAPResetAddress(vcpus: 2),
                        mentions: ["AP reset address 0", "2 vCPUs"]) { () throws(SNPMeasurementError) in
                try snpSteps(patched(bookworm(), at: resetBlockData, [0, 0, 0, 0]), vcpus: 2)
            },
        ]
    }()

    static let tdvfCases: [LibraryCase] = {
        return [
            LibraryCase("TDVF cut to its first half", TDVFError.noMetadataOffset,
                        mentions: ["e47a6535-984a-4798-865e-4685a7bf8ec2"]) { () throws(TDVFError) in
                try tdvf(Array(bookworm().prefix(imageSize / 2)))
            },
            LibraryCase("TDVF with a damaged footer table",
                        TDVFError.footerTable(.entryTooShort(guid: EFIGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e"),
                                                             offset: resetBlockEntry, length: 17)),
                        mentions: ["0x1fffbc", "length 17"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: resetBlockEntry, [17, 0]))
            },
            LibraryCase("TDVF metadata offset before the start of the image",
                        TDVFError.metadataOutsideImage(offsetFromEnd: 0x30_0000, imageSize: imageSize),
                        mentions: ["0x300000", "\(imageSize)-byte image"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: tdxMetadataOffset, [0, 0, 0x30, 0]))
            },
            LibraryCase("TDVF metadata offset inside the last 16 bytes",
                        TDVFError.metadataOutsideImage(offsetFromEnd: 4, imageSize: imageSize),
                        mentions: ["0x4 from the end"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: tdxMetadataOffset, [4, 0, 0, 0]))
            },
            LibraryCase("TDVF signature damaged", TDVFError.wrongSignature(found: Array("TDVX".utf8)),
                        mentions: ["'TDVF'", "54 44 56 58"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: tdvfMetadata + 3, Array("X".utf8)))
            },
            LibraryCase("TDVF metadata length past the end of the image",
                        TDVFError.metadataOutsideImage(offsetFromEnd: 0x840, imageSize: imageSize),
                        mentions: ["0x840"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: tdvfMetadata + 4, [0xFF, 0xFF, 0xFF, 0xFF]))
            },
            LibraryCase("TDVF metadata version 2", TDVFError.wrongVersion(2), mentions: ["version 2"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: tdvfMetadata + 8, [2]))
            },
            LibraryCase("TDVF metadata with one section", TDVFError.tooFewSections(1), mentions: ["(1)"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: tdvfMetadata + 12, [1]))
            },
            LibraryCase("TDVF section count against its length", TDVFError.lengthMismatch(length: 0xD0, sections: 5),
                        mentions: ["0xd0", "5 sections"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: tdvfMetadata + 12, [5]))
            },
            LibraryCase("TDVF section of unknown type", TDVFError.invalidSection(index: 3, reason: "unsupported section type 9"),
                        mentions: ["section 3", "type 9"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: section(3, 24), [9]))
            },
            LibraryCase("TDVF firmware volume past the end of the image",
                        TDVFError.invalidSection(index: 0, reason: "BFV data [0x1f0000, 0x3d0000) runs past the end of the 2097152-byte image"),
                        mentions: ["section 0", "0x3d0000"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: section(0, 0), [0x00, 0x00, 0x1F, 0x00]))
            },
            LibraryCase("TDVF section not page aligned",
                        TDVFError.invalidSection(index: 2, reason: "MemoryAddress 0x810010 is not 4 KiB aligned"),
                        mentions: ["section 2", "0x810010"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: section(2, 8), [0x10]))
            },
            // Found by the tdvf fuzz target: MRTD hashed each of the 8 million pages (a timeout).
            LibraryCase("TDVF TempMem section of 32 GiB", TDVFError.tooManyPages(pages: 480 + 32 + 16 + 0x80_0002),
                        mentions: ["\(480 + 32 + 16 + 0x80_0002) pages", "4 GiB"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: section(3, 16), [0x00, 0x20, 0x00, 0x00, 0x08]))
            },
            LibraryCase("TDVF raw data larger than its memory",
                        TDVFError.invalidSection(index: 1, reason: "RawDataSize 0x40000 exceeds MemoryDataSize 0x20000"),
                        mentions: ["section 1", "RawDataSize 0x40000"]) { () throws(TDVFError) in
                try tdvf(patched(bookworm(), at: section(1, 4), [0x00, 0x00, 0x04, 0x00]))
            },
        ]
    }()

    // MARK: Plans

    /// A launch plan as text, the line its refusal must give, and the
    /// platform it is launched on over the fake KVM.
    struct PlanCase: CustomTestStringConvertible, Sendable {
        let name: String
        let text: @Sendable (TemporaryDirectory) throws -> String
        let mentions: @Sendable (TemporaryDirectory) -> [String]
        var testDescription: String { name }

        init(_ name: String, _ text: @escaping @Sendable (TemporaryDirectory) throws -> String,
             mentions: @escaping @Sendable (TemporaryDirectory) -> [String]) {
            self.name = name
            self.text = text
            self.mentions = mentions
        }

        init(_ name: String, _ text: String, mentions: [String]) {
            self.init(name, { _ in text }, mentions: { _ in mentions })
        }
    }

    static let planCases: [PlanCase] = [
        PlanCase("regions that overlap", "a normal 0x200000 0x2000 zeros\nb normal 0x201000 0x1000 zeros",
                 mentions: ["plan region 1 'b' [0x201000, 0x202000) overlaps region 0 'a'"]),
        PlanCase("the same range twice", "a normal 0x300000 0x1000 zeros\nb zero 0x300000 0x1000 zeros",
                 mentions: ["plan region 1 'b'", "overlaps region 0 'a'"]),
        PlanCase("start not page aligned", "a normal 0x200800 0x1000 zeros",
                 mentions: ["plan region 0 'a' [0x200800, 0x201800)", "not 4 KiB aligned"]),
        PlanCase("size not page aligned", "a normal 0x200000 0x1001 zeros",
                 mentions: ["plan region 0 'a' [0x200000, 0x201001)", "not 4 KiB aligned"]),
        PlanCase("zero length", "a normal 0x200000 0 zeros", mentions: ["plan region 0 'a' [0x200000, 0x200000) is empty"]),
        PlanCase("range that wraps", "a normal 0xfffffffffffff000 0x2000 zeros",
                 mentions: ["plan region 0 'a'", "wraps past the end of the address space"]),
        PlanCase("range outside the memory slots", "a normal 0x1000000 0x1000 zeros",
                 mentions: ["plan region 0 'a' [0x1000000, 0x1001000)", "not inside the guest's memory slots"]),
        PlanCase("contents longer than the range", "a normal 0x200000 0x1000 file /etc/hostname 0 8192",
                 mentions: ["plan region 0 'a'", "8192 bytes of contents, more than its 4096-byte range"]),
        PlanCase("zero region with contents", "a zero 0x200000 0x1000 hex 01",
                 mentions: ["plan region 0 'a'", "zero region and cannot carry contents"]),
        PlanCase("contents from a missing file", { d in "k normal 0x200000 0x1000 file \(d.path)/absent" },
                 mentions: { d in ["'k'", "\(d.path)/absent"] }),
        PlanCase("contents from a FIFO with no writer", { d in
            try BadInputTests.fifo(d.path + "/fifo")
            return "k normal 0x200000 0x1000 file \(d.path)/fifo"
        }, mentions: { d in ["'k'", "\(d.path)/fifo", "not a regular file"] }),
        PlanCase("contents from a directory", { d in "k normal 0x200000 0x1000 file \(d.path)" },
                 mentions: { d in ["'k'", "\(d.path)", "Is a directory"] }),
    ]

    /// Plans are launched as SNP guests on the fake: the refusal must come
    /// before any page is populated or the launch is finished.
    @Test(arguments: planCases)
    func badPlanIsRefusedBeforeAnyLaunchIoctl(_ bad: PlanCase) throws {
        let directory = try TemporaryDirectory()
        let plan = try LaunchPlan(text: try bad.text(directory))
        let rig = try PopulationRig(.snp)
        do {
            let result = try rig.populate(plan)
            Issue.record("the plan was populated: \(result.report)")
        } catch {
            #expect(!error.description.contains("\n"), "not one line: \(error.description.debugDescription)")
            for mention in bad.mentions(directory) {
                #expect(error.description.contains(mention), "\(error.description.debugDescription) does not name \(mention.debugDescription)")
            }
            #expect(error.populated.isEmpty && error.madePrivate.isEmpty, "\(error)")
        }
        let launched = rig.kernel.trace.filter {
            switch $0.operation {
            case .encryptOp(.snpLaunchUpdate), .encryptOp(.snpLaunchFinish), .ioctl(.setMemoryAttributes),
                 .ioctl(.setMemoryAttributes2), .ioctl(.run): true
            default: false
            }
        }
        #expect(launched.isEmpty, "launch calls were issued: \(launched)")
    }

    /// Plan text that cannot be read, and the line and field it must name.
    static let planTextCases: [(name: String, text: String, error: PlanTextError)] = [
        ("unknown page kind", "a secret 0x200000 0x1000 zeros",
         PlanTextError(line: 1, message: "unknown kind 'secret' for region 'a'; kinds are normal, zero, unmeasured, secrets, cpuid")),
        ("address not a number", "# header\na normal 0x20000g 0x1000 zeros",
         PlanTextError(line: 2, message: "gpa '0x20000g' of region 'a' is not a number")),
        ("size past 2^64", "a normal 0x200000 0x10000000000000000 zeros",
         PlanTextError(line: 1, message: "size '0x10000000000000000' of region 'a' is not a number")),
        ("odd number of hex digits", "a normal 0x200000 0x1000 hex 123",
         PlanTextError(line: 1, message: "'hex' of region 'a' needs one even-length string of hex digits")),
        ("hex that is not a byte", "a normal 0x200000 0x1000 hex 01zz",
         PlanTextError(line: 1, message: "'zz' in the hex of region 'a' is not a byte")),
        ("too few fields", "a normal 0x200000",
         PlanTextError(line: 1, message: "expected 'name kind gpa size contents', found 3 fields")),
        ("unknown contents", "a normal 0x200000 0x1000 random",
         PlanTextError(line: 1, message: "unknown contents 'random' for region 'a'; give zeros, hex or file")),
        ("file with a stray field", "a normal 0x200000 0x1000 file /x 0 16 extra",
         PlanTextError(line: 1, message: "'file' of region 'a' takes a path, then an optional offset and length")),
    ]

    @Test(arguments: planTextCases.indices)
    func unreadablePlanTextNamesTheLine(_ index: Int) {
        let bad = Self.planTextCases[index]
        #expect(throws: bad.error, "\(bad.name)") { try LaunchPlan(text: bad.text) }
        #expect(!bad.error.description.contains("\n"))
    }

    /// A failing case is reported by name, so no two may share one.
    @Test func everyCaseHasANameOfItsOwn() {
        let names = Self.cliCases.map(\.name) + Self.libraryCases.map(\.name) + Self.planCases.map(\.name)
            + Self.planTextCases.map(\.name)
        #expect(Set(names).count == names.count, "two cases share a name")
    }

    // MARK: Inputs

    static func pvhCheck() throws -> [UInt8] {
        try [UInt8](Data(contentsOf: URL(fileURLWithPath: Fixtures.pvhCheckPath)))
    }

    /// The fixture, or no bytes when it cannot be read (which then fails the case).
    static func pvhCheckOrEmpty() -> [UInt8] { (try? pvhCheck()) ?? [] }

    static let bookwormBytes = MeasurementVectors.bytes(MeasurementVectors.bookworm)
    static func bookworm() -> [UInt8] { bookwormBytes }

    static func patched(_ bytes: [UInt8], at offset: Int, _ values: [UInt8]) -> [UInt8] {
        var bytes = bytes
        bytes.replaceSubrange(offset..<offset + values.count, with: values)
        return bytes
    }

    static func fifo(_ path: String) throws {
        guard mkfifo(path, 0o600) == 0 else { throw POSIXFailure(operation: "mkfifo") }
    }

    static func symlink(_ path: String, to target: String) throws {
        guard Foundation.symlink(target, path) == 0 else { throw POSIXFailure(operation: "symlink") }
    }
}
