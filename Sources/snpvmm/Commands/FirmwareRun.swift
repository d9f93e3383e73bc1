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
            let kvm = try KVM.open(using: fake ?? (try FeatureHidingKernel.hostKernel()))
            // KVM adds SNPActive itself; INIT2 takes the other features.
            let parameters = SNPLaunchParameters(vmsaFeatures: options.guestFeatures & ~SNPBackend.snpActive)
            let session = try LaunchSession(kvm: kvm, platform: .snp(parameters))
            try session.createVCPUs(options.cpus)
            for index in 0..<options.cpus {
                let (regs, sregs) = try launch.resetState(vcpu: index)
                try session.setBootState(regs: regs, sregs: sregs, vcpu: index)
            }
            try session.createMemory(at: 0, size: options.memory, slot: 0)
            try session.createMemory(at: launch.firmwareRange.start.rawValue, size: launch.firmwareRange.size, slot: 1)
            var engine = PopulateOptions()
            engine.log = StandardError.log
            engine.observer = fake?.observer(of: session.vm)
            let result = try session.populate(plan, options: engine)
            try LaunchReport.print(result, label: options.emulate ? "emulated snp firmware" : "snp firmware",
                                   ledgerPath: options.ledger, log: StandardError.log)
            print(Hex.encode(result.expectedMeasurement ?? []))
            return .success
        } catch {
            fail("run: \(error)")
        }
    }
}
