#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import LaunchMeasurement
import Populate
import VMMCore

extension Platform {
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
                          [--ram auto|guest_memfd|memfd] [--no-reboot]
           snpvmm run --plan FILE --platform snp|tdx|cca --launch-only [--emulate] [--cpus N]
                      [--vcpu-type NAME] [--memory SIZE] [--ledger FILE]
           snpvmm run --igvm FILE --platform snp --launch-only [--emulate] [--native-zero] [--memory SIZE]
                      [--append STR] [--ledger FILE] [--id-block B64 --id-auth B64]
           snpvmm run --firmware TDVF.fd --platform tdx --launch-only [--emulate] [--cpus N]
                      [--memory SIZE] [--ledger FILE]
           snpvmm run --firmware OVMF.fd --platform snp --launch-only --vcpu-type NAME [--emulate]
                      [--cpus N] [--memory SIZE] [--guest-features V] [--ledger FILE]
                      [--kernel FILE [--initrd FILE] [--append STR]]
                      [--id-block B64 --id-auth B64 [--author-key-enabled]]

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
          --no-reboot       end the run when a confidential guest resets; without it,
                            snpvmm destroys the VM and launches a new one from the
                            same plan, as QEMU does for SNP and TDX guests
          --firmware FILE   an OVMF image launched as QEMU's -bios does for SEV-SNP: the
                            image ending at 4 GiB, its SEV metadata sections, the
                            hashes of --kernel, --initrd and --append where the image
                            has a kernel-hashes section, one VMSA per vCPU of
                            --vcpu-type; with --launch-only the launch measurement is
                            printed as sev-snp-measure prints it. With --platform tdx,
                            a TDVF image launched as QEMU does: its BFV and CFV (MR.EXTEND
                            where marked), TD_HOB holding the hand-off list of guest RAM,
                            TEMP_MEM zeros; MRTD is printed as measure --mode tdx prints it
          --plan FILE       a launch plan in plan-text format, launched as it is on the
                            platform: nothing added but the VMSAs (SNP, vCPUs in
                            their reset state) or the boot REC (CCA); with
                            --launch-only the measurement is printed
          --igvm FILE       an IGVM file launched as QEMU's IGVM loader launches it for
                            SEV-SNP: its directives in QEMU's order, parameter areas
                            filled (vCPU count, memory map, --append, environment info)
                            and inserted unmeasured, the boot vCPU from the file's VMSA;
                            with --launch-only the measurement is printed as
                            measure --igvm prints it
          --native-zero     with --igvm, pages without data are ZERO pages
          --id-block B64    with --id-auth B64, an SEV-SNP ID block and its signatures
                            (QEMU's sev-snp-guest id-block and id-auth; snpvmm id-block
                            makes them) given to LAUNCH_FINISH, which refuses the launch
                            unless the block names its measurement and policy and its
                            signature verifies: firmware or plan launches only
          --author-key-enabled
                            the firmware also checks the author key's signature over
                            the ID key and reports the author key's digest
          --help            show this text

        Devices: an 8250 UART at 0x3f8 (IRQ 4) writing to standard output; QEMU's
        isa-debug-exit at port 0xf4; the i8042's reset line; the in-kernel PIC,
        IOAPIC, local APICs and PIT; an MP table listing the vCPUs.

