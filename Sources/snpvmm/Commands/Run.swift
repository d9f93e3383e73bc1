#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import Populate

/// The platforms `snpvmm run` can populate a guest for.
enum Platform: String, CaseIterable, Sendable {
    case plain, snp, tdx, cca

    /// The VM type a host must offer for the platform.
    var vmType: VMType {
        switch self {
        case .plain: .default
        case .snp: .snp
        case .tdx: .tdx
        case .cca: .armRealm
        }
    }
}

/// The parsed command line of `snpvmm run`.
struct RunOptions: Equatable, Sendable {
    var kernel: String = ""
    var initrd: String?
    var append: String = ""
    var memory: UInt64 = RunOptions.defaultMemory
    var cpus: Int = 1
    var platform: Platform = .plain
    var emulate = false
    var ledger: String?
    /// Where guest RAM comes from: `--ram`.
    var ram: RAMChoice = .auto
    /// `--help` was given: print the help and nothing else.
    var help = false

    static let defaultMemory: UInt64 = 256 << 20
    /// The largest `--memory` accepted.
    static let maximumMemory: UInt64 = 1 << 40
}

/// `--ram`: the backing a user asks for.
enum RAMChoice: String, CaseIterable, Sendable {
    /// guest_memfd where the host can map it, else a memfd.
    case auto
    case guestMemfd = "guest_memfd"
    case memfd
}

/// A command-line mistake: one line, exit status 2.
struct RunUsageError: Error, Equatable, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// `snpvmm run`: boots a kernel from memory that is filled before the
/// first instruction runs (guest_memfd, or a memfd on hosts without it),
/// with a serial console on standard output.
enum RunCommand {
    static let summary = """
        run --kernel FILE ...
                            boot a kernel (PVH ELF or bzImage) from prepopulated
                            memory (guest_memfd, or memfd where KVM has none);
                            see run --help
        """

    static let help = """
        usage: snpvmm run --kernel FILE [--initrd FILE] [--append STR] [--memory SIZE]
                          [--cpus N] [--platform plain|snp|tdx|cca] [--emulate] [--ledger FILE]
                          [--ram auto|guest_memfd|memfd]

        Boots a kernel on this host's KVM from memory that snpvmm fills in place
        before the guest's first instruction: guest_memfd where the host's KVM can
        map it, otherwise a memfd mapped shared. The guest's serial port is this
        process's standard output.

          --kernel FILE     the kernel, as QEMU's -kernel: an ELF64 executable with a
                            Xen PVH entry note (entered in 32-bit protected mode with
                            hvm_start_info in %ebx), or a Linux bzImage (entered through
                            the 64-bit boot protocol with boot_params in %rsi)
          --initrd FILE     an initial ramdisk, as QEMU's -initrd: PVH module 0, or the
                            bzImage's ramdisk; placed at the top of RAM below 4 GiB
          --append STR      the kernel command line, as QEMU's -append (default empty)
          --memory SIZE     guest RAM, as QEMU's -m: a number of MiB, or a number with
                            the suffix K, M, G or T (default 256M)
          --cpus N          vCPUs, as QEMU's -smp, 1 to 32 (default 1)
          --platform NAME   plain (default), snp, tdx or cca: the platform whose launch
                            populates guest memory. snp on a host whose KVM offers
                            SEV-SNP launches and runs the guest as an SNP guest (the
                            kernel must support SEV-SNP); tdx and cca need --emulate
          --emulate         with snp, tdx or cca, launch the plan on the emulated
                            platform first, print its launch measurement, then
                            run the guest on this host's default VM
          --ledger FILE     write every launch operation, with page hashes and the
                            running digest, to FILE as JSON lines
          --ram KIND        guest RAM: guest_memfd (needs KVM_CAP_GUEST_MEMFD with
                            MMAP|INIT_SHARED), memfd (a memfd mapped shared, as
                            QEMU's memory-backend-memfd; any KVM), or auto (default:
                            guest_memfd where the host offers it, saying so on
                            standard error when it does not). A real snp launch
                            always uses guest_memfd
          --help            show this text

        Devices: an 8250 UART at 0x3f8 (IRQ 4) writing to standard output; QEMU's
        isa-debug-exit at port 0xf4; the i8042's reset line; the in-kernel PIC,
        IOAPIC, local APICs and PIT; an MP table listing the vCPUs.

        The run ends when the guest writes v to port 0xf4 (exit status (v << 1) | 1),
        resets through the i8042, triple-faults, or has every vCPU halted with
        interrupts off (exit status 0). Exit status 1: the host cannot run the guest;
        2: the command line or an image is wrong.
        """

