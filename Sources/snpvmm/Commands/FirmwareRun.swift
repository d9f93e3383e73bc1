#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import KVMFake
import LaunchMeasurement
import Populate
import VMMCore

/// `snpvmm run --firmware OVMF.fd --platform snp --launch-only`: the SEV-SNP
/// launch QEMU makes from OVMF, on the emulated platform (`--emulate`) or on
/// this host's KVM, through a `LaunchSession`. The launch measurement goes
/// to standard output as sev-snp-measure prints it, the report to standard
/// error, and the ledger where asked.
enum FirmwareRun {
    static func run(_ options: RunOptions) -> ExitCode {
        options.platform == .tdx ? runTDX(options) : runSNP(options)
    }

    /// `--platform tdx`: the TDVF launch QEMU makes, on the emulated TDX
    /// module (`--emulate`) or this host's KVM; MRTD is printed as
    /// `snpvmm measure --mode tdx` prints it.
    static func runTDX(_ options: RunOptions) -> ExitCode {
        let launch: TDXFirmwareLaunch
        let plan: LaunchPlan
        do {
            let bytes = try FileBytes.read(options.firmware!)
            launch = TDXFirmwareLaunch(image: try TDVFImage(bytes: bytes), memorySize: options.memory)
            plan = try launch.plan()
        } catch {
            fail("run: \(options.firmware!): \(error)", status: .usage)
        }
        do {
            let fake = options.emulate ? FakeKVM(profile: .tdxHost) : nil
            let kvm = try LaunchOnly.kvm(fake)
            let parameters = TDXLaunchParameters(handOffAddress: try launch.handOffAddress())
            let session = try LaunchSession(kvm: kvm, platform: .tdx(parameters))
            try session.createVCPUs(options.cpus)
            try LaunchOnly.createMemory(session, for: plan, memory: options.memory)
            try LaunchOnly.finish(session, plan: plan, fake: fake, label: "tdx firmware", ledger: options.ledger)
            return .success
        } catch {
            fail("run: \(error)")
        }
    }

    static func runSNP(_ options: RunOptions) -> ExitCode {
        let image: OVMFImage
        var hashes: SEVKernelHashes?
        do {
            image = try OVMFImage(path: options.firmware!)
            if !options.kernel.isEmpty {
                hashes = SEVKernelHashes(kernel: try FileBytes.read(options.kernel),
                                         initrd: try options.initrd.map { try FileBytes.read($0) },
                                         cmdline: options.append.isEmpty ? nil : options.append)
            }
        } catch {
            fail("run: \(error)", status: .usage)
        }
        let launch = SNPFirmwareLaunch(image: image, measurement: SNPGuestMeasurement(
            vcpus: options.cpus, vcpuSignature: SNPVCPUSignature.signature(named: options.vcpuType!)!,
            guestFeatures: options.guestFeatures, kernelHashes: hashes))
        let plan: LaunchPlan
        do { plan = try launch.plan() } catch { fail("run: \(options.firmware!): \(error)", status: .usage) }
        do {
            let fake = options.emulate ? FakeKVM(profile: .snpHost) : nil
            let kvm = try LaunchOnly.kvm(fake)
            // KVM adds SNPActive itself; INIT2 takes the other features.
            let parameters = SNPLaunchParameters(vmsaFeatures: options.guestFeatures & ~SNPBackend.snpActive, finish: options.launchFinish)
            let session = try LaunchSession(kvm: kvm, platform: .snp(parameters))
            try session.createVCPUs(options.cpus)
            for index in 0..<options.cpus {
                let (regs, sregs) = try launch.resetState(vcpu: index)
                try session.setBootState(regs: regs, sregs: sregs, vcpu: index)
            }
            try LaunchOnly.createMemory(session, for: plan, memory: options.memory)
            try LaunchOnly.finish(session, plan: plan, fake: fake, label: "snp firmware", ledger: options.ledger)
            return .success
        } catch {
            fail("run: \(SNPLaunchFinish.refusal(of: error, idBlock: options.idBlock) ?? "\(error)")")
        }
    }
}

extension RunOptions {
    /// LAUNCH_FINISH's arguments from `--id-block`, `--id-auth` and `--author-key-enabled`.
    var launchFinish: SNPLaunchFinish {
        SNPLaunchFinish(idBlock: idBlock, idAuth: idAuth, authKeyEnabled: idBlock != nil && authorKeyEnabled)
    }
}

