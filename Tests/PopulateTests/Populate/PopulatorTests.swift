import GuestMemfd
import LaunchMeasurement
import KVMFake
import CKVMHeaders
import Foundation
@testable import GuestMemfd
@testable import Populate
import Testing

/// A confidential (or plain) guest on a fake host, ready for population.
struct PopulationRig {
    let fake: FakeKVM
    let kernel: FaultInjectingKernel
    let vm: VM
    let memfd: GuestMemfd
    let mapping: GuestMemoryMapping
    let vcpu: VCPU
    let session: LaunchSession
    let backend: any PopulationBackend
    static let memoryBase: UInt64 = 0x200000
    static let memorySize: UInt64 = 0x800000

    var layout: GuestMemoryLayout {
        GuestMemoryLayout(slots: [.init(range: GuestRange(start: Self.memoryBase, size: Self.memorySize), mapping: mapping)])
    }

    /// - Parameters:
    ///   - profile: the host, instead of the platform's usual one.
    ///   - arm: called before the first call, to arm faults.
    init(_ platform: Platform, inPlace: Bool = false, profile host: HostProfile? = nil,
         arm: (FakeKVM, FaultInjectingKernel) -> Void = { _, _ in }) throws {
        var profile: HostProfile
        switch platform {
        case .plain: profile = .thisMachine
        case .snp: profile = inPlace ? .snpInPlaceHost : .snpHost
        case .tdx:
            profile = .tdxHost
            if inPlace {
                profile.inPlaceConversion = true
                profile.reworkedPopulation = true
            }
        case .cca: profile = .ccaHost
        }
        if let host { profile = host }
        fake = FakeKVM(profile: profile)
        kernel = FaultInjectingKernel(fake)
        arm(fake, kernel)
        let launch: LaunchPlatform = switch platform {
        case .plain: .plain
        case .snp: .snp(SNPLaunchParameters())
        case .tdx: .tdx(TDXLaunchParameters())
        case .cca: .cca(CCABackend.defaultParameters)
        }
        session = try LaunchSession(kvm: try KVM.open(using: kernel, experimental: .all), platform: launch)
        vm = session.vm
        vcpu = try session.createVCPUs(1)[0]
        let slot = try session.createMemory(at: Self.memoryBase, size: Self.memorySize, slot: 0)
        memfd = try #require(slot.memfd)
        mapping = try #require(slot.mapping as? GuestMemoryMapping)
        backend = try session.start()
    }

    /// Options that check the expected measurement against the fake firmware's.
    var observed: PopulateOptions {
        var options = PopulateOptions()
        options.observer = fake.observer(of: vm)
        return options
    }

    func populate(_ plan: LaunchPlan, _ options: PopulateOptions? = nil) throws(PopulateError) -> PopulateResult {
        var options = options ?? observed
        if options.observer == nil { options.observer = fake.observer(of: vm) }
        return try Populator(backend: backend, memory: layout, options: options).populate(plan)
    }

    /// Population ioctls issued so far (everything but setup).
    var populationCalls: Int {
        kernel.trace.filter {
            switch $0.operation {
            case .encryptOp(.snpLaunchUpdate), .encryptOp(.tdxInitMemRegion), .ioctl(.armRMIPopulate),
                 .ioctl(.setMemoryAttributes), .ioctl(.setMemoryAttributes2): true
            default: false
            }
        }.count
    }
}

extension HostProfile {
    func guestMemfdFlags(forTests type: VMType) -> GuestMemfdFlags {
        guestMemfdFlags(for: type).contains(.initShared) ? [.mmap, .initShared] : [.mmap]
    }
}

/// A plan with every kind the platform supports, including a 2 MiB-aligned run.
func samplePlan(_ platform: Platform) -> LaunchPlan {
    let base = PopulationRig.memoryBase
    var regions = [
        PlanRegion(name: "firmware", range: GuestRange(start: base, size: 0x3000), contents: .bytes(pattern(2, seed: 1) + [9, 9, 9])),
        PlanRegion(name: "kernel", range: GuestRange(start: base + 0x200000, size: 0x200000), contents: .bytes(pattern(300, seed: 2))),
        PlanRegion(name: "stack", range: GuestRange(start: base + 0x10000, size: 0x2000), contents: .zeros, kind: .zero),
        PlanRegion(name: "config", range: GuestRange(start: base + 0x20000, size: 0x1000), contents: .bytes([1, 2, 3]), kind: .unmeasured),
    ]
    if platform == .snp {
        regions.append(PlanRegion(name: "secrets", range: GuestRange(start: base + 0x30000, size: 0x1000), contents: .zeros, kind: .secrets))
    }
    return LaunchPlan(regions: regions)
}

