import CKVMHeaders
import GuestMemfd
import LaunchMeasurement
import KVMFake
import Populate
import VMMCore
import Synchronization
import Testing

/// `snpvmm run --platform snp` on a host that offers SEV-SNP: the machine,
/// its launch and its run loop, driven over the fake kernel's SNP host
/// profile, whose vCPUs run scripted guests.
@Suite struct SNPMachineTests {
    static let memory: UInt64 = 16 << 20
    /// snpvmm run's choice: the host's CPUID, as the firmware corrects it.
    static var acceptingCorrections: PopulateOptions {
        var options = PopulateOptions()
        options.acceptCorrectedPages = true
        return options
    }
    let fake = FakeKVM(profile: .snpHost)
    let kernel: FaultInjectingKernel
    let kvm: KVM
    let console = Console()

    final class Console: Sendable {
        private let bytes = Mutex<[UInt8]>([])
        func write(_ data: [UInt8]) { bytes.withLock { $0 += data } }
        var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
    }

    init() throws {
        kernel = FaultInjectingKernel(fake)
        kvm = try KVM.open(using: kernel)
    }

    func setup(cpus: Int = 1) throws -> BootSetup {
        try Loader.load(BootRequest(kernel: ImageSource(bytes: ELFBuilder.pvh([0xF4]).build()), initrd: nil,
                                    commandLine: "console=ttyS0", memorySize: Self.memory, cpus: cpus, snp: true))
    }

    func machine(cpus: Int = 1) throws -> Machine {
        let console = console
        return try Machine(kvm: kvm, platform: .snp, memorySize: Self.memory, cpus: cpus, output: { console.write($0) })
    }

    @Test func theLaunchMeasuresThePlanAndEveryVCPUsBootStateThenSealsTheRegisters() throws {
        let setup = try setup(cpus: 2)
        let machine = try machine(cpus: 2)
        // The VMSAs the launch must measure: vCPU 0 in the boot state, vCPU 1 as created.
        try Machine.apply(setup.cpu, to: machine.vcpus[0])
        let vmsas = try machine.vcpus.map { SNPVMSA(regs: try $0.getRegs(), sregs: try $0.getSregs(), sevFeatures: snpActive).page }
        let plan = try SNPLaunch.plan(setup, machine: machine)
        let expected = try plan.expectedSNPLaunchDigest(vmsas: vmsas).bytes
        // The CPUID, secrets and CC blob pages are measured with their page types.
        #expect(plan.regions.filter { $0.kind == .cpuid }.map(\.range.start.rawValue) == [Layout.snpCPUIDPage])
        #expect(plan.regions.filter { $0.kind == .secrets }.map(\.range.start.rawValue) == [Layout.snpSecretsPage])

        var options = Self.acceptingCorrections
        options.observer = fake.observer(of: machine.vm)
        let result = try SNPLaunch.perform(setup, machine: machine, options: options)
        #expect(result.expectedMeasurement == expected)
        #expect(result.reportedMeasurement == expected)
        #expect(fake.snpReportFields(of: machine.vm)?.policy == 0x30000)
        // Separate source on this profile: every page of RAM was made private before the launch.
        #expect(result.report.policy == .separateSource)
        #expect(machine.sharedMemory != nil)
        #expect(kvmError { _ = try machine.vcpus[0].getRegs() }?.errno == .invalidArgument)
    }

    @Test func byDefaultAMachinesCPUIDTableTheFirmwareCorrectsFailsTheLaunch() throws {
        let machine = try machine()
        let setup = try setup()
        do {
            _ = try SNPLaunch.perform(setup, machine: machine)
            Issue.record("the library default refuses the firmware's corrections, as QEMU does")
        } catch {
            guard case .populate(let populateError) = error, case .firmwareCorrected = populateError.reason else {
                Issue.record("expected a firmware correction, got \(error)")
                return
            }
        }
    }

