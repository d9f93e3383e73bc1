import GuestMemfd
import LaunchMeasurement

/// Arm CCA population: KVM_ARM_RMI_POPULATE from a separate source, always;
/// delegating a granule to the realm scrubs it, so nothing survives in place.
/// Zero pages need no call: delegated granules are already zero, and the
/// realm's RAM state is set at activation.
public final class CCABackend: PopulationBackend {
    public let vm: VM
    public let cca: CCA
    /// The realm's vCPUs; the first is the boot REC the RMM measures when the realm first runs.
    public let vcpus: [VCPU]
    public let capabilities: PlatformCapabilities
    /// The realm's parameters as created; they open the realm initial measurement.
    public let parameters: CCARealmParameters
    public var callName: String { "RMI_POPULATE" }

    /// The parameters KVM's realms are created with here: a 40-bit IPA space,
    /// SHA-256, no SVE or PMU, and the 6 breakpoints and 4 watchpoints of an
    /// Arm Neoverse core, which KVM copies from ID_AA64DFR0_EL1 (the fake's
    /// RMM creates its realms with the same).
    public static let defaultParameters = CCARealmParameters(ipaBits: 40, breakpoints: 6, watchpoints: 4)

    public init(vm: VM, vcpus: [VCPU], parameters: CCARealmParameters = CCABackend.defaultParameters) {
        self.vm = vm
        self.vcpus = vcpus.sorted { $0.id < $1.id }
        self.parameters = parameters
        cca = CCA(vm: vm)
        capabilities = PlatformCapabilities(
            platform: .cca, populatesInPlace: false,
            inPlaceUnavailable: "delegating a granule to the realm scrubs it, so CCA always copies from a separate source",
            populatesFromSource: true, kinds: [.normal, .zero, .unmeasured], kindsWithoutCall: [.zero], finishCalls: 0)
    }

    public func makePrivate(_ range: GuestRange) throws(KVMError) {
        try vm.setMemoryAttributes(range, attributes: .private)
    }

    public func populate(_ call: PopulateCall) -> PopulateStep {
        let request = CCAPopulate(base: call.gpa, size: call.pages * pageSize, sourceAddress: call.source)
        do {
            let left = try cca.populate(request, measure: call.kind == .normal)
            return PopulateStep(pagesDone: call.pages - left.size / pageSize)
        } catch {
            return PopulateStep(pagesDone: 0, error: error)
        }
    }

    /// The realm activates at the first KVM_RUN; there is nothing to issue here.
    public func finish() throws(KVMError) {}

    public func makeMeasurement() -> any LaunchMeasurer {
        let boot = vcpus.first
        return CCAMeasurementAccumulator(parameters: parameters) { () throws(KVMError) in
            guard let boot else { return CCARecEntry(pc: 0) }
            return CCARecEntry(regs: try boot.getRegs())
        }
    }
}