struct PlatformCase: Sendable, CustomTestStringConvertible {
    let platform: Platform
    let inPlace: Bool
    var testDescription: String { "\(platform) \(inPlace ? "in place" : "separate source")" }
    static let all = [PlatformCase(platform: .snp, inPlace: false), PlatformCase(platform: .snp, inPlace: true),
                      PlatformCase(platform: .tdx, inPlace: false), PlatformCase(platform: .tdx, inPlace: true),
                      PlatformCase(platform: .cca, inPlace: false), PlatformCase(platform: .plain, inPlace: true)]
}

@Suite struct PopulatorTests {
    @Test(arguments: PlatformCase.all)
    func theMeasurementComputedFromThePlanEqualsThePlatforms(_ platform: PlatformCase) throws {
        let rig = try PopulationRig(platform.platform, inPlace: platform.inPlace)
        let plan = samplePlan(platform.platform)
        // An SNP vCPU's registers are out of reach once LAUNCH_FINISH has encrypted them.
        let vmsa = platform.platform == .snp
            ? SNPVMSA(regs: try rig.vcpu.getRegs(), sregs: try rig.vcpu.getSregs(), sevFeatures: snpActive).page : []
        let result = try rig.populate(plan)
        #expect(result.report.policy == (platform.inPlace ? .inPlace : .separateSource))
        #expect(result.report.totalPages == plan.regions.reduce(0) { $0 + $1.range.pageCount })
        #expect(result.report.hugeUnits == 1)
        switch platform.platform {
        case .plain:
            #expect(result.expectedMeasurement == nil)
            #expect(try rig.mapping.read(at: 0x200000, count: 300 * 4096) == pattern(300, seed: 2))
        case .snp:
            let fromPlan = try plan.expectedSNPLaunchDigest(vmsas: [vmsa]).bytes
            #expect(result.expectedMeasurement == fromPlan)
            #expect(result.reportedMeasurement == fromPlan)
        case .tdx:
            #expect(result.expectedMeasurement == (try plan.expectedMRTD().bytes))
            #expect(result.reportedMeasurement == result.expectedMeasurement)
        case .cca:
            // The RMM measures the boot REC when the realm first runs, so the
            // expected RIM, which attestation reports, includes it already.
            #expect(result.expectedMeasurement != nil)
            #expect(result.reportedMeasurement != result.expectedMeasurement)
            _ = try rig.vcpu.run()
            #expect(rig.fake.launchMeasurement(of: rig.vm) == result.expectedMeasurement)
        }
    }