extension SNPLaunchFinish {
    /// The line `run` gives when the firmware refused the launch over its ID
    /// block (SNP_LAUNCH_FINISH's statuses for ID-block checks); nil for other failures.
    static func refusal(of error: any Error, idBlock: [UInt8]?) -> String? {
        let kernel: KVMError? = switch error {
        case let error as LaunchError: error.kvmError
        case let error as PopulateError: error.kernelError
        case let error as KVMError: error
        default: nil
        }
        guard let idBlock, let block = try? SNPIDBlock(bytes: idBlock), let kernel,
              case .encryptOp(.snpLaunchFinish) = kernel.operation, let status = kernel.sevStatus else { return nil }
        let why = switch status {
        case .badMeasurement: "the ID block names measurement \(block.launchDigest.hex), not this launch's"
        case .policyFailure: "the ID block names policy \(block.policy), not this launch's"
        case .badSignature:
            "a signature in --id-auth does not verify: the ID key's over the ID block, or (with "
                + "--author-key-enabled) the author key's over the ID key"
        default: "\(kernel)"
        }
        return "LAUNCH_FINISH refused the ID block with firmware status \(status): \(why)"
    }
}

/// What every `--launch-only` launch shares.
enum LaunchOnly {
    /// The emulated platform's KVM where `fake` is given, otherwise this host's.
    static func kvm(_ fake: FakeKVM?, experimental: ExperimentalInterfaces = []) throws -> KVM {
        try KVM.open(using: fake ?? (try FeatureHidingKernel.hostKernel()), experimental: experimental)
    }

    /// Guest RAM as the machine lays it out (below the device hole, the
    /// rest from 4 GiB: `Layout.ramRanges`), a memslot per range, then each
    /// run of the plan's regions outside RAM (the firmware below 4 GiB) in a memslot of its own.
    static func createMemory(_ session: LaunchSession, for plan: LaunchPlan, memory: UInt64) throws {
        let ram = Layout.ramRanges(memorySize: memory).map { GuestRange(start: $0.start, size: $0.size) }
        for (index, range) in (ram + outside(plan, ram: ram)).enumerated() {
            try session.createMemory(at: range.start.rawValue, size: range.size, slot: UInt32(index))
        }
    }

    /// The parts of the regions' ranges outside `ram`, each widened to 2 MiB
    /// (but not into RAM) and merged with its neighbours.
    static func outside(_ plan: LaunchPlan, ram: [GuestRange]) -> [GuestRange] {
        let huge = hugePageSize
        var ranges: [(UInt64, UInt64)] = []
        for region in plan.regions {
            var pieces = [(region.range.start.rawValue, region.range.start.rawValue + region.range.size)]
            for memory in ram {
                let low = memory.start.rawValue, high = low + memory.size
                pieces = pieces.flatMap { start, end -> [(UInt64, UInt64)] in
                    guard start < high, end > low else { return [(start, end)] }
                    return [(start, low), (high, end)].filter { $0.0 < $0.1 }
                }
            }
            for (start, end) in pieces {
                // Widen to 2 MiB, stopping at the RAM on either side.
                let floor = ram.map { $0.start.rawValue + $0.size }.filter { $0 <= start }.max() ?? 0
                let ceiling = ram.map(\.start.rawValue).filter { $0 >= end }.min() ?? UInt64.max
                ranges.append((max(floor, start / huge * huge), min(ceiling, (end + huge - 1) / huge * huge)))
            }
        }
        var merged: [(UInt64, UInt64)] = []
        for (low, high) in ranges.sorted(by: { $0.0 < $1.0 }) {
            if let last = merged.last, low <= last.1 { merged[merged.count - 1].1 = max(last.1, high) } else { merged.append((low, high)) }
        }
        return merged.map { GuestRange(start: $0.0, size: $0.1 - $0.0) }
    }

    /// Ends a failed launch of the file at `path`: a plan the engine refused is
    /// a usage error naming the file; an ID block the firmware refused gets its line.
    static func fail(_ error: any Error, path: String, idBlock: [UInt8]?) -> Never {
        if case .population(let populateError)? = error as? LaunchError, case .plan = populateError.reason {
            snpvmm.fail("run: \(path): \(populateError)", status: .usage)
        }
        snpvmm.fail("run: \(SNPLaunchFinish.refusal(of: error, idBlock: idBlock) ?? "\(error)")")
    }

    /// Populates `plan` through `session` (checked against the emulated
    /// firmware's own measurement where `fake` is given), reports on
    /// standard error, writes the ledger, and prints the measurement.
    static func finish(_ session: LaunchSession, plan: LaunchPlan, fake: FakeKVM?, label: String, ledger: String?) throws {
        var engine = PopulateOptions()
        engine.log = StandardError.log
        engine.observer = fake?.observer(of: session.vm)
        let progress = ProgressLine.make(totalBytes: plan.regions.reduce(0) { $0 + $1.range.size })
        progress?.install(in: &engine)
        defer { progress?.finish() }
        let result = try session.populate(plan, options: engine)
        progress?.finish()
        try LaunchReport.print(result, label: (fake == nil ? "" : "emulated ") + label, ledgerPath: ledger, log: StandardError.log)
        print(Hex.encode(result.expectedMeasurement ?? []))
    }
}