    @Test func anInterruptTheSerialPortCannotRaiseEndsTheRunWithTheKVMError() throws {
        let machine = try machine()
        _ = try SNPLaunch.perform(try setup(), machine: machine, options: Self.acceptingCorrections)
        fake.program(machine.vcpus[0], [
            .portOut(port: 0x3F9, bytes: [0x02]),  // IER: interrupt when the transmitter is empty
            .portOut(port: 0x3F8, bytes: [0x41]),
            .portOut(port: 0xF4, bytes: [0x21]),
        ])
        kernel.inject(.ioError, into: .ioctl(.irqLine))
        guard case .failure(.kvm(let error)) = machine.run() else {
            Issue.record("a refused KVM_IRQ_LINE must end the run")
            return
        }
        #expect(error.operation == .ioctl(.irqLine) && error.errno == .ioError)
    }

    @Test func theRunLoopConvertsMemoryAtTheGuestsRequestAndEndsAtDebugExit() throws {
        let machine = try machine()
        _ = try SNPLaunch.perform(try setup(), machine: machine, options: Self.acceptingCorrections)
        let sharedByHypercall: UInt64 = 0x80_0000, sharedByFault: UInt64 = 0x90_0000, privatePage: UInt64 = 0xA0_0000
        fake.program(machine.vcpus[0], [
            .portOut(port: 0x3F8, bytes: Array("OK".utf8.prefix(1))),
            .portOut(port: 0x3F8, bytes: Array("OK".utf8.suffix(1))),
            // A page-state change through the GHCB reaches the VMM as KVM_HC_MAP_GPA_RANGE.
            .mapGPARange(gpa: sharedByHypercall, pages: 2, toPrivate: false),
            .write(gpa: sharedByHypercall + 0x1010, bytes: [1, 2, 3], isPrivate: false),
            // A shared access to a private page: KVM_EXIT_MEMORY_FAULT, converted, retried.
            .write(gpa: sharedByFault, bytes: [9, 8], isPrivate: false),
            .write(gpa: privatePage, bytes: [7], isPrivate: true),
            .read(gpa: privatePage, count: 1, isPrivate: true),
            .portOut(port: 0xF4, bytes: [0x21]),
        ])
        let attributeCalls = kernel.count(of: .ioctl(.setMemoryAttributes))
        let punches = kernel.count(of: .syscall(.fallocate))

        #expect(try machine.run().get() == .debugExit(value: 0x21))
        #expect(console.text == "OK")
        // The shared writes landed in the shared side of the slots, not in guest_memfd.
        let shared = try #require(machine.sharedMemory)
        #expect(Array(UnsafeRawBufferPointer(start: shared.base + Int(sharedByHypercall) + 0x1010, count: 3)) == [1, 2, 3])
        #expect(Array(UnsafeRawBufferPointer(start: shared.base + Int(sharedByFault), count: 2)) == [9, 8])
        #expect(fake.guestReads(machine.vcpus[0]) == [[7]])
        // One conversion per request, and the private pages made shared punched out of guest_memfd.
        #expect(kernel.count(of: .ioctl(.setMemoryAttributes)) == attributeCalls + 2)
        #expect(kernel.count(of: .syscall(.fallocate)) == punches + 2)
    }

    @Test func mapGPARangeRefusesRangesOutsideRAM() throws {
        let machine = try machine()
        #expect(machine.mapGPARange([Layout.ioapic, 1, 0, 0, 0, 0]) == -Int64(EINVAL))
        #expect(machine.mapGPARange([Self.memory - 0x1000, 2, 0, 0, 0, 0]) == -Int64(EINVAL))
        #expect(machine.mapGPARange([0x10_0000, 0, 0, 0, 0, 0]) == -Int64(EINVAL))
        #expect(machine.mapGPARange([0x10_0000, 4, CKVM_MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0]) == 0)
        #expect(machine.mapGPARange([0x10_0000, 4, 0, 0, 0, 0]) == 0)
    }

