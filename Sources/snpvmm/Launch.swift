#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import KVMFake
import Populate

/// The SEV-SNP launch of a machine on a host that offers SEV-SNP: the boot
/// state goes into vCPU 0 first, because LAUNCH_FINISH seals the registers
/// into the encrypted VMSA, then LAUNCH_START, the plan through the
/// population engine, and LAUNCH_FINISH.
enum SNPLaunch {
    /// The guest policy: SMT allowed (bit 16) and the must-be-one bit 17; ABI 0.0.
    static let policy: UInt64 = 0x30000

    /// `setup`'s plan with the CPUID table built from the machine's CPUID.
    static func plan(_ setup: BootSetup, machine: Machine) throws(PopulateFailure) -> LaunchPlan {
        var plan = setup.plan
        for index in plan.regions.indices where plan.regions[index].kind == .cpuid {
            do {
                plan.regions[index].contents = .bytes(try SNPCPUIDTable.page(for: machine.cpuid))
            } catch {
                throw .engine("building the SEV-SNP CPUID page: \(error)")
            }
        }
        return plan
    }

    static func perform(_ setup: BootSetup, machine: Machine) throws(PopulateFailure) -> PopulateResult {
        guard let snp = machine.snp else { throw .engine("the machine was not created for SEV-SNP") }
        let plan = try plan(setup, machine: machine)
        do {
            try Machine.apply(setup.cpu, to: machine.vcpus[0])
            try snp.launchStart(policy: policy)
        } catch {
            throw .engine("starting the SEV-SNP launch: \(error)")
        }
        let backend: SNPBackend
        do {
            backend = try SNPBackend(vm: machine.vm, snp: snp, memory: machine.memoryLayout, vcpus: machine.vcpus)
        } catch {
            throw .engine("starting the SEV-SNP launch: \(error)")
        }
        do {
            var options = PopulateOptions()
            options.log = { note in
                var standardError = StandardError()
                Swift.print("snpvmm: \(note)", to: &standardError)
            }
            options.observer = FakeKVM.behind(machine.vm.kernel)?.observer(of: machine.vm)
            // The CPUID table comes from the host's CPUID without the
            // firmware's policy applied, so take the values it accepts; the
            // log above prints each one it changed.
            options.acceptCorrectedPages = true
            return try Populator(backend: backend, memory: machine.memoryLayout, options: options).populate(plan)
        } catch {
            throw PopulateFailure(error)
        }
    }
}

/// Prints a confidential launch's measurement and report on standard error
/// and writes its ledger where asked.
enum LaunchReport {
    static func print(_ result: PopulateResult, label: String, ledgerPath: String?) throws(PopulateFailure) {
        var standardError = StandardError()
        let measurement = result.expectedMeasurement.map { Hex.encode($0) } ?? "none"
        Swift.print("snpvmm: \(label) launch measurement \(measurement)", to: &standardError)
        for line in result.report.description.split(separator: "\n") { Swift.print("snpvmm:   \(line)", to: &standardError) }
        guard let ledgerPath else { return }
        let text = Array(result.ledger.jsonLines.utf8)
        let fd = open(ledgerPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .file(path: ledgerPath, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var done = 0
        while done < text.count {
            let written = text.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
            if written < 0 {
                if errno == EINTR { continue }
                throw .file(path: ledgerPath, reason: String(cString: strerror(errno)))
            }
            done += written
        }
    }
}

/// `snpvmm run --platform snp|tdx|cca --emulate`: the confidential launch of
/// the same plan, performed by the fake platform firmware (FakeKVM) through
/// the Populate engine, before the guest runs on this host's default VM.
/// It prints the launch measurement and report on standard error, and
/// writes the ledger where asked.
enum EmulatedLaunch {
    static func perform(_ setup: BootSetup, platform: Platform, memorySize: UInt64, cpus: Int, slots: [MemorySlot],
                        ledgerPath: String?) throws(PopulateFailure) {
        let result: PopulateResult
        do {
            result = try launch(setup, platform: platform, memorySize: memorySize, cpus: cpus, slots: slots)
        } catch let error as PopulateError {
            throw PopulateFailure(error)
        } catch let error as KVMError {
            throw .engine("setting up the emulated \(platform.rawValue) launch: \(error)")
        } catch {
            throw .engine("\(error)")
        }
        try LaunchReport.print(result, label: "emulated \(platform.rawValue)", ledgerPath: ledgerPath)
    }

    /// Builds the platform's guest on the fake (VM type, platform init,
    /// vCPUs in their boot state, guest_memfd slots like the real machine's)
    /// and populates the plan through the engine, finishing the launch.
    static func launch(_ setup: BootSetup, platform: Platform, memorySize: UInt64, cpus: Int,
                       slots: [MemorySlot]) throws -> PopulateResult {
        let (profile, type): (HostProfile, VMType) = switch platform {
        case .snp: (.snpHost, .snp)
        case .tdx: (.tdxHost, .tdx)
        case .cca, .plain: (.ccaHost, .armRealm)
        }
        let fake = FakeKVM(profile: profile)
        let kvm = try KVM.open(using: fake)
        let vm = try kvm.createVM(type: type)
        var snp: SEVSNP?
        if type == .snp {
            snp = try SEVSNP(vm: vm)
            try snp!.init2()
        }
        if type == .tdx { try TDX(vm: vm).initVM(attributes: 0, xfam: 0x3) }
        var vcpus: [VCPU] = []
        for id in 0..<cpus {
            let vcpu = try vm.createVCPU(id: UInt32(id))
            if type == .tdx { try TDX(vm: vm).initVCPU(vcpu) }
            vcpus.append(vcpu)
        }
        // A TD's vCPUs start in the state the TDX module gives them; the host cannot set it.
        if type != .tdx { try Machine.apply(setup.cpu, to: vcpus[0]) }
        let memfd = try vm.createGuestMemfd(size: memorySize, flags: [.mmap])
        let mapping = try memfd.map()
        var layout: [GuestMemoryLayout.Slot] = []
        for slot in slots {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: slot.slot, guestPhysicalAddress: slot.range.start.rawValue,
                                                          mapping: mapping, offset: slot.offset, size: slot.range.size))
            layout.append(.init(range: slot.range, mapping: mapping, fileOffset: slot.offset))
        }
        let memory = GuestMemoryLayout(slots: layout)
        let backend: any PopulationBackend
        switch type {
        case .snp:
            // SMT allowed, the reserved bit set, ABI 0.0.
            try snp!.launchStart(policy: 0x30000)
            backend = try SNPBackend(vm: vm, snp: snp!, memory: memory, vcpus: vcpus)
        case .tdx: backend = try TDXBackend(vm: vm, tdx: TDX(vm: vm), vcpu: vcpus[0], memory: memory)
        default: backend = CCABackend(vm: vm, vcpus: vcpus)
        }
        var options = PopulateOptions()
        options.observer = fake.observer(of: vm)
        return try Populator(backend: backend, memory: memory, options: options).populate(setup.plan)
    }
}
