import GuestMemfd
import CKVMHeaders

/// One VM of the fake: memslots, memory attributes, vCPUs and the
/// confidential platform's per-guest state.
final class FakeVM {
    let id: Int
    let type: VMType
    var memslots: [UInt32: FakeMemslot] = [:]
    /// Per-GFN attributes (`kvm->mem_attr_array`).
    var attributes = RangeMap<UInt64>(defaultValue: 0)
    var vcpus: [UInt32: FakeVCPU] = [:]
    var irqchip = false
    var pit = false
    /// Hypercalls that exit to userspace (`KVM_CAP_EXIT_HYPERCALL`).
    var exitHypercalls: UInt64 = 0
    /// `kvm->arch.pre_fault_allowed`: set at creation for the default and
    /// SW_PROTECTED types, after SNP LAUNCH_FINISH or TDX FINALIZE_VM otherwise.
    var preFaultAllowed: Bool
    /// Whether vCPUs may enter the guest; false until an SNP or TDX launch is finished.
    var runnable: Bool

    /// The VM descriptor, its vCPU descriptors and its guest_memfd files
    /// each hold the VM (`kvm_get_kvm`); it is destroyed at zero (`kvm_destroy_vm`).
    var references = 1

    var snp: SNPGuestContext?
    var td: TDContext?
    var realm: RealmContext?

    init(id: Int, type: VMType) {
        self.id = id
        self.type = type
        preFaultAllowed = type == .default || type == .swProtected
        runnable = !(type == .snp || type == .tdx || type == .sevES)
    }

    /// The slot of address space 0 containing `gfn` (`gfn_to_memslot`).
    func slot(containing gfn: UInt64) -> FakeMemslot? {
        memslots.values.first { $0.asID == 0 && $0.contains(gfn) }
    }

    /// `kvm_destroy_vm`: frees the vCPUs (`kvm_destroy_vcpus`) and the
    /// memslots with their guest_memfd bindings (`kvm_free_memslots`), which
    /// refer back to the VM; the fake calls it when nothing refers to the VM
    /// any more (`kvm_put_kvm`).
    func destroy() {
        vcpus.removeAll()
        for slot in memslots.values { slot.gmem?.bindings.removeAll { $0 === slot } }  // kvm_gmem_unbind
        memslots.removeAll()
    }

    func isPrivate(_ gfn: UInt64) -> Bool {
        attributes.value(at: gfn) & CKVM_MEMORY_ATTRIBUTE_PRIVATE != 0
    }
}

/// The SEV-SNP firmware's guest context and KVM's SEV state for one VM.
struct SNPGuestContext {
    /// KVM_SEV_INIT2 has run (`sev->active`).
    var initialised = false
    var vmsaFeatures: UInt64 = 0
    var ghcbVersion: UInt16 = 2
    /// LAUNCH_START created a firmware context (`sev->snp_context`).
    var launchStarted = false
    var finished = false
    var policy: UInt64 = 0
    var asid: UInt32 = 0
    /// The launch digest as the firmware extends it.
    var digest = [UInt8](repeating: 0, count: 48)
    /// One record per measured page, in order, for comparing ledgers.
    var pageLog: [FakePlatformPage] = []
    var hostData: [UInt8] = []
    var idBlockEnabled = false
    var idKeyDigest: [UInt8]?
    var authorKeyDigest: [UInt8]?
    /// Host frames of the vCPUs' VMSAs, assigned at LAUNCH_FINISH and
    /// reclaimed when the vCPUs are freed.
    var vmsaFrames: [UInt64] = []
}

/// A page the fake platform measured, as it recorded it.
public struct FakePlatformPage: Hashable, Sendable {
    public var gpa: UInt64
    /// The platform's page type or operation ("NORMAL", "VMSA", "PAGE.ADD", "DATA_CREATE").
    public var kind: String
    /// The measurement after this page.
    public var measurement: [UInt8]
}

/// The TDX module's state for one TD.
struct TDContext {
    enum State { case created, initialised, finalised }
    var state: State = .created
    var attributes: UInt64 = 0
    var xfam: UInt64 = 0
    var mrtd = FirmwareSHA384Stream()
    var finalMRTD: [UInt8]?
    var pageLog: [FakePlatformPage] = []
    /// GPAs already added (TDH.MEM.PAGE.ADD refuses a mapped GPA).
    var added = Set<UInt64>()
    var sharedBit: UInt64 = 1 << 47
}

/// The RMM's state for one realm.
struct RealmContext {
    enum State { case new, active, dead }
    var state: State = .new
    var created = false
    var measurement: [UInt8] = []
    var pageLog: [FakePlatformPage] = []
    /// Realm IPA state per granule (RIPAS); granules without an entry are EMPTY.
    var ripas: [UInt64: UInt8] = [:]
    /// Granules already holding realm data.
    var populated = Set<UInt64>()
}