    @Test func oneCallPopulatesAWholeRegionAndLongRegionsSplitOn2MiBBoundaries() throws {
        let rig = try PopulationRig(.snp)
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "big", range: GuestRange(start: PopulationRig.memoryBase + 0x100000, size: 0x600000),
                       contents: .bytes(pattern(16, seed: 1))),
        ])
        var options = PopulateOptions()
        options.maximumCallBytes = 0x200000
        let result = try rig.populate(plan, options)
        let updates = result.ledger.records.filter { $0.call == "SNP_LAUNCH_UPDATE" }
        #expect(updates.map(\.pages) == [256, 512, 512, 256])
        #expect(updates.map(\.gpa) == [0x300000, 0x400000, 0x600000, 0x800000])
        #expect(result.report.hugeUnits == 2 && result.report.smallPages == 512)
    }

    @Test func aNonTransientFaultOnTheFirstCallLeavesNothingPopulated() throws {
        let rig = try PopulationRig(.tdx)
        rig.kernel.inject(.noMemory, into: .encryptCommand(.tdxInitMemRegion), .always)
        do {
            _ = try rig.populate(samplePlan(.tdx))
            Issue.record("population should fail")
        } catch {
            #expect(error.populated.isEmpty)
            #expect(error.madePrivate == [GuestRange(start: PopulationRig.memoryBase, size: 0x3000)])
            #expect(error.nextGPA == PopulationRig.memoryBase)
            #expect(error.kernelError?.operation == .encryptOp(.tdxInitMemRegion))
        }
    }

    @Test func aRejectedCPUIDPageIsRetriedWithTheFirmwaresValuesWhenTheCallerAcceptsThem() throws {
        let rig = try PopulationRig(.snp)
        var page = [UInt8](repeating: 0, count: 4096)
        page[0] = 1
        page[16] = 0x1
        page.replaceSubrange(48..<52, with: [0xFF, 0xFF, 0xFF, 0xFF])
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "cpuid", range: GuestRange(start: PopulationRig.memoryBase, size: 0x1000), contents: .bytes(page), kind: .cpuid),
        ])
        let notes = LockedStrings()
        var options = PopulateOptions()
        options.log = { notes.append($0) }
        options.acceptCorrectedPages = true
        let result = try rig.populate(plan, options)
        #expect(result.report.retries == 1)
        #expect(notes.values.joined().contains("leaf 0x1 subleaf 0 ecx: 0xffffffff -> 0x7ef8320b"))
        #expect(result.reportedMeasurement == result.expectedMeasurement)
    }

    @Test func byDefaultARejectedCPUIDPageFailsNamingTheFirmwareStatusAndTheDifferingLeaves() throws {
        let rig = try PopulationRig(.snp)
        var page = [UInt8](repeating: 0, count: 4096)
        page[0] = 1
        withUnsafeBytes(of: UInt32(1)) { page.replaceSubrange(16..<20, with: $0) }
        withUnsafeBytes(of: UInt32(0xFFFF_FFFF)) { page.replaceSubrange(48..<52, with: $0) }
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "cpuid", range: GuestRange(start: PopulationRig.memoryBase, size: 0x1000), contents: .bytes(page), kind: .cpuid),
        ])
        do {
            _ = try rig.populate(plan)
            Issue.record("a rejected CPUID page must fail unless the caller accepts the firmware's values")
        } catch {
            guard case .firmwareCorrected(let kernel, let corrections) = error.reason else {
                Issue.record("expected a firmware correction, got \(error)")
                return
            }
            #expect(kernel.sevStatus == .invalidParam)
            #expect(corrections.contains("leaf 0x1 subleaf 0 ecx: 0xffffffff -> 0x7ef8320b"))
            #expect(error.description.contains("firmware error INVALID_PARAM (0x16)"))
            #expect(error.populated.isEmpty)
            #expect(error.madePrivate == [plan.regions[0].range])
        }
    }

    @Test func askingCCAToPopulateInPlaceIsAClearError() throws {
        let rig = try PopulationRig(.cca)
        var options = PopulateOptions()
        options.policy = .inPlace
        do {
            _ = try rig.populate(samplePlan(.cca), options)
            Issue.record("CCA cannot populate in place")
        } catch {
            #expect(error.description.contains("CCA cannot populate in place: delegating a granule to the realm scrubs it"))
            #expect(rig.populationCalls == 0)
        }
    }

    @Test func inPlaceIsChosenWhereTheHostConvertsInPlaceAndCanBeOverridden() throws {
        #expect(try Populator(backend: try PopulationRig(.snp, inPlace: true).backend, memory: GuestMemoryLayout(slots: [])).policy()
                == .inPlace)
        #expect(try Populator(backend: try PopulationRig(.snp).backend, memory: GuestMemoryLayout(slots: [])).policy() == .separateSource)
        let rig = try PopulationRig(.snp, inPlace: true)
        var options = PopulateOptions()
        options.policy = .separateSource
        let result = try rig.populate(samplePlan(.snp), options)
        #expect(result.report.policy == .separateSource)
        #expect(result.reportedMeasurement == result.expectedMeasurement)
    }

    @Test func theLedgerLetsAnIndependentVerifierRecomputeTheSNPMeasurement() throws {
        let rig = try PopulationRig(.snp)
        let result = try rig.populate(samplePlan(.snp))
        let lines = result.ledger.jsonLines.split(separator: "\n")
        var digest = [UInt8](repeating: 0, count: 48)
        let types = ["NORMAL": 1, "VMSA": 2, "ZERO": 3, "UNMEASURED": 4, "SECRETS": 5, "CPUID": 6]
        for line in lines.dropLast() {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let gpa = UInt64((object["gpa"] as! String).dropFirst(2), radix: 16)!
            let pages = object["pages"] as! Int, type = types[object["type"] as! String]!
            let hashes = (object["page_hashes"] as! [String]).map(hexBytes)
            for page in 0..<pages {
                let pageGPA = type == 2 ? 0xFFFF_FFFF_F000 : gpa + UInt64(page) * 4096
                let contents: [UInt8]? = hashes.isEmpty ? nil : hashes[page]
                digest = expectedSNPDigest(start: digest, [(pageGPA, UInt8(type), nil)], contentsHash: contents)
            }
            #expect(hexBytes(object["digest"] as! String) == digest)
        }
        let last = try #require(try JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as? [String: Any])
        #expect(last["call"] as? String == "LAUNCH_MEASUREMENT")
        #expect(hexBytes(last["measurement"] as! String) == digest)
        #expect(digest == result.reportedMeasurement)
    }

    @Test func aDivergingPageIsNamedWhenThePlatformMeasuresSomethingElse() throws {
        let rig = try PopulationRig(.snp)
        let tampering = TamperingBackend(rig.backend, corruptGPA: PopulationRig.memoryBase + 0x201000)
        do {
            _ = try Populator(backend: tampering, memory: rig.layout, options: rig.observed).populate(samplePlan(.snp))
            Issue.record("the mismatch should be reported")
        } catch {
            guard case .measurementMismatch(_, _, let page) = error.reason else {
                Issue.record("expected a measurement mismatch, got \(error)")
                return
            }
            #expect(page == PopulationRig.memoryBase + 0x201000)
            #expect(error.description.contains("the first diverging page is at 0x401000"))
        }
    }

    /// Populates a plain plan into 4 MiB of dirty `memory` through `slot`
    /// and checks contents, zeros, untouched bytes and the bytes counted.
    func checkPlainPopulation(of memory: any MappedGuestMemory, slot: GuestMemoryLayout.Slot) throws {
        try memory.fill(0xCC, at: 0, count: 0x400000)
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "image", range: GuestRange(start: 0x1000, size: 0x3000), contents: .bytes(pattern(2, seed: 4))),
            PlanRegion(name: "zeros", range: GuestRange(start: 0x200000, size: 0x1000), contents: .zeros, kind: .zero),
        ])
        let result = try Populator(backend: PlainBackend(), memory: GuestMemoryLayout(slots: [slot])).populate(plan)
        #expect(try memory.read(at: 0x1000, count: 0x3000) == pattern(2, seed: 4) + [UInt8](repeating: 0, count: 0x1000))
        #expect(try memory.read(at: 0x200000, count: 0x1000).allSatisfy { $0 == 0 })
        #expect(try memory.read(at: 0x4000, count: 1) == [0xCC])
        #expect(result.report.bytesCopied == 0x4000)
    }

    @Test func thePlainPlatformWritesThroughMemfdRAM() throws {
        let memory = try SharedMemory(size: 0x400000)
        try checkPlainPopulation(of: memory, slot: .init(range: GuestRange(start: 0, size: 0x400000), sharedMemory: memory))
    }

    @Test func aConfidentialPlatformRefusesMemfdRAMBeforeAnyIoctl() throws {
        let rig = try PopulationRig(.snp)
        let memory = try SharedMemory(size: PopulationRig.memorySize)
        let layout = GuestMemoryLayout(slots: [.init(range: GuestRange(start: PopulationRig.memoryBase, size: PopulationRig.memorySize),
                                                     sharedMemory: memory)])
        let before = rig.kernel.trace.count
        #expect {
            _ = try Populator(backend: rig.backend, memory: layout, options: rig.observed).populate(samplePlan(.snp))
        } throws: { error in
            "\(error)".contains("keeps guest memory private in guest_memfd, and the slot at")
        }
        #expect(rig.kernel.trace.count == before)
    }

    @Test(.requiresKVM(.mmap))
    func thePlainPlatformWritesThroughTheRealGuestMemfd() throws {
        let kvm = try KVMHost.open()
        let vm = try kvm.createVM()
        let mapping = try vm.createGuestMemfd(size: 0x400000, flags: [.mmap, .initShared]).map()
        try checkPlainPopulation(of: mapping, slot: .init(range: GuestRange(start: 0, size: 0x400000), mapping: mapping))
    }
}