    static func run(_ arguments: [String]) -> ExitCode {
        let options: RunOptions
        do {
            options = try parse(arguments)
        } catch {
            fail("run: \(error.description)", status: .usage)
        }
        if options.help {
            print(help)
            return .success
        }
        let setup: BootSetup
        do {
            setup = try load(options)
        } catch {
            fail("run: \(error.message(kernel: options.kernel))", status: .usage)
        }
        let kernel: any KernelInterface
        do {
            kernel = try FeatureHidingKernel.hostKernel()
        } catch {
            fail("run: \(FeatureHidingKernel.environmentVariable): \(error)", status: .usage)
        }
        let kvm: KVM
        let ram: RAMBacking
        do {
            kvm = try KVM.open(using: kernel)
            switch hostPlan(options, capabilities: try kvm.capabilities()) {
            case .success(let plan):
                ram = plan.ram
                if let note = plan.note {
                    var standardError = StandardError()
                    print("snpvmm: \(note)", to: &standardError)
                }
            case .failure(let problem):
                fail(problem.message, status: problem.status)
            }
        } catch {
            fail("\(error)")
        }
        let end: RunEnd
        do {
            end = try boot(setup, options: options, ram: ram, kvm: kvm, output: StandardOutput.write)
        } catch {
            fail(error.isUsage ? "run: \(error.description)" : error.description, status: error.isUsage ? .usage : .failure)
        }
        switch end {
        case .debugExit(let value):
            exit(DebugExit.exitStatus(for: value))
        case .tripleFault:
            var standardError = StandardError()
            print("snpvmm: the guest triple-faulted (KVM_EXIT_SHUTDOWN); the run is over", to: &standardError)
            return .success
        case .i8042Reset, .haltedWithInterruptsOff, .systemEvent:
            return .success
        }
    }

    // MARK: Command line

