#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import KVMFake
import LaunchMeasurement
import Populate
import VMMCore

/// `snpvmm run --plan FILE --platform snp|tdx|cca --launch-only`: a plan
/// launched as it is, on the emulated platform or this host's KVM, with
/// nothing added but what the platform measures of its own (the VMSAs of
/// vCPUs in their reset state; the boot REC). The way to check a layout of
/// one's own against a measurement, or to reproduce a mismatch.
enum PlanRun {
    static func run(_ options: RunOptions) -> ExitCode {
        let plan: LaunchPlan
        do {
            plan = try LaunchPlan(text: String(decoding: try FileBytes.read(options.plan!), as: UTF8.self))
        } catch {
            fail("run: \(options.plan!): \(error)", status: .usage)
        }
        let (profile, platform): (HostProfile, LaunchPlatform) = switch options.platform {
        case .tdx: (.tdxHost, .tdx(TDXLaunchParameters()))
        case .cca: (.ccaHost, .cca(CCABackend.defaultParameters))
        default: (.snpHost, .snp(SNPLaunchParameters(vmsaFeatures: options.guestFeatures & ~SNPBackend.snpActive, finish: options.launchFinish)))
        }
        do {
            let fake = options.emulate ? FakeKVM(profile: profile) : nil
            let kvm = try KVM.open(using: fake ?? (try FeatureHidingKernel.hostKernel()), experimental: .armCCA)
            let session = try LaunchSession(kvm: kvm, platform: platform)
            try session.createVCPUs(options.cpus)
            if platform.hostSetsBootState {
                let signature = options.vcpuType.flatMap(SNPVCPUSignature.signature(named:)) ?? 0
                let (regs, sregs) = SNPFirmwareLaunch.resetState(eip: SNPInitialVMSA.bspEIP, vcpuSignature: signature)
                for index in 0..<options.cpus { try session.setBootState(regs: regs, sregs: sregs, vcpu: index) }
            }
            // Guest RAM from 0, and each run of regions beyond it in a memslot of its own.
            try session.createMemory(at: 0, size: options.memory, slot: 0)
            var slot: UInt32 = 1
            for range in outside(plan, memory: options.memory) {
                try session.createMemory(at: range.start.rawValue, size: range.size, slot: slot)
                slot += 1
            }
            try LaunchOnly.finish(session, plan: plan, fake: fake, label: "\(options.platform.rawValue) plan", ledger: options.ledger)
            return .success
        } catch let error as LaunchError {
            if case .population(let populateError) = error, case .plan = populateError.reason {
                fail("run: \(options.plan!): \(populateError)", status: .usage)
            }
            fail("run: \(SNPLaunchFinish.refusal(of: error, idBlock: options.idBlock) ?? "\(error)")")
        } catch {
            fail("run: \(error)")
        }
    }

    /// The regions' ranges beyond `memory`, each widened to 2 MiB and merged with its neighbours.
    static func outside(_ plan: LaunchPlan, memory: UInt64) -> [GuestRange] {
        let huge = hugePageSize
        var ranges: [(UInt64, UInt64)] = []
        for region in plan.regions {
            let start = region.range.start.rawValue, end = start + region.range.size
            guard end > memory else { continue }
            let low = max(memory, start / huge * huge), high = (end + huge - 1) / huge * huge
            ranges.append((low, high))
        }
        var merged: [(UInt64, UInt64)] = []
        for (low, high) in ranges.sorted(by: { $0.0 < $1.0 }) {
            if let last = merged.last, low <= last.1 { merged[merged.count - 1].1 = max(last.1, high) } else { merged.append((low, high)) }
        }
        return merged.map { GuestRange(start: $0.0, size: $0.1 - $0.0) }
    }
}