/// Bad plans, each rejected before any ioctl with an error naming the region.
@Suite struct BadPlanTests {
    struct BadPlan: Sendable, CustomTestStringConvertible {
        let name: String
        let regions: [PlanRegion]
        let message: String
        var testDescription: String { name }
    }

    static let base = PopulationRig.memoryBase
    static let cases: [BadPlan] = [
        BadPlan(name: "overlap", regions: [
            PlanRegion(name: "a", range: GuestRange(start: base, size: 0x2000), contents: .zeros),
            PlanRegion(name: "b", range: GuestRange(start: base + 0x1000, size: 0x1000), contents: .zeros),
        ], message: "plan region 1 'b' [0x201000, 0x202000) overlaps region 0 'a'"),
        BadPlan(name: "unaligned start", regions: [PlanRegion(name: "x", range: GuestRange(start: base + 0x10, size: 0x1000), contents: .zeros)],
                message: "plan region 0 'x' [0x200010, 0x201010) is not 4 KiB aligned in start and size"),
        BadPlan(name: "unaligned size", regions: [PlanRegion(name: "x", range: GuestRange(start: base, size: 0x1800), contents: .zeros)],
                message: "is not 4 KiB aligned"),
        BadPlan(name: "zero length", regions: [PlanRegion(name: "x", range: GuestRange(start: base, size: 0), contents: .zeros)],
                message: "plan region 0 'x' [0x200000, 0x200000) is empty"),
        BadPlan(name: "outside memory", regions: [PlanRegion(name: "x", range: GuestRange(start: 0x10000000, size: 0x1000), contents: .zeros)],
                message: "is not inside the guest's memory slots"),
        BadPlan(name: "straddling the end", regions: [
            PlanRegion(name: "x", range: GuestRange(start: base + 0x7FF000, size: 0x2000), contents: .zeros),
        ], message: "is not inside the guest's memory slots"),
        BadPlan(name: "wrapping", regions: [PlanRegion(name: "x", range: GuestRange(start: UInt64.max - 0xFFF, size: 0x2000), contents: .zeros)],
                message: "wraps past the end of the address space"),
        BadPlan(name: "contents too long", regions: [
            PlanRegion(name: "x", range: GuestRange(start: base, size: 0x1000), contents: .bytes([UInt8](repeating: 1, count: 0x1001))),
        ], message: "holds 4097 bytes of contents, more than its 4096-byte range"),
        BadPlan(name: "zero region with contents", regions: [
            PlanRegion(name: "x", range: GuestRange(start: base, size: 0x1000), contents: .bytes([1]), kind: .zero),
        ], message: "is a zero region and cannot carry contents"),
        BadPlan(name: "kind the platform lacks", regions: [
            PlanRegion(name: "s", range: GuestRange(start: base, size: 0x1000), contents: .zeros, kind: .secrets),
        ], message: "is a secrets region, which TDX has no page type for"),
    ]

