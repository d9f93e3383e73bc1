#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import Populate

/// What `snpvmm run` was asked to do: the guest, its size and platform, and its RAM.
public struct RunOptions: Equatable, Sendable {
    public init() {}
    /// `--firmware`: an OVMF image to launch as QEMU's `-bios` does; the kernel, if any, is measured through its hashes table.
    public var firmware: String?
    /// `--plan`: a plan-text file launched as is.
    public var plan: String?
    /// `--igvm`: an IGVM file launched as QEMU's IGVM loader launches it.
    public var igvm: String?
    /// `--native-zero`: IGVM pages without data as ZERO pages.
    public var nativeZero = false
    /// `--launch-only`: stop after the launch, print its measurement.
    public var launchOnly = false
    /// `--vcpu-type`: the CPU model whose CPUID signature the VMSAs carry.
    public var vcpuType: String?
    /// `--guest-features`: the SEV features of every VMSA (sev-snp-measure's default, SNPActive).
    public var guestFeatures: UInt64 = 0x1
    /// `--id-block`, `--id-auth` and `--author-key-enabled` (QEMU's sev-snp-guest
    /// properties): what LAUNCH_FINISH checks the launch against.
    public var idBlock: [UInt8]?
    public var idAuth: [UInt8]?
    public var authorKeyEnabled = false
    /// `--no-reboot`: a confidential guest's reset ends the run instead of
    /// launching a new VM from the same plan.
    public var noReboot = false

    public var kernel: String = ""
    public var initrd: String?
    public var append: String = ""
    public var memory: UInt64 = RunOptions.defaultMemory
    public var cpus: Int = 1
    public var platform: Platform = .plain
    public var emulate = false
    public var ledger: String?
    /// Where guest RAM comes from: `--ram`.
    public var ram: RAMChoice = .auto
    /// `--help` was given: print the help and nothing else.
    public var help = false

    public static let defaultMemory: UInt64 = 256 << 20
    /// The largest `--memory` accepted.
    public static let maximumMemory: UInt64 = 1 << 40
}

/// `--ram`: the backing a user asks for.
public enum RAMChoice: String, CaseIterable, Sendable {
    /// guest_memfd where the host can map it, else a memfd.
    case auto
    case guestMemfd = "guest_memfd"
    case memfd
}

/// Running a guest: the host's fitness for it, then the machine, its memory and its run loop.
public enum GuestRun {
    /// How the guest will run on this host: its RAM backing, and a note for
    /// standard error when the backing is not the one a user would expect.
    public struct HostPlan: Equatable, Sendable {
        public var ram: RAMBacking
        public var note: String?

        public init(ram: RAMBacking, note: String? = nil) {
            self.ram = ram
            self.note = note
        }
    }

    /// Why this host cannot run the guest as asked, in one line.
    public struct HostRefusal: Error, Equatable, Sendable {
        public var message: String
    }

    /// Decides the RAM backing from `--ram` and what the host offers, or why
    /// the host cannot run the guest as asked.
    ///
    /// A plain guest, and every `--emulate` run (whose guest then runs as a
    /// plain one), runs from guest_memfd where the host can map it and from
    /// a memfd otherwise; a real SNP launch needs the SNP VM type and
    /// guest_memfd.
    public static func hostPlan(_ options: RunOptions, capabilities: HostCapabilities) -> Result<HostPlan, HostRefusal> {
        let offered = capabilities.vmTypes.map(\.name).joined(separator: ", ")
        let emulate = "(use --emulate to run over the emulated platform)"
        switch (options.platform, options.emulate) {
        case (.plain, _), (_, true):
            switch options.ram {
            case .memfd:
                return .success(HostPlan(ram: .memfd))
            case .guestMemfd:
                if let missing = capabilities.whyMissing(.guestMemfd) ?? capabilities.whyMissing(.mmap) {
                    return .failure(HostRefusal(message: "--ram guest_memfd: \(missing); a plain guest's RAM must be "
                                                    + "guest_memfd the host can write (use --ram memfd or auto)"))
                }
                return .success(HostPlan(ram: .guestMemfd))
            case .auto:
                if let missing = capabilities.whyMissing(.guestMemfd) ?? capabilities.whyMissing(.mmap) {
                    return .success(HostPlan(ram: .memfd, note: "guest RAM is a memfd mapped shared, not guest_memfd: \(missing)"))
                }
                return .success(HostPlan(ram: .guestMemfd))
            }
        case (.snp, false):
            guard capabilities.vmTypes.contains(.snp) else {
                return .failure(HostRefusal(
                    message: "--platform snp needs a host whose KVM offers \(VMType.snp.name); this host offers \(offered) \(emulate)"))
            }
            if let missing = capabilities.whyMissing(.guestMemfd) {
                return .failure(HostRefusal(message: "--platform snp keeps guest memory private in guest_memfd: \(missing)"))
            }
            return .success(HostPlan(ram: .guestMemfd))
        case (.tdx, false):
            // tdx_vcpu_create protects a TD's register state: KVM_SET_REGS is refused.
            return .failure(HostRefusal(
                message: "--platform tdx boots a TD from a TDVF firmware image whose reset vector the TDX module enters "
                    + "with registers the host cannot set; snpvmm run loads kernels directly and no firmware, "
                    + (capabilities.vmTypes.contains(.tdx) ? "so it cannot launch a TD on this host " : "and this host offers \(offered) ")
                    + emulate))
        case (.cca, false):
            return .failure(HostRefusal(
                message: "--platform cca needs an arm64 host whose KVM offers \(VMType.armRealm.name); snpvmm run boots x86 "
                    + "kernels on x86 hosts \(emulate)"))
        }
    }

