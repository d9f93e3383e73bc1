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
            let kvm = try LaunchOnly.kvm(fake, experimental: .armCCA)
            let session = try LaunchSession(kvm: kvm, platform: platform)
            try session.createVCPUs(options.cpus)
            if platform.hostSetsBootState {
                let signature = options.vcpuType.flatMap(SNPVCPUSignature.signature(named:)) ?? 0
                let (regs, sregs) = SNPFirmwareLaunch.resetState(eip: SNPInitialVMSA.bspEIP, vcpuSignature: signature)
                for index in 0..<options.cpus { try session.setBootState(regs: regs, sregs: sregs, vcpu: index) }
            }
            try LaunchOnly.createMemory(session, for: plan, memory: options.memory)
            try LaunchOnly.finish(session, plan: plan, fake: fake, label: "\(options.platform.rawValue) plan", ledger: options.ledger)
            return .success
        } catch {
            LaunchOnly.fail(error, path: options.plan!, idBlock: options.idBlock)
        }
    }
}
