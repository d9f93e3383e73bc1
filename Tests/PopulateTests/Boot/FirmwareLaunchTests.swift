import Foundation
import GuestMemfd
import KVMFake
import LaunchMeasurement
import Populate
import Testing
import VMMCore

/// An SEV-SNP launch from OVMF, populated on the fake's SNP firmware: the
/// measurement it ends with is sev-snp-measure's for the same inputs (the
/// committed vectors), and the fake firmware measured the same pages.
@Suite struct FirmwareLaunchTests {
    typealias V = MeasurementVectors

    struct MatrixCase: Decodable, CustomTestStringConvertible, Sendable {
        let image: String
        let args: [String]
        let measurement: String
        var testDescription: String { "\(image) \(args.dropFirst(2).joined(separator: " "))" }
        func value(_ flag: String) -> String? { args.firstIndex(of: flag).map { args[$0 + 1] } }
    }

    /// sev-snp-measure 0.0.13 for each Debian image (bookworm and trixie
    /// `ovmf`, sid `ovmf-amdsev`) x vCPU count 1-16 x each vCPU type name (x
    /// measured kernel where the image has the section): 1280 cases, by regenerate.py.
    static let matrix: [MatrixCase] = {
        struct File: Decodable { let cases: [MatrixCase] }
        return V.load("snp-firmware-matrix.json", as: File.self).cases
    }()

