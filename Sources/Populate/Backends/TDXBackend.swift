import GuestMemfd

/// TDX population: KVM_TDX_INIT_MEM_REGION per run (on the first vCPU),
/// measured for normal pages, and KVM_TDX_FINALIZE_VM to close.
public final class TDXBackend: PopulationBackend {
    public let vm: VM
    public let tdx: TDX
    public let vcpu: VCPU
    public let memory: GuestMemoryLayout
    public let capabilities: PlatformCapabilities
    public var callName: String { "TDX_INIT_MEM_REGION" }

    public init(vm: VM, tdx: TDX, vcpu: VCPU, memory: GuestMemoryLayout) throws(KVMError) {
        self.vm = vm
        self.tdx = tdx
        self.vcpu = vcpu
        self.memory = memory
        let inPlace = try vm.checkExtension(.guestMemfdMemoryAttributes) != 0
        capabilities = PlatformCapabilities(
            platform: .tdx, populatesInPlace: inPlace,
            inPlaceUnavailable: inPlace ? nil : "this host's guest_memfd cannot convert in place (no KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES)",
            populatesFromSource: true, kinds: [.normal, .zero, .unmeasured])
    }

    public func makePrivate(_ range: GuestRange) throws(KVMError) {
        try memory.convert(range, toPrivate: true, vm: vm, inGuestMemfd: capabilities.populatesInPlace)
    }

    public func populate(_ call: PopulateCall) -> PopulateStep {
        let region = TDXMemRegion(sourceAddress: call.source, gpa: call.gpa, pageCount: call.pages)
        do {
            let left = try tdx.initMemRegion(region, on: vcpu, measure: call.kind == .normal)
            return PopulateStep(pagesDone: call.pages - left.pageCount)
        } catch {
            // The region is written back on every error; the error carries what was done.
            return PopulateStep(pagesDone: (error.completedBytes ?? 0) / pageSize, error: error)
        }
    }

    public func finish() throws(KVMError) { try tdx.finalizeVM() }

    public func makeMeasurement() -> any LaunchMeasurer { TDXMeasurementAccumulator() }
}
