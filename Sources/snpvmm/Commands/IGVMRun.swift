import GuestMemfd
import KVMFake
import LaunchMeasurement
import Populate
import VMMCore

/// `snpvmm run --igvm FILE --platform snp --launch-only`: an IGVM file
/// launched as QEMU's IGVM loader launches it, on the emulated platform or
/// this host's KVM; the launch measurement is printed as `measure --igvm`
/// prints it.
enum IGVMRun {
    static func run(_ options: RunOptions) -> ExitCode {
        let path = options.igvm!
        let launch: IGVMLaunch
        let boot: IGVMLaunch.BootState?
        do {
            launch = try IGVMLaunch(file: try IGVMFile(bytes: try FileBytes.read(path)), nativeZero: options.nativeZero,
                                    memorySize: options.memory, vcpus: options.cpus, commandLine: options.append)
            boot = try launch.bootState()
        } catch {
            fail("run: \(path): \(error)", status: .usage)
        }
        let plan = launch.plan()
        do {
            let fake = options.emulate ? FakeKVM(profile: .snpHost) : nil
            let kvm = try LaunchOnly.kvm(fake)
            // KVM adds SNPActive itself; INIT2 takes the VMSA's other features, as QEMU takes them from the file.
            let features = (boot?.sevFeatures ?? 0) & ~SNPBackend.snpActive
            let policy = launch.launch.policy.map(SNPGuestPolicy.init(rawValue:)) ?? .default
            let session = try LaunchSession(kvm: kvm, platform: .snp(SNPLaunchParameters(
                policy: policy, vmsaFeatures: features, finish: options.launchFinish)))
            try session.createVCPUs(1)
            if let boot { try session.setBootState(regs: boot.regs, sregs: boot.sregs, vcpu: 0) }
            try LaunchOnly.createMemory(session, for: plan, memory: options.memory)
            try LaunchOnly.finish(session, plan: plan, fake: fake, label: "snp igvm", ledger: options.ledger)
            return .success
        } catch {
            LaunchOnly.fail(error, path: path, idBlock: options.idBlock)
        }
    }
}