    @Test(arguments: cases)
    func aBadPlanIsRejectedBeforeAnyIoctlNamingTheRegion(_ bad: BadPlan) throws {
        let rig = try PopulationRig(.tdx)
        do {
            _ = try rig.populate(LaunchPlan(regions: bad.regions))
            Issue.record("the plan should be rejected")
        } catch {
            #expect(error.description.contains(bad.message), "\(error)")
            #expect(rig.populationCalls == 0)
            #expect(error.populated.isEmpty && error.madePrivate.isEmpty)
        }
    }

    @Test func anUnreadableFileIsNamed() throws {
        let rig = try PopulationRig(.snp)
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "kernel", range: GuestRange(start: PopulationRig.memoryBase, size: 0x1000),
                       contents: .file(path: "/nonexistent/bzImage", offset: 0, length: 0x1000)),
        ])
        #expect(throws: PopulateError.self) { _ = try rig.populate(plan) }
        do { _ = try rig.populate(plan) } catch {
            #expect(error.description.contains("/nonexistent/bzImage"))
            #expect(rig.populationCalls == 0)
        }
    }
}

/// Forwards to a real backend but corrupts the source of one page before the
/// platform copies it, standing in for a VMM bug the measurement must catch.
final class TamperingBackend: ForwardingBackend {
    let corruptGPA: UInt64

    init(_ base: any PopulationBackend, corruptGPA: UInt64) {
        self.corruptGPA = corruptGPA
        super.init(base)
    }

    override func willPopulate(_ call: PopulateCall) {
        if call.source != 0, corruptGPA >= call.gpa, corruptGPA < call.gpa + call.pages * pageSize {
            let byte = UnsafeMutablePointer<UInt8>(bitPattern: UInt(call.source + corruptGPA - call.gpa))!
            byte.pointee ^= 0xFF
        }
    }
}