    /// Launches `image` on the fake's SNP platform and returns the engine's
    /// expected measurement, the firmware's, and the ledger.
    static func launch(image: String, vcpus: Int, vcpuType: String, kernel: Bool, initrd: Bool, append: String?,
                       finish: SNPLaunchFinish = SNPLaunchFinish(), fake: FakeKVM = FakeKVM(profile: .snpHost))
        throws -> (expected: [UInt8]?, firmware: [UInt8]?, ledger: Ledger, vm: VM)
    {
        let hashes = kernel ? SEVKernelHashes(kernel: V.bytes("inputs/kernel.bin"),
                                              initrd: initrd ? V.bytes("inputs/initrd.bin") : nil, cmdline: append) : nil
        let launch = SNPFirmwareLaunch(image: try OVMFImage(bytes: V.bytes(image)), measurement: SNPGuestMeasurement(
            vcpus: vcpus, vcpuSignature: try #require(SNPVCPUSignature.signature(named: vcpuType)), kernelHashes: hashes))
        let session = try LaunchSession(kvm: try KVM.open(using: fake), platform: .snp(SNPLaunchParameters(finish: finish)))
        try session.createVCPUs(vcpus)
        for index in 0..<vcpus {
            let (regs, sregs) = try launch.resetState(vcpu: index)
            try session.setBootState(regs: regs, sregs: sregs, vcpu: index)
        }
        try session.createMemory(at: 0, size: 256 << 20, slot: 0)
        try session.createMemory(at: launch.firmwareRange.start.rawValue, size: launch.firmwareRange.size, slot: 1)
        let result = try session.populate(try launch.plan())
        return (result.expectedMeasurement, fake.launchMeasurement(of: session.vm), result.ledger, session.vm)
    }

    @Test(arguments: matrix)
    func everyImageVCPUCountAndTypeLaunchesToSevSnpMeasuresValue(_ testCase: MatrixCase) throws {
        let (expected, firmware, ledger, _) = try Self.launch(
            image: testCase.image, vcpus: Int(testCase.value("--vcpus")!)!, vcpuType: testCase.value("--vcpu-type")!,
            kernel: testCase.value("--kernel") != nil, initrd: testCase.value("--initrd") != nil,
            append: testCase.value("--append"))
        #expect(Hex.encode(try #require(expected)) == testCase.measurement)
        #expect(Hex.encode(try #require(firmware)) == testCase.measurement)
        let (replayed, recorded) = try Self.replay(ledger)
        #expect(Hex.encode(replayed) == testCase.measurement)
        #expect(recorded == testCase.measurement)
    }

    struct Case: CustomTestStringConvertible, Sendable {
        let vector: String
        let image: String
        let vcpus: Int
        let vcpuType: String
        let kernel: Bool
        var testDescription: String { vector }
    }

    static let cases = [
        Case(vector: "bookworm-epyc-1", image: V.bookworm, vcpus: 1, vcpuType: "EPYC", kernel: false),
        Case(vector: "sid-genoa-1", image: V.sid, vcpus: 1, vcpuType: "EPYC-Genoa", kernel: false),
        Case(vector: "sid-gce-4", image: V.sid, vcpus: 4, vcpuType: "EPYC-Milan", kernel: false),
        Case(vector: "sid-turin-8-kernel-initrd-append", image: V.sid, vcpus: 8, vcpuType: "EPYC-Turin", kernel: true),
    ]

    @Test(arguments: cases)
    func theEmulatedFirmwareLaunchMeasuresWhatSevSnpMeasureGives(_ testCase: Case) throws {
        let vector = V.snpCase(testCase.vector)
        guard vector.args.contains("--vmm-type") == false else { return }  // QEMU's layout only
        let image = try OVMFImage(bytes: V.bytes(testCase.image))
        var hashes: SEVKernelHashes?
        if testCase.kernel {
            let append = vector.args[vector.args.firstIndex(of: "--append")! + 1]
            hashes = SEVKernelHashes(kernel: V.bytes("inputs/kernel.bin"), initrd: V.bytes("inputs/initrd.bin"), cmdline: append)
        }
        let signature = try #require(SNPVCPUSignature.signature(named: testCase.vcpuType))
        let launch = SNPFirmwareLaunch(image: image, measurement: SNPGuestMeasurement(
            vcpus: testCase.vcpus, vcpuSignature: signature, kernelHashes: hashes))

        let fake = FakeKVM(profile: .snpHost)
        let session = try LaunchSession(kvm: try KVM.open(using: fake), platform: .snp(SNPLaunchParameters()))
        try session.createVCPUs(testCase.vcpus)
        for index in 0..<testCase.vcpus {
            let (regs, sregs) = try launch.resetState(vcpu: index)
            try session.setBootState(regs: regs, sregs: sregs, vcpu: index)
        }
        try session.createMemory(at: 0, size: 256 << 20, slot: 0)
        try session.createMemory(at: launch.firmwareRange.start.rawValue, size: launch.firmwareRange.size, slot: 1)
        var options = PopulateOptions()
        options.observer = fake.observer(of: session.vm)
        let result = try session.populate(try launch.plan(), options: options)

        let expected = vector.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Hex.encode(try #require(result.expectedMeasurement)) == expected)
        #expect(Hex.encode(try #require(fake.launchMeasurement(of: session.vm))) == expected)
    }

    /// The PAGE_INFO chain replayed from a ledger's JSON lines alone (SNP
    /// firmware ABI, PAGE_INFO: current digest, contents hash, length 0x70,
    /// type, GPA), as a verifier without this package would.
    static func replay(_ jsonLines: String) throws -> (replayed: [UInt8], recorded: String) {
        var operations: [(type: String, gpa: UInt64, pages: Int, hashes: [[UInt8]])] = [], recorded = ""
        for line in jsonLines.split(separator: "\n") {
            let record = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            if record["call"] as? String == "LAUNCH_MEASUREMENT" {
                recorded = record["measurement"] as? String ?? ""
                continue
            }
            let gpa = try #require(UInt64((record["gpa"] as! String).dropFirst(2), radix: 16))
            operations.append((record["type"] as? String ?? "", gpa, record["pages"] as! Int,
                               (record["page_hashes"] as? [String] ?? []).map { Hex.decode($0)! }))
        }
        return (try chain(operations), recorded)
    }

    /// The same replay from the ledger's records in memory, for the matrix,
    /// where parsing 1280 ledgers of JSON would dominate the suite's time.
    static func replay(_ ledger: Ledger) throws -> (replayed: [UInt8], recorded: String) {
        let operations = ledger.records.map { ($0.type, $0.gpa, Int($0.pages), $0.pageHashes) }
        return (try chain(operations), Hex.encode(ledger.measurement ?? []))
    }

    /// PAGE_INFO for each page in order (SNP firmware ABI: current digest,
    /// contents hash or zeros, length 0x70, page type, GPA), each SHA-384'd.
    static func chain(_ operations: [(type: String, gpa: UInt64, pages: Int, hashes: [[UInt8]])]) throws -> [UInt8] {
        let codes = ["NORMAL": UInt8(1), "VMSA": 2, "ZERO": 3, "UNMEASURED": 4, "SECRETS": 5, "CPUID": 6]
        var digest = [UInt8](repeating: 0, count: 48)
        for operation in operations {
            let type = try #require(codes[operation.type], "unknown page type \(operation.type)")
            for page in 0..<operation.pages {
                var info = digest
                info += type == 1 || type == 2 ? operation.hashes[page] : [UInt8](repeating: 0, count: 48)
                info += [0x70, 0, type, 0, 0, 0, 0, 0]
                let pageGPA = type == 2 ? operation.gpa : operation.gpa + UInt64(page) * 4096
                info += (0..<8).map { UInt8(truncatingIfNeeded: pageGPA >> (8 * $0)) }
                digest = SHA384.hash(info).bytes
            }
        }
        return digest
    }

    @Test func runFirmwareLaunchOnlyPrintsSevSnpMeasuresValueAndItsLedgerReplaysToIt() throws {
        let vector = V.snpCase("sid-turin-8-kernel-initrd-append")
        let ledger = FileManager.default.temporaryDirectory.appendingPathComponent("firmware-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: ledger) }
        let result = try SNPVMMExecutable.run([
            "run", "--firmware", V.sid, "--platform", "snp", "--emulate", "--launch-only", "--vcpu-type", "EPYC-Turin",
            "--cpus", "8", "--kernel", "inputs/kernel.bin", "--initrd", "inputs/initrd.bin",
            "--append", "console=ttyS0 root=/dev/vda1", "--ledger", ledger,
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == vector.stdout)
        let (replayed, recorded) = try Self.replay(try String(contentsOfFile: ledger, encoding: .utf8))
        #expect(Hex.encode(replayed) + "\n" == vector.stdout)
        #expect(recorded + "\n" == vector.stdout)
    }

    /// RAM beyond the firmware stays private and unpopulated, so a large
    /// guest measures as sev-snp-measure says whatever its size.
    @Test(arguments: ["64G", "256G"])
    func aLargeEmulatedFirmwareLaunchStillPrintsSevSnpMeasuresValue(memory: String) throws {
        let vector = V.snpCase("sid-turin-8-kernel-initrd-append")
        let result = try SNPVMMExecutable.run([
            "run", "--firmware", V.sid, "--platform", "snp", "--emulate", "--launch-only", "--vcpu-type", "EPYC-Turin",
            "--cpus", "8", "--memory", memory, "--kernel", "inputs/kernel.bin", "--initrd", "inputs/initrd.bin",
            "--append", "console=ttyS0 root=/dev/vda1",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == vector.stdout)
    }

    @Test(arguments: [
        (["--platform", "cca"], "--firmware launches an SEV-SNP guest from OVMF or a TD from TDVF; give --platform snp or tdx"),
        (["--platform", "snp", "--launch-only"], "--firmware needs --vcpu-type NAME"),
        (["--platform", "snp", "--vcpu-type", "EPYC"], "give --launch-only to launch and measure it"),
        (["--platform", "snp", "--vcpu-type", "i486", "--launch-only"], "--vcpu-type 'i486' is not one of"),
    ])
    func firmwareLaunchMistakesAreOneLineUsageErrors(arguments: [String], mentions: String) throws {
        let result = try SNPVMMExecutable.run(["run", "--firmware", V.sid, "--emulate"] + arguments)
        #expect(result.status == 2)
        #expect(result.stderr.contains(mentions) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }
}

/// A firmware launch refuses images it cannot launch as QEMU would, in one
/// line with exit status 2, before any VM exists.
@Suite struct FirmwareLaunchBadInputTests {
    typealias V = MeasurementVectors

    @Test(arguments: [
        ("no-sev-metadata.fd", [], "the image has no SEV metadata (no OVMF_SEV_META_DATA entry"),
        ("wrong-metadata-signature.fd", [], "Wrong SEV metadata signature"),
        ("unknown-section-type.fd", [], "unknown OVMF metadata section type 5"),
        (V.bookworm, ["--kernel", "inputs/kernel.bin"], "Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section"),
        ("inputs/kernel.bin", [], "is not a multiple of 4096 bytes"),
    ] as [(String, [String], String)])
    func aFirmwareTheLaunchCannotUseIsAOneLineUsageError(image: String, extra: [String], mentions: String) throws {
        let result = try SNPVMMExecutable.run(["run", "--firmware", try V.path(image), "--platform", "snp", "--emulate",
                                               "--launch-only", "--vcpu-type", "EPYC"] + extra)
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains(mentions) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }

    @Test func measureStillMeasuresAnImageWithoutSEVMetadataAsSevSnpMeasureDoes() throws {
        let vector = V.snpCase("no-sev-metadata")
        let result = try SNPVMMExecutable.run(["measure"] + vector.args + ["--ovmf", try V.path("no-sev-metadata.fd")])
        #expect(result.status == 0)
        #expect(result.stdout == vector.stdout)
    }
}

/// A TD launched from TDVF as QEMU launches it, on the fake's TDX module:
/// MRTD equals td-shim's value for the same image (tdx-vectors.json) and
/// `measure --mode tdx`, and TD_HOB describes guest RAM.
@Suite struct TDXFirmwareLaunchTests {
    typealias V = MeasurementVectors

    @Test(arguments: V.tdx.map(\.image))
    func theEmulatedTDVFLaunchEndsWithTdShimsMRTD(_ image: String) throws {
        let expected = try #require(V.tdx.first { $0.image == image }).mrtd
        let launch = TDXFirmwareLaunch(image: try TDVFImage(bytes: V.bytes(image)), memorySize: 256 << 20)
        let fake = FakeKVM(profile: .tdxHost)
        let session = try LaunchSession(kvm: try KVM.open(using: fake),
                                        platform: .tdx(TDXLaunchParameters(handOffAddress: try launch.handOffAddress())))
        try session.createVCPUs(2)
        try session.createMemory(at: 0, size: 256 << 20, slot: 0)
        try session.createMemory(at: launch.firmwareRange.start.rawValue, size: launch.firmwareRange.size, slot: 1)
        let result = try session.populate(try launch.plan())
        #expect(Hex.encode(try #require(result.expectedMeasurement)) == expected)
        #expect(Hex.encode(try #require(fake.launchMeasurement(of: session.vm))) == expected)
    }

    @Test func aLargeEmulatedTDVFLaunchEndsWithTdShimsMRTD() throws {
        let vector = try #require(V.tdx.first)
        let run = try SNPVMMExecutable.run(["run", "--firmware", vector.image, "--platform", "tdx", "--emulate", "--launch-only",
                                            "--cpus", "4", "--memory", "256G"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout == vector.mrtd + "\n")
    }

    @Test(arguments: V.tdx.map(\.image))
    func runFirmwareTDXPrintsWhatMeasureModeTDXPrints(_ image: String) throws {
        let expected = try #require(V.tdx.first { $0.image == image }).mrtd
        let ledger = FileManager.default.temporaryDirectory.appendingPathComponent("tdvf-\(UUID().uuidString).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: ledger) }
        let run = try SNPVMMExecutable.run(["run", "--firmware", image, "--platform", "tdx", "--emulate", "--launch-only",
                                            "--cpus", "4", "--ledger", ledger])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout == expected + "\n")
        let measure = try SNPVMMExecutable.run(["measure", "--mode", "tdx", "--tdvf", image])
        #expect(measure.stdout == run.stdout)
        let last = try #require(try String(contentsOfFile: ledger, encoding: .utf8).split(separator: "\n").last)
        #expect(last.contains("\"measurement\":\"\(expected)\""))
    }

    /// Walks the hand-off block list by the UEFI PI spec's HOB headers.
    /// RAM of 8 GiB lies below 3 GiB and, for the remaining 5 GiB, from 4 GiB.
    @Test(arguments: [UInt64(256) << 20, UInt64(8) << 30])
    func theHandOffListDescribesGuestRAMWithTheAddedSectionsAccepted(memory: UInt64) throws {
        let gib: UInt64 = 1 << 30
        let ram: [(UInt64, UInt64)] = memory == 8 * gib ? [(UInt64(0), 3 * gib), (4 * gib, 5 * gib)] : [(UInt64(0), memory)]
        let image = try TDVFImage(bytes: V.bytes(V.bookworm))
        let launch = TDXFirmwareLaunch(image: image, memorySize: memory)
        let address = try launch.handOffAddress()
        let hobSection = try #require(image.sections.first { $0.type == .tdHOB })
        #expect(address == hobSection.memoryAddress)
        let list = launch.handOffBlocks(at: address)
        func u16(_ at: Int) -> UInt16 { UInt16(list[at]) | UInt16(list[at + 1]) << 8 }
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(list[at + $1]) << (8 * $1) } }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(list[at + $1]) << (8 * $1) } }
        #expect(u16(0) == 0x0001)  // PHIT first
        var offset = Int(u16(2)), resources: [(start: UInt64, size: UInt64, type: UInt32)] = []
        while u16(offset) != 0xFFFF {
            #expect(u16(offset) == 0x0003)
            resources.append((u64(offset + 32), u64(offset + 40), u32(offset + 24)))
            offset += Int(u16(offset + 2))
        }
        #expect(u64(48) == address + UInt64(offset), "EfiEndOfHobList names the end HOB")
        #expect(offset + 8 == list.count)
        // The resources tile each RAM range in order, and nothing else.
        var tiled: [(UInt64, UInt64)] = []
        for resource in resources {
            if let last = tiled.last, last.0 + last.1 == resource.start { tiled[tiled.count - 1].1 += resource.size } else { tiled.append((resource.start, resource.size)) }
        }
        #expect(tiled.map(\.0) == ram.map(\.0))
        #expect(tiled.map(\.1) == ram.map(\.1))
        // Accepted (system memory, 0) exactly where TEMP_MEM and TD_HOB pages were added.
        var added = Set<UInt64>()
        for section in image.sections where section.type == .tempMem || section.type == .tdHOB {
            for page in 0..<(section.memoryDataSize / 4096) { added.insert(section.memoryAddress + page * 4096) }
        }
        var accepted = Set<UInt64>()
        for resource in resources where resource.type == 0 {
            for page in 0..<(resource.size / 4096) { accepted.insert(resource.start + page * 4096) }
        }
        #expect(accepted == added)
        #expect(resources.allSatisfy { $0.type == 0 || $0.type == 7 })
    }

    @Test(arguments: [
        (["--firmware", "inputs/kernel.bin", "--launch-only"], "Cannot find the TDX metadata offset entry"),
        (["--firmware", V.bookworm, "--launch-only", "--memory", "4M"],
         "TDVF section 2 at [0x810000, 0x820000) lies outside the 4 MiB of guest RAM"),
        (["--firmware", V.bookworm, "--launch-only", "--vcpu-type", "EPYC"], "--vcpu-type sets what SEV-SNP VMSAs hold"),
        (["--firmware", V.bookworm, "--launch-only", "--kernel", "inputs/kernel.bin"],
         "--kernel, --initrd and --append are measured into an SEV-SNP launch only"),
        (["--firmware", V.bookworm], "--firmware runs TDVF, which needs a vCPU that executes firmware quickly"),
    ])
    func tdvfLaunchMistakesAreOneLineUsageErrors(arguments: [String], mentions: String) throws {
        let result = try SNPVMMExecutable.run(["run", "--platform", "tdx", "--emulate"] + arguments)
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains(mentions) && result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }
}