    /// Why `boot` stopped before the guest ran to an end.
    public enum BootFailure: Error, CustomStringConvertible {
        case kvm(KVMError)
        case launch(LaunchError)
        case populate(PopulateFailure)
        case machine(MachineFailure)

        public var description: String {
            switch self {
            case .kvm(let error): "\(error)"
            case .launch(let error): "\(error)"
            case .populate(let failure): failure.description
            case .machine(let failure): failure.description
            }
        }

        /// An invalid plan is the images' fault, like every other layout error.
        public var isUsage: Bool {
            if case .populate(.plan) = self { return true }
            return false
        }
    }

    /// Creates the machine, fills its memory, sets the boot vCPU and runs it.
    ///
    /// - Parameter emulatedLaunch: performs `--emulate`'s launch on an
    ///   emulated platform, given the machine's slots, before the guest runs as a plain one.
    public static func boot(_ setup: BootSetup, options: RunOptions, ram: RAMBacking, kvm: KVM,
                            output: @escaping @Sendable ([UInt8]) -> Void,
                            engine: PopulateOptions = PopulateOptions(),
                            log: @escaping @Sendable (String) -> Void = { _ in },
                            emulatedLaunch: ([MemorySlot]) throws(PopulateFailure) -> Void = { _ in })
        throws(BootFailure) -> RunEnd {
        // --emulate launches on the fake first; the guest then runs as a plain one.
        let platform: Platform = options.platform == .snp && !options.emulate ? .snp : .plain
        let machine: Machine
        do {
            machine = try Machine(kvm: kvm, platform: platform, ram: ram, memorySize: options.memory,
                                  cpus: options.cpus, output: output)
        } catch {
            throw .launch(error)
        }
        do {
            try populateGuest(setup, machine: machine, options: options, engine: engine, log: log,
                              emulatedLaunch: emulatedLaunch)
        } catch {
            throw .populate(error)
        }
        if platform == .plain {
            // An SNP vCPU got its state before LAUNCH_FINISH sealed it.
            do {
                try machine.setBootState(setup.cpu)
            } catch {
                throw .kvm(error)
            }
        }
        switch machine.run() {
        case .success(let end): return end
        case .failure(let failure): throw .machine(failure)
        }
    }

    /// Fills guest memory from the launch plan. This is the single point
    /// where a platform's population engine (and its ledger) replaces the
    /// plain in-place copy.
    static func populateGuest(_ setup: BootSetup, machine: Machine, options: RunOptions, engine: PopulateOptions,
                              log: @escaping @Sendable (String) -> Void,
                              emulatedLaunch: ([MemorySlot]) throws(PopulateFailure) -> Void) throws(PopulateFailure) {
        if machine.platform == .snp {
            var engine = engine
            engine.log = log
            let result = try SNPLaunch.perform(setup, machine: machine, options: engine)
            try LaunchReport.print(result, label: "snp", ledgerPath: options.ledger, log: log)
            return
        }
        if options.emulate { try emulatedLaunch(machine.slots) }
        try machine.populatePlain(setup.plan)
    }
}