final class LockedStrings: @unchecked Sendable {
    private var strings: [String] = []
    private let lock = NSLock()
    func append(_ string: String) { lock.withLock { strings.append(string) } }
    var values: [String] { lock.withLock { strings } }
}

func hexBytes(_ text: String) -> [UInt8] { Hex.decode(text)! }

/// One PAGE_INFO step from `start`, with a given contents hash.
func expectedSNPDigest(start: [UInt8], _ pages: [(gpa: UInt64, type: UInt8, contents: [UInt8]?)], contentsHash: [UInt8]?) -> [UInt8] {
    var digest = start
    for page in pages {
        var info = digest
        info += contentsHash ?? [UInt8](repeating: 0, count: 48)
        info += [0x70, 0x00, page.type, 0, 0, 0, 0, 0]
        info += (0..<8).map { UInt8(truncatingIfNeeded: page.gpa >> (8 * $0)) }
        digest = SHA384.hash(info).bytes
    }
    return digest
}


@Suite struct PrePopulationTests {
    @Test func aHostWithTDPPreFaultsAfterTheLaunchIsFinished() throws {
        let rig = try PopulationRig(.snp)
        let populator = Populator(backend: rig.backend, memory: rig.layout, options: rig.observed)
        var result = try populator.populate(samplePlan(.snp))
        #expect(try populator.prePopulate(vcpu: rig.vcpu) == .preFaultMemory(bytes: PopulationRig.memorySize))
        try populator.prePopulate(vcpu: rig.vcpu, report: &result.report)
        #expect(result.report.description.hasSuffix("pre-population: KVM_PRE_FAULT_MEMORY over 8388608 bytes"))
        #expect(rig.kernel.count(of: .ioctl(.preFaultMemory)) >= 1)
        // The report times it as a phase of its own, over the slot's bytes.
        #expect(result.report.phaseBytes["pre-fault"] == PopulationRig.memorySize)
        #expect(result.report.phaseSeconds["pre-fault"].map { $0 > 0 } == true)
    }

    @Test(.requiresKVM(.kvm))
    func thisMachineFallsBackToMadvisePopulateWriteForMemfdRAM() throws {
        let kvm = try KVMHost.open()
        let vm = try kvm.createVM()
        let memory = try SharedMemory(size: 0x200000)
        try vm.setUserMemoryRegion(slot: 0, guestPhysicalAddress: 0, memorySize: 0x200000, userspaceAddress: memory.userspaceAddress)
        let layout = GuestMemoryLayout(slots: [.init(range: GuestRange(start: 0, size: 0x200000), sharedMemory: memory)])
        let populator = Populator(backend: PlainBackend(), memory: layout)
        let method = try populator.prePopulate(vcpu: try vm.createVCPU(id: 0))
        #expect(method == (try kvm.checkExtension(.preFaultMemory) == 0
            ? .madvisePopulateWrite(bytes: 0x200000) : .preFaultMemory(bytes: 0x200000)))
    }

    @Test(.requiresKVM(.mmap))
    func thisMachineFallsBackToMadvisePopulateWriteForPlainGuests() throws {
        let kvm = try KVMHost.open()
        let vm = try kvm.createVM()
        let memfd = try vm.createGuestMemfd(size: 0x200000, flags: [.mmap, .initShared])
        let mapping = try memfd.map()
        let layout = GuestMemoryLayout(slots: [.init(range: GuestRange(start: 0, size: 0x200000), mapping: mapping)])
        let populator = Populator(backend: PlainBackend(), memory: layout)
        let method = try populator.prePopulate(vcpu: try vm.createVCPU(id: 0))
        #expect(method == (try kvm.checkExtension(.preFaultMemory) == 0
            ? .madvisePopulateWrite(bytes: 0x200000) : .preFaultMemory(bytes: 0x200000)))
    }

    @Test func privateMemoryWithoutPreFaultIsReportedAsNotPrePopulated() throws {
        var profile = HostProfile.snpHost
        profile.tdp = false
        let fake = FakeKVM(profile: profile)
        let vm = try KVM.open(using: fake, experimental: .all).createVM(type: .snp)
        let snp = try SEVSNP(vm: vm)
        try snp.init2()
        let vcpu = try vm.createVCPU(id: 0)
        let memfd = try vm.createGuestMemfd(size: 0x200000, flags: [.mmap])
        let mapping = try memfd.map()
        let layout = GuestMemoryLayout(slots: [.init(range: GuestRange(start: 0, size: 0x200000), mapping: mapping)])
        let backend = try SNPBackend(vm: vm, snp: snp, memory: layout, vcpus: [vcpu])
        guard case .none = try Populator(backend: backend, memory: layout).prePopulate(vcpu: vcpu) else {
            Issue.record("expected no pre-population")
            return
        }
    }
}