    @Test func tdxAndCCAOnHostsThatOfferThemNameWhyTheyNeedEmulation() throws {
        var options = RunOptions()
        options.platform = .tdx
        let tdxHost = try KVM.open(using: FakeKVM(profile: .tdxHost)).capabilities()
        let tdx = try #require(GuestRun.hostPlan(options, capabilities: tdxHost).refusal)
        #expect(tdx.message.contains("TDVF") && tdx.message.contains("cannot launch a TD on this host"))
        #expect(tdx.message.hasSuffix("(use --emulate to run over the emulated platform)"))
        options.platform = .cca
        let cca = try #require(GuestRun.hostPlan(options, capabilities: try KVM.open(using: FakeKVM(profile: .ccaHost)).capabilities()).refusal)
        #expect(cca.message.contains("arm64"))
        options.platform = .snp
        #expect(GuestRun.hostPlan(options, capabilities: try KVM.open(using: FakeKVM(profile: .snpHost)).capabilities())
                == .success(GuestRun.HostPlan(ram: .guestMemfd)))
        options.emulate = true
        options.platform = .tdx
        #expect(GuestRun.hostPlan(options, capabilities: tdxHost) == .success(GuestRun.HostPlan(ram: .guestMemfd)))
    }

    @Test func anSNPLayoutReservesItsPagesAndPointsBootParamsAtTheCCBlob() throws {
        let request = BootRequest(kernel: ImageSource(bytes: BzImageBuilder().build()), memorySize: 64 << 20, snp: true)
        let setup = try Loader.load(request)
        #expect(setup.memoryMap.contains(MemoryMapEntry(start: Layout.snpCPUIDPage, size: 0x3000, type: .reserved)))
        #expect(!setup.memoryMap.contains { $0.type == .ram && $0.start < Layout.snpCCBlob + 0x1000 && $0.start + $0.size > Layout.snpCPUIDPage })
        guard case .bytes(let bootParams) = try #require(setup.plan.regions.first { $0.name == "boot_params" }).contents,
              case .bytes(let blob) = try #require(setup.plan.regions.first { $0.name == "SNP CC blob" }).contents
        else {
            Issue.record("boot_params and the CC blob carry bytes")
            return
        }
        func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * $1) } }
        func u64(_ bytes: [UInt8], _ at: Int) -> UInt64 { UInt64(u32(bytes, at)) | UInt64(u32(bytes, at + 4)) << 32 }
        #expect(u32(bootParams, 0x13C) == UInt32(Layout.snpCCBlob))
        #expect(u32(blob, 0) == 0x4544_4D41)
        #expect(u64(blob, 8) == Layout.snpSecretsPage && u32(blob, 16) == 4096)
        #expect(u64(blob, 24) == Layout.snpCPUIDPage && u32(blob, 32) == 4096)
        // A plain layout has none of it.
        var plain = request
        plain.snp = false
        let plainSetup = try Loader.load(plain)
        #expect(!plainSetup.plan.regions.contains { $0.kind == .cpuid || $0.kind == .secrets })
        #expect(plainSetup.memoryMap.first == MemoryMapEntry(start: 0, size: Layout.ebda, type: .ram))
    }

    @Test func theCPUIDTableHoldsEveryLeafAndDescribesTheInitialXSAVEArea() throws {
        var leaf7 = kvm_cpuid_entry2()
        leaf7.function = 7
        leaf7.index = 1
        leaf7.flags = SNPCPUIDTable.significantIndex
        leaf7.ebx = 0xABCD
        var xsave = kvm_cpuid_entry2()
        xsave.function = 0xD
        xsave.flags = SNPCPUIDTable.significantIndex
        xsave.ebx = 0x988
        var plain = kvm_cpuid_entry2()
        plain.function = 0x8000_0001
        plain.index = 5  // ignored: the index is not significant
        plain.edx = 0x1234
        let page = try SNPCPUIDTable.page(for: [leaf7, xsave, plain])
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(page[at + $1]) << (8 * $1) } }
        #expect(u32(0) == 3)
        #expect(u32(16) == 7 && u32(20) == 1 && u32(16 + 28) == 0xABCD && u32(16 + 8) == 0)
        #expect(u32(64) == 0xD && u32(64 + 8) == 1 && u32(64 + 28) == 0x240)
        #expect(u32(112) == 0x8000_0001 && u32(116) == 0 && u32(112 + 36) == 0x1234)
        #expect(throws: SNPCPUIDTable.TooManyEntries.self) {
            _ = try SNPCPUIDTable.page(for: [kvm_cpuid_entry2](repeating: plain, count: 65))
        }
    }
}

extension Result where Success == GuestRun.HostPlan, Failure == GuestRun.HostRefusal {
    /// The refusal, nil where the host can run the guest.
    var refusal: GuestRun.HostRefusal? {
        if case .failure(let refusal) = self { return refusal }
        return nil
    }
}