        The run ends when the guest writes v to port 0xf4 (exit status (v << 1) | 1),
        resets through the i8042, triple-faults, or has every vCPU halted with
        interrupts off (exit status 0). A confidential guest's reset (--platform snp,
        tdx or cca) launches it again instead, unless --no-reboot is given. Exit status 1: the host cannot run the guest;
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
        if options.igvm != nil { return IGVMRun.run(options) }
        if options.firmware != nil { return FirmwareRun.run(options) }
        if options.plan != nil { return PlanRun.run(options) }
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
            switch GuestRun.hostPlan(options, capabilities: try kvm.capabilities()) {
            case .success(let plan):
                ram = plan.ram
                if let note = plan.note { StandardError.log(note) }
            case .failure(let problem):
                fail(problem.message)
            }
        } catch {
            fail("\(error)")
        }
        var end: RunEnd
        do {
            // The CPUID table comes from the host's CPUID without the firmware's
            // policy applied, so a real SNP launch takes the values the firmware
            // accepts; each one it changes is printed.
            var engine = PopulateOptions()
            engine.acceptCorrectedPages = true
            while true {
                end = try GuestRun.boot(setup, options: options, ram: ram, kvm: kvm, output: StandardOutput.write,
                                        engine: engine, log: StandardError.log) { (slots) throws(PopulateFailure) in
                    try EmulatedLaunch.perform(setup, platform: options.platform, memorySize: options.memory, cpus: options.cpus,
                                               slots: slots, ledgerPath: options.ledger)
                }
                // A confidential guest's memory cannot be reset in place: its pages
                // are private and its launch is finished. As QEMU does for SNP and
                // TDX guests, the VM is destroyed and a new one launched from the
                // same plan, which measures the same.
                guard end.isReset, options.platform != .plain, !options.noReboot else { break }
                StandardError.log("the guest reset (\(end.summary)); launching a new VM from the same plan (--no-reboot ends the run instead)")
            }
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

    static let parser = ArgumentParser(options: [
        ArgumentParser.help,
        OptionSpec(names: ["--kernel"], takesValue: true), OptionSpec(names: ["--initrd"], takesValue: true),
        OptionSpec(names: ["--append"], takesValue: true), OptionSpec(names: ["--memory"], takesValue: true),
        OptionSpec(names: ["--cpus"], takesValue: true), OptionSpec(names: ["--platform"], takesValue: true),
        OptionSpec(names: ["--emulate"], takesValue: false), OptionSpec(names: ["--ledger"], takesValue: true),
        OptionSpec(names: ["--ram"], takesValue: true), OptionSpec(names: ["--firmware"], takesValue: true),
        OptionSpec(names: ["--launch-only"], takesValue: false), OptionSpec(names: ["--vcpu-type"], takesValue: true),
        OptionSpec(names: ["--guest-features"], takesValue: true), OptionSpec(names: ["--plan"], takesValue: true),
        OptionSpec(names: ["--id-block"], takesValue: true), OptionSpec(names: ["--id-auth"], takesValue: true),
        OptionSpec(names: ["--author-key-enabled"], takesValue: false), OptionSpec(names: ["--no-reboot"], takesValue: false),
        OptionSpec(names: ["--igvm"], takesValue: true), OptionSpec(names: ["--native-zero"], takesValue: false),
    ], dialect: .snpvmm(command: "run"))

    /// Reads the command line; `--flag value` and `--flag=value` both work.
    static func parse(_ arguments: [String]) throws(UsageError) -> RunOptions {
        let given = try parser.parse(arguments)
        var options = RunOptions()
        if given.has("--help") {
            options.help = true
            return options
        }
        let kernel = given["--kernel"]
        options.initrd = given["--initrd"]
        options.append = given["--append"] ?? ""
        options.ledger = given["--ledger"]
        options.emulate = given.has("--emulate")
        options.noReboot = given.has("--no-reboot")
        if let text = given["--memory"] { options.memory = try parseMemorySize(text) }
        if let text = given["--cpus"] {
            guard let cpus = Int(text), (1...MPTable.maximumCPUs).contains(cpus) else {
                throw UsageError("--cpus '\(text)' is not a number from 1 to \(MPTable.maximumCPUs)")
            }
            options.cpus = cpus
        }
        if let text = given["--platform"] {
            guard let platform = Platform(rawValue: text) else {
                throw UsageError("--platform '\(text)' is not one of plain, snp, tdx, cca")
            }
            options.platform = platform
        }
        if let text = given["--ram"] {
            guard let ram = RAMChoice(rawValue: text) else {
                throw UsageError("--ram '\(text)' is not one of \(RAMChoice.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            options.ram = ram
        }
        options.firmware = given["--firmware"]
        options.launchOnly = given.has("--launch-only")
        options.vcpuType = given["--vcpu-type"]
        if let text = given["--guest-features"] {
            let digits = text.hasPrefix("0x") ? text.dropFirst(2) : Substring(text)
            guard let value = UInt64(digits, radix: text.hasPrefix("0x") ? 16 : 10) else {
                throw UsageError("--guest-features '\(text)' is not a number")
            }
            options.guestFeatures = value
        }
        options.plan = given["--plan"]
        options.igvm = given["--igvm"]
        options.nativeZero = given.has("--native-zero")
        try parseIDBlock(given, into: &options)
        if options.igvm != nil {
            guard options.firmware == nil, options.plan == nil, kernel == nil, options.initrd == nil else {
                throw UsageError("--igvm launches the file as it is: no --firmware, --plan, --kernel or --initrd with it")
            }
            guard options.platform == .snp else { throw UsageError("--igvm launches an SEV-SNP guest; give --platform snp") }
            guard options.launchOnly else {
                throw UsageError("--igvm needs --launch-only: its firmware needs a vCPU that executes it quickly, which this host's emulated guest code is not")
            }
            guard options.cpus == 1 else {
                throw UsageError("--igvm launches one vCPU: KVM measures a VMSA for every vCPU, and the file gives the boot vCPU's only")
            }
            for flag in ["--vcpu-type", "--guest-features"] where given.has(flag) {
                throw UsageError("\(flag) does not apply to --igvm: the file's VMSA gives the vCPU's state")
            }
            return options
        }
        if options.nativeZero { throw UsageError("--native-zero applies to --igvm") }
        if options.plan != nil {
            guard options.firmware == nil, kernel == nil, options.initrd == nil else {
                throw UsageError("--plan launches the plan as it is: no --firmware, --kernel or --initrd with it")
            }
            guard options.platform != .plain else { throw UsageError("--plan launches a confidential guest; give --platform snp, tdx or cca") }
            guard options.launchOnly else { throw UsageError("--plan needs --launch-only: the plan has no boot state to run") }
            if options.platform == .snp, options.vcpuType.flatMap(SNPVCPUSignature.signature(named:)) == nil {
                throw UsageError("--plan with --platform snp needs --vcpu-type NAME (the signature in the VMSAs' EDX)")
            }
            return options
        }
        if options.firmware != nil {
            try checkFirmwareOptions(options, kernel: kernel, given: given)
            options.kernel = kernel ?? ""
            return options
        }
        for flag in ["--launch-only", "--vcpu-type", "--guest-features", "--id-block"] where given.has(flag) {
            throw UsageError("\(flag) applies to a firmware or plan launch (--firmware, --plan)")
        }
        guard let kernel else { throw UsageError("--kernel FILE is required (see snpvmm run --help)") }
        options.kernel = kernel
        if options.emulate && options.platform == .plain {
            throw UsageError("--emulate applies to --platform snp, tdx or cca")
        }
        if options.ledger != nil && options.platform == .plain {
            throw UsageError("--ledger accounts for a confidential launch; give --platform snp, tdx or cca")
        }
        if options.ram == .memfd && options.platform == .snp && !options.emulate {
            throw UsageError("--ram memfd holds no private memory; an SEV-SNP launch needs guest_memfd (or --emulate)")
        }
        return options
    }

    /// `--id-block B64 --id-auth B64 [--author-key-enabled]`: decoded and
    /// sized here, so a wrong value stops the run before anything is created.
    static func parseIDBlock(_ given: ParsedArguments, into options: inout RunOptions) throws(UsageError) {
        guard given.has("--id-block") || given.has("--id-auth") else {
            if given.has("--author-key-enabled") { throw UsageError("--author-key-enabled applies to an --id-block") }
            return
        }
        guard let blockText = given["--id-block"], let authText = given["--id-auth"] else {
            throw UsageError("--id-block and --id-auth go together: LAUNCH_FINISH takes both")
        }
        guard options.platform == .snp, options.firmware != nil || options.plan != nil || options.igvm != nil else {
            throw UsageError("--id-block applies to an SEV-SNP firmware, plan or IGVM launch (--platform snp with --firmware, --plan or --igvm)")
        }
        for (flag, text, size) in [("--id-block", blockText, SNPIDBlock.size), ("--id-auth", authText, SNPIDAuth.size)] {
            guard let bytes = Base64.decode(text) else { throw UsageError("\(flag) is not base64") }
            guard bytes.count == size else {
                throw UsageError("\(flag) is \(bytes.count) bytes; SNP_LAUNCH_FINISH takes \(size) (snpvmm id-block makes both)")
            }
            if flag == "--id-block" { options.idBlock = bytes } else { options.idAuth = bytes }
        }
        options.authorKeyEnabled = given.has("--author-key-enabled")
    }

    /// What a firmware launch needs: SEV-SNP with a vCPU type for the VMSAs,
    /// or TDX, and `--launch-only`, as no host of this kind runs firmware in
    /// useful time.
    static func checkFirmwareOptions(_ options: RunOptions, kernel: String?, given: ParsedArguments) throws(UsageError) {
        if options.platform == .tdx {
            for flag in ["--vcpu-type", "--guest-features"] where given.has(flag) {
                throw UsageError("\(flag) sets what SEV-SNP VMSAs hold; a TD's vCPUs start as the TDX module sets them")
            }
            guard kernel == nil, options.initrd == nil, options.append.isEmpty else {
                throw UsageError("--kernel, --initrd and --append are measured into an SEV-SNP launch only; TDVF reads a "
                                 + "kernel through fw_cfg, outside MRTD")
            }
            guard options.launchOnly else {
                throw UsageError("--firmware runs TDVF, which needs a vCPU that executes firmware quickly; this host's "
                                 + "guest kernel code is emulated, so give --launch-only to launch and measure it")
            }
            return
        }
        guard options.platform == .snp else {
            throw UsageError("--firmware launches an SEV-SNP guest from OVMF or a TD from TDVF; give --platform snp or tdx")
        }
        guard let type = options.vcpuType else {
            throw UsageError("--firmware needs --vcpu-type NAME, the CPU model whose signature the VMSAs carry")
        }
        guard SNPVCPUSignature.signature(named: type) != nil else {
            throw UsageError("--vcpu-type '\(type)' is not one of \(SNPVCPUSignature.types.map(\.name).joined(separator: ", "))")
        }
        guard options.launchOnly else {
            throw UsageError("--firmware runs OVMF, which needs a vCPU that executes firmware quickly; this host's "
                             + "guest kernel code is emulated, so give --launch-only to launch and measure it")
        }
        if kernel == nil, options.initrd != nil || !options.append.isEmpty {
            throw UsageError("--initrd and --append are measured with a --kernel")
        }
    }

    /// Parses a `--memory` size the way QEMU's `-m` reads one: a whole
    /// number of MiB, or a whole number with the suffix K, M, G or T
    /// (either case, optionally followed by "iB" or "B"). The result must
    /// be a multiple of 4 KiB, at least 2 MiB and at most 1 TiB.
    static func parseMemorySize(_ text: String) throws(UsageError) -> UInt64 {
        let bytes: UInt64
        switch SizeArgument(text, bareUnitShift: 20) {
        case .bytes(let value) where value <= RunOptions.maximumMemory: bytes = value
        case .bytes, .tooLarge: throw UsageError("--memory '\(text)' is more than the 1 TiB snpvmm gives a guest")
        case .malformed:
            throw UsageError("--memory '\(text)' is not a size: give a number of MiB, or a number with the suffix K, M, G or T")
        }
        guard bytes >= Layout.minimumMemory else { throw UsageError("--memory '\(text)' is less than the 2 MiB a guest needs") }
        guard bytes % pageSize == 0 else { throw UsageError("--memory '\(text)' is not a multiple of 4 KiB") }
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
