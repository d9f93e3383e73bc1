import Foundation
import LaunchMeasurement
import Testing
import VMMCore

/// IGVM files built by `IGVMBuilder` from the format's layout: the reader's
/// checks, and the SEV-SNP launch digest against a PAGE_INFO chain the test
/// computes itself and, for an IGVM that wraps a Debian OVMF as QEMU loads it
/// directly, against sev-snp-measure.
@Suite struct IGVMTests {
    typealias V = MeasurementVectors

    static func pattern(_ seed: UInt8) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }
    static let zeros = [UInt8](repeating: 0, count: 4096)

    /// A VMSA page with the given CR0 (save-area offset 0x158) and a marker byte.
    static func vmsa(cr0: UInt64 = 0x10) -> [UInt8] {
        var page = zeros
        page.replaceSubrange(0x158..<0x160, with: IGVMBuilder.le(cr0))
        page[0x178] = 0xF0  // RIP low byte, so the page is not all zeros
        return page
    }

    /// The expected digest: each (type, gpa, contents) page in order, by the test's own PAGE_INFO chain.
    static func chain(_ pages: [(String, UInt64, [UInt8]?)]) throws -> String {
        Hex.encode(try FirmwareLaunchTests.chain(pages.map { page in
            (page.0, page.1, 1, page.2.map { [SHA384.hash($0).bytes] } ?? [])
        }))
    }

    static func digest(_ file: [UInt8], nativeZero: Bool = false, checkKVM: Bool = true) throws -> String {
        try IGVMSNPLaunch(try IGVMFile(bytes: file), nativeZero: nativeZero, checkKVM: checkKVM).launchDigest.hex
    }

    /// One page of each kind, the parameter area inserted first (where QEMU and igvmmeasure agree), a VMSA last.
    static func everyKind() -> IGVMBuilder {
        var b = IGVMBuilder()
        b.platform()
        b.policy(0x30000)
        b.parameterArea(index: 0, bytes: 4096)
        b.usage(0x307, index: 0)  // VP_COUNT
        b.parameterInsert(0x9000, index: 0)
        b.page(0x1000, data: pattern(1))
        b.page(0x2000)                      // NORMAL without data
        b.page(0x3000, flags: 2)            // unmeasured
        b.page(0x4000, type: 1)             // SECRETS
        b.page(0x5000, type: 2)             // CPUID_DATA
        b.page(0x6000, type: 3)             // CPUID_XF
        b.vmsa(vmsa())
        return b
    }

    @Test func crc32IsZlibsChecksum() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)  // the CRC-32 check value
        #expect(IGVMBuilder.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        #expect(CRC32.checksum(bytes) == IGVMBuilder.crc32(bytes))
    }

    /// The fuzz seeds were written by a Python script with zlib's crc32.
    @Test func theFuzzSeedsWrittenWithZlibsCRC32Parse() throws {
        let directory = V.directory + "/../../Fuzz/corpus/igvm"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(names.count == 3)
        for name in names {
            let file = try IGVMFile(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name))))
            #expect(file.snpMask == 1)
        }
    }

    @Test func theReaderReturnsThePlatformAndDirectivesInFileOrder() throws {
        let file = try IGVMFile(bytes: Self.everyKind().build())
        #expect(file.platforms.map(\.type) == [.sevSNP])
        #expect(file.snpMask == 1)
        #expect(file.directives.map(\.index) == Array(1...11))
        guard case .pageData(0x1000, 1, let offset, false, false, false, .normal) = file.directives[4].directive else {
            Issue.record("header 5 is \(file.directives[4].directive)")
            return
        }
        #expect(file.page(at: offset) == Self.pattern(1))
    }

    @Test func everyPageKindIsMeasuredAsQEMUAndIgvmmeasureMeasureIt() throws {
        let file = Self.everyKind().build()
        #expect(try Self.digest(file) == Self.chain([
            ("UNMEASURED", 0x9000, nil), ("NORMAL", 0x1000, Self.pattern(1)), ("NORMAL", 0x2000, Self.zeros),
            ("UNMEASURED", 0x3000, nil), ("SECRETS", 0x4000, nil), ("CPUID", 0x5000, nil), ("CPUID", 0x6000, nil),
            ("VMSA", 0xFFFF_FFFF_F000, Self.vmsa()),
        ]))
        #expect(try Self.digest(file, nativeZero: true) == Self.chain([
            ("UNMEASURED", 0x9000, nil), ("NORMAL", 0x1000, Self.pattern(1)), ("ZERO", 0x2000, nil),
            ("UNMEASURED", 0x3000, nil), ("SECRETS", 0x4000, nil), ("CPUID", 0x5000, nil), ("CPUID", 0x6000, nil),
            ("VMSA", 0xFFFF_FFFF_F000, Self.vmsa()),
        ]))
    }

    @Test func aTwoMiBPageWithoutDataIs512PagesAndDataFillsOnlyTheFirst() throws {
        var b = IGVMBuilder()
        b.platform()
        b.page(0x20_0000, flags: 1)
        b.page(0x40_0000, data: Self.pattern(2), flags: 1)
        var pages: [(String, UInt64, [UInt8]?)] = []
        for page in 0..<512 { pages.append(("NORMAL", 0x20_0000 + UInt64(page) * 4096, Self.zeros)) }
        for page in 0..<512 { pages.append(("NORMAL", 0x40_0000 + UInt64(page) * 4096, page == 0 ? Self.pattern(2) : Self.zeros)) }
        let expected = try Self.chain(pages)
        #expect(try Self.digest(b.build()) == expected)
    }

    /// QEMU holds a run of pages until a page breaks it, so an insert after
    /// the run is queued before it; igvmmeasure measures in file order.
    @Test func anInsertAfterAHeldRunOfPagesIsQueuedFirstAsQEMUQueuesIt() throws {
        var b = IGVMBuilder()
        b.platform()
        b.parameterArea(index: 0, bytes: 8192)
        b.page(0x1000, data: Self.pattern(3))
        b.page(0x2000, data: Self.pattern(4))
        b.parameterInsert(0x8000, index: 0)
        b.page(0x3000, data: Self.pattern(5))
        #expect(try Self.digest(b.build()) == Self.chain([
            ("UNMEASURED", 0x8000, nil), ("UNMEASURED", 0x9000, nil),  // the whole two-page area
            ("NORMAL", 0x1000, Self.pattern(3)), ("NORMAL", 0x2000, Self.pattern(4)), ("NORMAL", 0x3000, Self.pattern(5)),
        ]))
    }

    @Test func anUnknownOptionalHeaderIsSkippedAndOtherPlatformsDirectivesIgnored() throws {
        var b = IGVMBuilder()
        b.platform(mask: 1, type: 2)
        b.platform(mask: 2, type: 3)
        b.raw(type: 0x3FF | 1 << 31, body: [1, 2, 3, 4])
        b.page(0x1000, data: Self.pattern(6), mask: 2)  // TDX only
        b.page(0x2000, data: Self.pattern(7), mask: 3)  // both
        #expect(try Self.digest(b.build()) == Self.chain([("NORMAL", 0x2000, Self.pattern(7))]))
    }

    /// What QEMU loads for a direct OVMF launch, as IGVM directives: the
    /// image's pages, its SEV metadata sections (SNP_SEC_MEM as pages without
    /// data), and each vCPU's VMSA.
    static func wrapping(image: String, vcpus: Int, type: String) throws -> IGVMBuilder {
        let ovmf = try OVMFImage(bytes: V.bytes(image))
        let measurement = SNPGuestMeasurement(vcpus: vcpus, vcpuSignature: try #require(SNPVCPUSignature.signature(named: type)))
        var b = IGVMBuilder()
        b.platform()
        for step in try measurement.launchSteps(for: ovmf) {
            for page in 0..<step.pageCount {
                let gpa = step.gpa + page * 4096
                switch (step.type, step.source) {
                case (.normal, .firmware(let offset)):
                    let start = offset + Int(page) * 4096
                    b.page(gpa, data: Array(ovmf.bytes[start..<(start + 4096)]))
                case (.normal, .bytes(let bytes)): b.page(gpa, data: Array(bytes[(Int(page) * 4096)..<(Int(page + 1) * 4096)]))
                case (.zero, _): b.page(gpa)
                case (.unmeasured, _): b.page(gpa, flags: 2)
                case (.secrets, _): b.page(gpa, type: 1)
                case (.cpuid, _): b.page(gpa, type: 2)
                default: Issue.record("unexpected step \(step.type)")
                }
            }
        }
        for page in try measurement.vmsaPages(for: ovmf) { b.vmsa(page) }
        return b
    }

    /// An IGVM holding what QEMU loads for a direct OVMF launch (the image,
    /// the SEV metadata sections, the boot vCPU's VMSA) measures, with
    /// ZERO pages for pages without data, what sev-snp-measure gives.
    @Test(arguments: [(V.bookworm, 1, "EPYC", true), (V.sid, 1, "EPYC-Genoa", true), (V.sid, 4, "EPYC-Milan", false)])
    func anIGVMWrappingOVMFMeasuresAsSevSnpMeasureInNativeZeroTerms(image: String, vcpus: Int, type: String, checkKVM: Bool) throws {
        let b = try Self.wrapping(image: image, vcpus: vcpus, type: type)
        let expected = try #require(FirmwareLaunchTests.matrix.first {
            $0.image == image && $0.value("--vcpus") == "\(vcpus)" && $0.value("--vcpu-type") == type && $0.value("--kernel") == nil
        }).measurement
        let file = b.build()
        #expect(try Self.digest(file, nativeZero: true, checkKVM: checkKVM) == expected)
        #expect(try Self.digest(file, nativeZero: false, checkKVM: checkKVM) != expected, "SNP_SEC_MEM pages count as NORMAL zeros by default")
        // The command line agrees.
        let path = try Self.write(file)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try SNPVMMExecutable.run(["measure", "--mode", "snp", "--igvm", path, "--native-zero"]
                                              + (checkKVM ? [] : ["--no-check-kvm"]))
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == expected + "\n")
    }

    static func write(_ bytes: [UInt8]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("igvm-\(UUID().uuidString).bin").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// A malformed file and the words its one-line refusal must hold.
    struct Malformed: CustomTestStringConvertible, Sendable {
        let name: String
        let build: @Sendable () -> [UInt8]
        let mentions: String
        var testDescription: String { name }
    }

    static func with(_ change: @escaping @Sendable (inout IGVMBuilder) -> Void) -> @Sendable () -> [UInt8] {
        { var b = everyKind(); change(&b); return b.build() }
    }

    static let malformed: [Malformed] = [
        Malformed(name: "bad magic", build: with { $0.patches = [(0, [0x49, 0x47, 0x56, 0x4E])] }, mentions: "IGVM fixed header: magic is 0x4e564749"),
        Malformed(name: "version 2", build: with { $0.patches = [(4, [2, 0, 0, 0])] }, mentions: "format_version is 2"),
        Malformed(name: "bad checksum", build: with { $0.recomputeChecksum = false }, mentions: "checksum is 0x0, but the CRC-32"),
        Malformed(name: "total size", build: { everyKind().build() + [0] }, mentions: "total_file_size is"),
        Malformed(name: "headers past the end", build: with { $0.patches = [(12, IGVMBuilder.le(UInt32(1 << 20)))] },
                  mentions: "variable headers [24, +1048576) run past the end"),
        Malformed(name: "unknown non-optional header", build: with { $0.raw(type: 0x3FF, body: [0, 0, 0, 0]) },
                  mentions: "IGVM header 12 (type 0x3ff): unknown type 0x3ff without the optional bit (31)"),
        Malformed(name: "platform after directives", build: with { $0.platform(mask: 2, type: 3) },
                  mentions: "IGVM header 12 (SUPPORTED_PLATFORM): a platform header after the directive section began"),
        Malformed(name: "undeclared platform", build: with { $0.page(0x7000, data: pattern(9), mask: 4) },
                  mentions: "IGVM header 12 (PAGE_DATA): compatibility_mask 0x4 names a platform the file does not declare"),
        Malformed(name: "overlapping pages", build: with { $0.page(0x1000) },
                  mentions: "IGVM header 12 (PAGE_DATA): page 0x1000 is already given for mask 0x1"),
        Malformed(name: "insert of an undeclared area", build: with { $0.parameterInsert(0xA000, index: 7) },
                  mentions: "IGVM header 12 (PARAMETER_INSERT): parameter_area_index 7 is not declared before it"),
        Malformed(name: "page data past the end", build: with { $0.page(0x7000, data: [1, 2, 3]) },
                  mentions: "IGVM header 12 (PAGE_DATA): file_offset"),
        Malformed(name: "wrong body length", build: with { $0.raw(type: 0x302, body: [UInt8](repeating: 0, count: 16)) },
                  mentions: "IGVM header 12 (PAGE_DATA): length is 16; the header's body is 24 bytes"),
        Malformed(name: "huge parameter area", build: with { $0.parameterArea(index: 5, bytes: 1 << 40) },
                  mentions: "IGVM header 12 (PARAMETER_AREA): number_of_bytes 1099511627776 is more than the 256 MiB"),
        Malformed(name: "a 2 MiB page past the address space", build: with { $0.page(0xFFFF_FFFF_FFFF_F000, flags: 1) },
                  mentions: "IGVM header 12 (PAGE_DATA): gpa 0xfffffffffffff000 + 2097152 bytes runs past the 64-bit address space"),
        Malformed(name: "unaligned page", build: with { $0.page(0x7001) },
                  mentions: "IGVM header 12 (PAGE_DATA): gpa 0x7001 is not 4 KiB aligned"),
        Malformed(name: "unknown data type", build: with { $0.page(0x7000, type: 9) },
                  mentions: "IGVM header 12 (PAGE_DATA): data_type 9 is not NORMAL"),
        // KVM's rules, on by default.
        Malformed(name: "a second VMSA", build: with { $0.vmsa(vmsa()) },
                  mentions: "IGVM header 12 (VP_CONTEXT): a second VMSA"),
        Malformed(name: "a page after the VMSA", build: with { $0.page(0x7000, data: pattern(8)) },
                  mentions: "IGVM header 12 (PAGE_DATA): comes after the VMSA of header 11"),
        Malformed(name: "a VMSA elsewhere", build: {
            var b = everyKind(); b.headers.removeLast(); b.vmsa(vmsa(), gpa: 0x10_0000); return b.build()
        }, mentions: "IGVM header 11 (VP_CONTEXT): gpa 0x100000 is not 0xfffffffff000"),
        Malformed(name: "a CR0 KVM changes", build: {
            var b = everyKind(); b.headers.removeLast(); b.vmsa(vmsa(cr0: 0x6000_0011)); return b.build()
        }, mentions: "IGVM header 11 (VP_CONTEXT): VMSA CR0 0x60000011 sets CD or NW"),
    ]

    @Test(arguments: malformed)
    func aMalformedFileIsRefusedInOneLineNamingTheHeaderAndField(_ bad: Malformed) throws {
        let path = try Self.write(bad.build())
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try SNPVMMExecutable.run(["measure", "--mode", "snp", "--igvm", path])
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains(bad.mentions) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }

    @Test func withoutKVMsRulesTheVMSAIsMeasuredWhereTheFilePutsIt() throws {
        var b = Self.everyKind()
        b.vmsa(Self.vmsa(cr0: 0x31), gpa: 0x10_0000)
        b.page(0x7000, data: Self.pattern(8))
        let digest = try Self.digest(b.build(), checkKVM: false)
        #expect(try digest == Self.chain([
            ("UNMEASURED", 0x9000, nil), ("NORMAL", 0x1000, Self.pattern(1)), ("NORMAL", 0x2000, Self.zeros),
            ("UNMEASURED", 0x3000, nil), ("SECRETS", 0x4000, nil), ("CPUID", 0x5000, nil), ("CPUID", 0x6000, nil),
            ("VMSA", 0xFFFF_FFFF_F000, Self.vmsa()), ("VMSA", 0x10_0000, Self.vmsa(cr0: 0x31)), ("NORMAL", 0x7000, Self.pattern(8)),
        ]))
    }

    @Test func anIDBlockNamingAnotherDigestIsReportedAfterTheDigest() throws {
        var b = Self.everyKind()
        b.raw(type: 0x30B, body: IGVMBuilder.le(UInt32(1)) + [0, 0, 0, 0] + [UInt8](repeating: 0xAB, count: 48)
              + [UInt8](repeating: 0, count: 696 - 56))
        let path = try Self.write(b.build())
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try SNPVMMExecutable.run(["measure", "--mode", "snp", "--igvm", path])
        #expect(result.status == 1)
        let expected = try Self.digest(Self.everyKind().build())
        #expect(result.stdout == expected + "\n")
        #expect(result.stderr.contains("the SNP_ID_BLOCK names launch digest abab"), "\(result.stderr)")
    }

    @Test func inspectPrintsOneLinePerHeaderAndJSONOneObjectEach() throws {
        let path = try Self.write(Self.everyKind().build())
        defer { try? FileManager.default.removeItem(atPath: path) }
        let text = try SNPVMMExecutable.run(["igvm", "inspect", path])
        #expect(text.status == 0, "\(text.stderr)")
        let lines = text.stdout.split(separator: "\n")
        #expect(lines.count == 12)
        #expect(lines[0] == "header 0 SUPPORTED_PLATFORM platform SEV_SNP mask 0x1 highest_vtl 0 shared_gpa_boundary 0x0")
        #expect(lines[5].hasPrefix("header 5 PAGE_DATA gpa [0x1000, 0x2000) data_type NORMAL flags - mask 0x1 file_offset "))
        #expect(lines[5].hasSuffix(" sha384 " + SHA384.hash(Self.pattern(1)).hex))
        #expect(lines[7] == "header 7 PAGE_DATA gpa [0x3000, 0x4000) data_type NORMAL flags UNMEASURED mask 0x1 file_offset 0 sha384 zeros")
        #expect(lines[11].hasPrefix("header 11 VP_CONTEXT gpa 0xfffffffff000 vp 0 mask 0x1"))
        let json = try SNPVMMExecutable.run(["igvm", "inspect", path, "--json"])
        let objects = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
        #expect(objects.count == 12)
        #expect(objects[4]["type"] as? String == "PARAMETER_INSERT" && objects[4]["gpa"] as? String == "0x9000")
        let bad = try Self.write(Self.with { $0.recomputeChecksum = false }())
        defer { try? FileManager.default.removeItem(atPath: bad) }
        let refused = try SNPVMMExecutable.run(["igvm", "inspect", bad])
        #expect(refused.status == 2)
        #expect(refused.stderr.hasPrefix("snpvmm: igvm inspect: \(bad): IGVM fixed header: checksum is 0x0"))
    }

    /// The emulated launch of an IGVM prints what `measure --igvm` gives,
    /// with and without ZERO pages, and its ledger replays to it.
    @Test(arguments: [true, false])
    func runIGVMLaunchOnlyPrintsWhatMeasureGivesAndItsLedgerReplays(nativeZero: Bool) throws {
        var b = try Self.wrapping(image: V.bookworm, vcpus: 1, type: "EPYC")
        // A one-page parameter area with a vCPU count and memory map, inserted where no page lies.
        b.headers.insert(IGVMBuilder.Header(type: 0x301, body: IGVMBuilder.le(UInt64(4096)) + IGVMBuilder.le(UInt32(0)) + IGVMBuilder.le(UInt32(0))), at: 1)
        b.headers.insert(IGVMBuilder.Header(type: 0x307, body: IGVMBuilder.le(UInt32(0)) + IGVMBuilder.le(UInt32(0))), at: 2)
        b.headers.insert(IGVMBuilder.Header(type: 0x30C, body: IGVMBuilder.le(UInt32(0)) + IGVMBuilder.le(UInt32(8))), at: 3)
        b.headers.insert(IGVMBuilder.Header(type: 0x303, body: IGVMBuilder.le(UInt64(0x10_0000)) + IGVMBuilder.le(UInt32(1)) + IGVMBuilder.le(UInt32(0))), at: 4)
        let path = try Self.write(b.build())
        let ledger = path + ".jsonl"
        defer { for file in [path, ledger] { try? FileManager.default.removeItem(atPath: file) } }
        let flag = nativeZero ? ["--native-zero"] : []
        let measured = try SNPVMMExecutable.run(["measure", "--mode", "snp", "--igvm", path] + flag)
        #expect(measured.status == 0, "\(measured.stderr)")
        let run = try SNPVMMExecutable.run(["run", "--igvm", path, "--platform", "snp", "--emulate", "--launch-only",
                                            "--ledger", ledger] + flag)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout == measured.stdout)
        let (replayed, recorded) = try FirmwareLaunchTests.replay(try String(contentsOfFile: ledger, encoding: .utf8))
        #expect(Hex.encode(replayed) + "\n" == measured.stdout)
        #expect(recorded + "\n" == measured.stdout)
    }

    @Test func runIGVMRefusesAVMSAKVMCannotBuildFromVCPUState() throws {
        let path = try Self.write(Self.everyKind().build())
        defer { try? FileManager.default.removeItem(atPath: path) }
        let run = try SNPVMMExecutable.run(["run", "--igvm", path, "--platform", "snp", "--emulate", "--launch-only"])
        #expect(run.status == 2)
        #expect(run.stderr.contains("IGVM header 11 (VP_CONTEXT): the VMSA holds state KVM does not set from a vCPU's registers (first at save-area offset 0xd1)"),
                "\(run.stderr)")
    }

    @Test(arguments: [
        (["--launch-only"], "--igvm launches an SEV-SNP guest; give --platform snp"),
        (["--platform", "snp"], "--igvm needs --launch-only"),
        (["--platform", "snp", "--launch-only", "--cpus", "2"], "--igvm launches one vCPU"),
        (["--platform", "snp", "--launch-only", "--vcpu-type", "EPYC"], "--vcpu-type does not apply to --igvm"),
        (["--platform", "snp", "--launch-only", "--kernel", "inputs/kernel.bin"], "--igvm launches the file as it is"),
    ])
    func runIGVMMistakesAreOneLineUsageErrors(arguments: [String], mentions: String) throws {
        let result = try SNPVMMExecutable.run(["run", "--igvm", "x.igvm", "--emulate"] + arguments)
        #expect(result.status == 2)
        #expect(result.stderr.contains(mentions) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }

    @Test func inspectShowsARangeEndingPastTheAddressSpaceAsALength() throws {
        var b = IGVMBuilder()
        b.platform()
        b.raw(type: 0x305, body: IGVMBuilder.le(UInt64(0xFFFF_FFFF_FFFF_F000)) + IGVMBuilder.le(UInt32(1))
              + IGVMBuilder.le(UInt32(0x2000)) + IGVMBuilder.le(UInt32(0)) + IGVMBuilder.le(UInt32(0)))
        let path = try Self.write(b.build())
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try SNPVMMExecutable.run(["igvm", "inspect", path])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("header 1 REQUIRED_MEMORY gpa [0xfffffffffffff000, +0x2000) flags 0x0 mask 0x1"), "\(result.stdout)")
    }
}
