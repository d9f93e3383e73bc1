// Launches a small guest on each emulated confidential platform through the public
// products only, and checks that Populate expects what the fake firmware measured.
#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import KVMFake
import LaunchMeasurement
import Populate

/// A 12 KiB image and 64 KiB of zeros at 1 MiB.
let plan = LaunchPlan(regions: [
    PlanRegion(name: "image", range: GuestRange(start: 0x10_0000, size: 0x3000),
               contents: .bytes((0..<0x3000).map { UInt8(truncatingIfNeeded: $0 * 7) })),
    PlanRegion(name: "heap", range: GuestRange(start: 0x10_3000, size: 0x1_0000), contents: .zeros, kind: .zero),
])

func launch(_ name: String, on profile: HostProfile, _ platform: LaunchPlatform,
            policy: PopulationPolicy? = nil, experimental: ExperimentalInterfaces = []) throws {
    let fake = FakeKVM(profile: profile)
    let kvm = try KVM.open(using: fake, experimental: experimental)  // unmerged kernel interfaces: opt in
    let session = try LaunchSession(kvm: kvm, platform: platform)
    let boot = try session.createVCPUs(1)[0]
    if platform.hostSetsBootState {             // a TD's registers belong to the TDX module
        var regs = try boot.getRegs()
        regs.rip = 0x10_0000
        try session.setBootState(regs: regs)
    }
    try session.createMemory(at: 0, size: 0x20_0000, slot: 0)

    var options = PopulateOptions()
    options.policy = policy
    options.observer = fake.observer(of: session.vm)  // fails the launch on a mismatch
    let result = try session.populate(plan, options: options)

    // A realm measures its boot REC when it first runs.
    if case .cca = platform { _ = try boot.run() }
    let measured = fake.launchMeasurement(of: session.vm)
    guard let expected = result.expectedMeasurement, measured == expected else { throw ExampleError.mismatch(name) }
    print("\(name): \(result.report.policy), \(result.report.ioctls) ioctls, measurement "
          + Hex.encode(expected.prefix(8)) + "...")
}

enum ExampleError: Error { case mismatch(String) }

do {
    try launch("SEV-SNP, separate source", on: .snpHost, .snp(SNPLaunchParameters(policy: .default)))
    try launch("SEV-SNP, in place", on: .snpInPlaceHost, .snp(SNPLaunchParameters()), policy: .inPlace,
               experimental: .inPlaceConversion)
    try launch("TDX", on: .tdxHost, .tdx(TDXLaunchParameters(attributes: [.septVEDisable], xfam: .required)))
    try launch("CCA", on: .ccaHost, .cca(CCABackend.defaultParameters), experimental: .armCCA)
} catch {
    print("error: \(error)")
    exit(1)
}
