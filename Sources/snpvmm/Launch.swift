#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import KVMFake
import Populate
import VMMCore

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
        try LaunchReport.print(result, label: "emulated \(platform.rawValue)", ledgerPath: ledgerPath, log: StandardError.log)
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
        let session = try LaunchSession(kvm: try KVM.open(using: fake, experimental: .armCCA), platform: launch)
        try session.createVCPUs(cpus)
        if launch.hostSetsBootState {
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
