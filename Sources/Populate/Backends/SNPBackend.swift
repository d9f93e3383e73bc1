import GuestMemfd
import LaunchMeasurement
/// SEV-SNP population: KVM_SEV_SNP_LAUNCH_UPDATE per run, LAUNCH_FINISH to close.
public final class SNPBackend: PopulationBackend {
    public let vm: VM
    public let snp: SEVSNP
    public let memory: GuestMemoryLayout
    /// The vCPUs whose VMSAs KVM measures at finish, in id order.
    public let vcpus: [VCPU]
    public let finishParameters: SNPLaunchFinish
    /// The VMSA features given to KVM_SEV_INIT2; they enter every VMSA, with
    /// `snpActive`, which KVM adds for an SNP VM (`__sev_guest_init`).
    public let vmsaFeatures: UInt64
    /// `SVM_SEV_FEAT_SNP_ACTIVE`, in the `sev_features` of every SNP vCPU.
    public static let snpActive: UInt64 = 1 << 0
    public let capabilities: PlatformCapabilities
    public var callName: String { "SNP_LAUNCH_UPDATE" }

    /// - Parameter inPlace: the host's guest_memfd converts in place
    ///   (`KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`), so launch update may name no source.
    public init(vm: VM, snp: SEVSNP, memory: GuestMemoryLayout, vcpus: [VCPU], vmsaFeatures: UInt64 = 0,
                finish: SNPLaunchFinish = SNPLaunchFinish()) throws(KVMError) {
        self.vmsaFeatures = vmsaFeatures
        self.vm = vm
        self.snp = snp
        self.memory = memory
        self.vcpus = vcpus.sorted { $0.id < $1.id }
        finishParameters = finish
        let inPlace = try vm.checkExtension(.guestMemfdMemoryAttributes) != 0
        capabilities = PlatformCapabilities(
            platform: .snp, populatesInPlace: inPlace,
            inPlaceUnavailable: inPlace ? nil : "this host's guest_memfd cannot convert in place (no KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES)",
            populatesFromSource: true, kinds: Set(PageKind.allCases), kindsWithoutSource: [.zero])
    }

    public func makePrivate(_ range: GuestRange) throws(KVMError) {
        try memory.convert(range, toPrivate: true, vm: vm, inGuestMemfd: capabilities.populatesInPlace)
    }

    public func populate(_ call: PopulateCall) -> PopulateStep {
        let update = SNPLaunchUpdate(gfnStart: call.gpa / pageSize, sourceAddress: call.source,
                                     length: call.pages * pageSize, type: call.kind.launchUpdateType)
        do {
            let left = try snp.launchUpdate(update)
            return PopulateStep(pagesDone: call.pages - left.length / pageSize)
        } catch {
            // A failure on the first page comes back as EIO with nothing written back.
            return PopulateStep(pagesDone: 0, error: error)
        }
    }

    public func finish() throws(KVMError) { try snp.launchFinish(finishParameters) }

    /// SNP also reports a signal before the first page as EIO with no firmware
    /// status (`sev_gmem_post_populate` never reached the firmware); a
    /// CPUID page the firmware rejects comes back INVALID_PARAM, corrected
    /// in the source.
    public func classify(_ error: KVMError, in call: PopulateCall) -> CallFailure {
        if error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable { return .transient }
        if error.errno == .ioError, error.firmwareError == nil { return .transient }
        if call.kind == .cpuid, call.source != 0, error.sevStatus == .invalidParam { return .sourceCorrected }
        return .fatal
    }

    public func describeCorrection(of call: PopulateCall, original: [UInt8], corrected: [UInt8]) -> String {
        CPUIDPageDiff.describe(original: original, corrected: corrected)
    }

    public func makeMeasurement() -> any LaunchMeasurer {
        SNPMeasurement { [vcpus, features = vmsaFeatures | Self.snpActive] () throws(KVMError) in
            var pages: [[UInt8]] = []
            for vcpu in vcpus {
                pages.append(SNPVMSA(regs: try vcpu.getRegs(), sregs: try vcpu.getSregs(), sevFeatures: features).page)
            }
            return pages
        }
    }
}

extension PageKind {
    /// The page type the SNP firmware measures each kind as.
    public var snpPageType: SNPPageType {
        switch self {
        case .normal: .normal
        case .zero: .zero
        case .unmeasured: .unmeasured
        case .secrets: .secrets
        case .cpuid: .cpuid
        }
    }

    /// The page type KVM_SEV_SNP_LAUNCH_UPDATE takes for each kind: KVM
    /// passes the firmware's PAGE_TYPE numbers through unchanged.
    public var launchUpdateType: SNPLaunchUpdate.PageType { SNPLaunchUpdate.PageType(rawValue: snpPageType.rawValue) }
}
