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
    /// QEMU's defaults: policy 0x30000 (SMT allowed, ABI 0.0), no VMSA features.
    static let parameters = SNPLaunchParameters()

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
        guard machine.snp != nil else { throw .engine("the machine was not created for SEV-SNP") }
        let plan = try plan(setup, machine: machine)
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
        do {
            let (regs, sregs) = try Machine.registers(for: setup.cpu, from: machine.vcpus[0])
            try machine.session.setBootState(regs: regs, sregs: sregs)
            return try machine.session.populate(plan, options: options)
        } catch let error as LaunchError {
            throw PopulateFailure(error, context: "starting the SEV-SNP launch")
        } catch {
            throw .engine("starting the SEV-SNP launch: \(error)")
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
        } catch let error as LaunchError {
            throw PopulateFailure(error, context: "setting up the emulated \(platform.rawValue) launch")
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
        let (profile, launch): (HostProfile, LaunchPlatform) = switch platform {
        case .snp: (.snpHost, .snp(SNPLaunchParameters()))
        case .tdx: (.tdxHost, .tdx(TDXLaunchParameters()))
        case .cca, .plain: (.ccaHost, .cca(CCABackend.defaultParameters))
        }
        let fake = FakeKVM(profile: profile)
        let session = try LaunchSession(kvm: try KVM.open(using: fake), platform: launch)
        try session.createVCPUs(cpus)
        // A TD's vCPUs start in the state the TDX module gives them; the host cannot set it.
        if platform != .tdx {
            let (regs, sregs) = try Machine.registers(for: setup.cpu, from: session.vcpus[0])
            try session.setBootState(regs: regs, sregs: sregs)
        }
        let vm = session.vm
        let memfd = try vm.createGuestMemfd(size: memorySize, flags: [.mmap])
        let mapping = try memfd.map()
        for slot in slots {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: slot.slot, guestPhysicalAddress: slot.range.start.rawValue,
                                                          mapping: mapping, offset: slot.offset, size: slot.range.size))
            try session.addMemory(.init(range: slot.range, mapping: mapping, fileOffset: slot.offset))
        }
        var options = PopulateOptions()
        options.observer = fake.observer(of: vm)
        return try session.populate(setup.plan, options: options)
    }
}