@Suite struct PlanTextTests {
    @Test func aPlanTextReadsEveryKindOfContents() throws {
        let plan = try LaunchPlan(text: """
            # name kind gpa size contents
            kernel  normal      0x100000 0x2000 file /boot/vmlinuz 0x10 100
            config  unmeasured  524288   0x1000 hex 0a0B   # trailing comment
            stack   zero        0x90000  0x2000 zeros

            image   normal      0x200000 0x1000 file /tmp/image
            """)
        #expect(plan.regions == [
            PlanRegion(name: "kernel", range: GuestRange(start: 0x100000, size: 0x2000),
                       contents: .file(path: "/boot/vmlinuz", offset: 0x10, length: 100)),
            PlanRegion(name: "config", range: GuestRange(start: 0x80000, size: 0x1000), contents: .bytes([0x0A, 0x0B]), kind: .unmeasured),
            PlanRegion(name: "stack", range: GuestRange(start: 0x90000, size: 0x2000), contents: .zeros, kind: .zero),
            PlanRegion(name: "image", range: GuestRange(start: 0x200000, size: 0x1000),
                       contents: .file(path: "/tmp/image", offset: 0, length: 0x1000)),
        ])
    }

    @Test(arguments: [
        ("kernel blob 0x1000 0x1000 zeros", "plan line 1: unknown kind 'blob' for region 'kernel'; kinds are normal, zero, unmeasured, secrets, cpuid"),
        ("kernel normal 0x1000 zeros", "plan line 1: expected 'name kind gpa size contents', found 4 fields"),
        ("kernel normal 0x10zz 0x1000 zeros", "plan line 1: gpa '0x10zz' of region 'kernel' is not a number"),
        ("kernel normal 0x1000 0x1000 tape", "plan line 1: unknown contents 'tape' for region 'kernel'; give zeros, hex or file"),
        ("kernel normal 0x1000 0x1000 hex abc", "plan line 1: 'hex' of region 'kernel' needs one even-length string of hex digits"),
        ("kernel normal 0x1000 0x1000 hex zz", "plan line 1: 'zz' in the hex of region 'kernel' is not a byte"),
        ("kernel normal 0x1000 0x1000 zeros extra", "plan line 1: 'zeros' of region 'kernel' takes nothing after it"),
        ("kernel normal 0x1000 0x1000 file", "plan line 1: 'file' of region 'kernel' takes a path, then an optional offset and length"),
        ("# fine\nx normal 0x1000 99999999999999999999999 zeros", "plan line 2: size '99999999999999999999999' of region 'x' is not a number"),
    ])
    func aBadLineIsNamedWithWhatIsWrong(_ text: String, _ message: String) {
        #expect(throws: PlanTextError.self) { _ = try LaunchPlan(text: text) }
        do { _ = try LaunchPlan(text: text) } catch { #expect(error.description == message) }
    }

    @Test func arbitraryBytesEitherReadAsAPlanOrAreRefusedNamingTheLine() {
        var seed: UInt64 = 0x1234_5678
        var refused = 0
        for _ in 0..<2000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int(seed % 80) {
                seed = seed &* 6364136223846793005 &+ 1442695040888963407
                bytes.append([0x20, 0x0A, 0x23, 0x30, 0x78, 0x61, 0x6E, 0x7A, 0x66, 0x68, 0xFF][Int(seed >> 60) % 11])
            }
            let text = String(decoding: bytes, as: UTF8.self)
            do {
                let plan = try LaunchPlan(text: text)
                // Only blank and comment lines read as a plan from this alphabet: no line names a kind.
                #expect(plan.regions.isEmpty, "\(text.debugDescription)")
            } catch {
                refused += 1
                #expect(error.description.hasPrefix("plan line "), "\(text.debugDescription)")
                #expect(!error.description.contains("\n"))
            }
        }
        #expect(refused > 0)
    }
}