    /// Parses `--flag value` and `--flag=value` forms.
    static func parse(_ arguments: [String]) throws(RunUsageError) -> RunOptions {
        var options = RunOptions()
        var seen: Set<String> = []
        var kernel: String?
        var index = 0
        while index < arguments.count {
            var argument = arguments[index]
            var inlineValue: String?
            if argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") {
                inlineValue = String(argument[argument.index(after: equals)...])
                argument = String(argument[..<equals])
            }
            index += 1
            func value() throws(RunUsageError) -> String {
                if let inlineValue { return inlineValue }
                guard index < arguments.count else { throw RunUsageError("\(argument) needs a value") }
                index += 1
                return arguments[index - 1]
            }
            if argument == "--help" || argument == "-h" {
                options.help = true
                return options
            }
            let flags = ["--kernel", "--initrd", "--append", "--memory", "--cpus", "--platform", "--emulate", "--ledger", "--ram"]
            guard flags.contains(argument) else {
                throw RunUsageError("unknown option '\(arguments[index - 1])' (see snpvmm run --help)")
            }
            guard seen.insert(argument).inserted else { throw RunUsageError("\(argument) is given twice") }
            switch argument {
            case "--kernel": kernel = try value()
            case "--initrd": options.initrd = try value()
            case "--append": options.append = try value()
            case "--memory":
                let text = try value()
                options.memory = try parseMemorySize(text)
            case "--cpus":
                let text = try value()
                guard let cpus = Int(text), (1...MPTable.maximumCPUs).contains(cpus) else {
                    throw RunUsageError("--cpus '\(text)' is not a number from 1 to \(MPTable.maximumCPUs)")
                }
                options.cpus = cpus
            case "--platform":
                let text = try value()
                guard let platform = Platform(rawValue: text) else {
                    throw RunUsageError("--platform '\(text)' is not one of plain, snp, tdx, cca")
                }
                options.platform = platform
            case "--emulate":
                if inlineValue != nil { throw RunUsageError("--emulate takes no value") }
                options.emulate = true
            case "--ram":
                let text = try value()
                guard let ram = RAMChoice(rawValue: text) else {
                    throw RunUsageError("--ram '\(text)' is not one of \(RAMChoice.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                options.ram = ram
            default:  // --ledger
                options.ledger = try value()
            }
        }
        guard let kernel else { throw RunUsageError("--kernel FILE is required (see snpvmm run --help)") }
        options.kernel = kernel
        if options.emulate && options.platform == .plain {
            throw RunUsageError("--emulate applies to --platform snp, tdx or cca")
        }
        if options.ledger != nil && options.platform == .plain {
            throw RunUsageError("--ledger accounts for a confidential launch; give --platform snp, tdx or cca")
        }
        if options.ram == .memfd && options.platform == .snp && !options.emulate {
            throw RunUsageError("--ram memfd holds no private memory; an SEV-SNP launch needs guest_memfd (or --emulate)")
        }
        return options
    }

    /// Parses a `--memory` size the way QEMU's `-m` reads one: a whole
    /// number of MiB, or a whole number with the suffix K, M, G or T
    /// (either case, optionally followed by "iB" or "B"). The result must
    /// be a multiple of 4 KiB, at least 2 MiB and at most 1 TiB.
    static func parseMemorySize(_ text: String) throws(RunUsageError) -> UInt64 {
        let bytes: UInt64
        switch SizeArgument(text, bareUnitShift: 20) {
        case .bytes(let value) where value <= RunOptions.maximumMemory: bytes = value
        case .bytes, .tooLarge: throw RunUsageError("--memory '\(text)' is more than the 1 TiB snpvmm gives a guest")
        case .malformed:
            throw RunUsageError("--memory '\(text)' is not a size: give a number of MiB, or a number with the suffix K, M, G or T")
        }
        guard bytes >= Layout.minimumMemory else { throw RunUsageError("--memory '\(text)' is less than the 2 MiB a guest needs") }
        guard bytes % pageSize == 0 else { throw RunUsageError("--memory '\(text)' is not a multiple of 4 KiB") }
        return bytes
    }

    // MARK: Steps

    /// Opens the images and lays out the guest; nothing is created yet.
    static func load(_ options: RunOptions) throws(ImageError) -> BootSetup {
        let kernel = try ImageSource(path: options.kernel, role: "kernel")
        let initrd = try options.initrd.map { (path) throws(ImageError) in try ImageSource(path: path, role: "initrd") }
        // --emulate boots the guest as a plain one, so only a real SNP launch gets the SNP pages.
        return try Loader.load(BootRequest(kernel: kernel, initrd: initrd, commandLine: options.append,
                                           memorySize: options.memory, cpus: options.cpus,
                                           snp: options.platform == .snp && !options.emulate))
    }

    /// How the guest will run on this host: its RAM backing, and a note for
    /// standard error when the backing is not the one a user would expect.
    struct HostPlan: Equatable {
        var ram: RAMBacking
        var note: String?
    }

    /// Why this host cannot run the guest as asked: one line and an exit status.
    struct HostRefusal: Error, Equatable {
        var message: String
        var status: ExitCode
    }

    /// Decides the RAM backing from `--ram` and what the host offers, or why
    /// the host cannot run the guest as asked.
    ///
    /// A plain guest, and every `--emulate` run (whose guest then runs as a
    /// plain one), runs from guest_memfd where the host can map it and from
    /// a memfd otherwise; a real SNP launch needs the SNP VM type and
    /// guest_memfd.
    static func hostPlan(_ options: RunOptions, capabilities: HostCapabilities) -> Result<HostPlan, HostRefusal> {
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
                                                    + "guest_memfd the host can write (use --ram memfd or auto)", status: .failure))
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
                    message: "--platform snp needs a host whose KVM offers \(VMType.snp.name); this host offers \(offered) \(emulate)",
                    status: .failure))
            }
            if let missing = capabilities.whyMissing(.guestMemfd) {
                return .failure(HostRefusal(message: "--platform snp keeps guest memory private in guest_memfd: \(missing)",
                                            status: .failure))
            }
            return .success(HostPlan(ram: .guestMemfd))
        case (.tdx, false):
            // tdx_vcpu_create protects a TD's register state: KVM_SET_REGS is refused.
            return .failure(HostRefusal(
                message: "--platform tdx boots a TD from a TDVF firmware image whose reset vector the TDX module enters "
                    + "with registers the host cannot set; snpvmm run loads kernels directly and no firmware, "
                    + (capabilities.vmTypes.contains(.tdx) ? "so it cannot launch a TD on this host " : "and this host offers \(offered) ")
                    + emulate, status: .failure))
        case (.cca, false):
            return .failure(HostRefusal(
                message: "--platform cca needs an arm64 host whose KVM offers \(VMType.armRealm.name); snpvmm run boots x86 "
                    + "kernels on x86 hosts \(emulate)", status: .failure))
        }
    }

    /// Why `boot` stopped before the guest ran to an end.
    enum BootFailure: Error, CustomStringConvertible {
        case kvm(KVMError)
        case launch(LaunchError)
        case populate(PopulateFailure)
        case machine(MachineFailure)

        var description: String {
            switch self {
            case .kvm(let error): "\(error)"
            case .launch(let error): "\(error)"
            case .populate(let failure): failure.description
            case .machine(let failure): failure.description
            }
        }

        /// An invalid plan is the images' fault, like every other layout error.
        var isUsage: Bool {
            if case .populate(.plan) = self { return true }
            return false
        }
    }

    /// Creates the machine, fills its memory, sets the boot vCPU and runs it.
    static func boot(_ setup: BootSetup, options: RunOptions, ram: RAMBacking, kvm: KVM,
                     output: @escaping @Sendable ([UInt8]) -> Void) throws(BootFailure) -> RunEnd {
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
            try populateGuest(setup, machine: machine, options: options)
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
    static func populateGuest(_ setup: BootSetup, machine: Machine, options: RunOptions) throws(PopulateFailure) {
        if machine.platform == .snp {
            let result = try SNPLaunch.perform(setup, machine: machine)
            try LaunchReport.print(result, label: "snp", ledgerPath: options.ledger)
            return
        }
        if options.emulate {
            try EmulatedLaunch.perform(setup, platform: options.platform, memorySize: options.memory, cpus: options.cpus,
                                       slots: machine.slots, ledgerPath: options.ledger)
        }
        try machine.populatePlain(setup.plan)
    }
}

/// Standard output without buffering, for the guest's serial bytes: each
/// byte reaches the reader as the guest sends it.
enum StandardOutput {
    @Sendable static func write(_ bytes: [UInt8]) {
        var done = 0
        while done < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.write(1, $0.baseAddress! + done, $0.count - done) }
            if written < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return  // standard output is gone; the guest carries on unheard
            }
            done += written
        }
    }
}
