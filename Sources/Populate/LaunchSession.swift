import CKVMHeaders
import GuestMemfd
import LaunchMeasurement

/// A confidential platform's launch parameters, each given once: the
/// session passes them to the kernel and to the measurement alike.
public enum LaunchPlatform: Sendable {
    /// A default VM: memory stays shared and nothing is measured.
    case plain
    case snp(SNPLaunchParameters)
    case tdx(TDXLaunchParameters)
    /// An Arm CCA realm with the parameters KVM creates it with.
    case cca(CCARealmParameters)

    public var platform: Platform {
        switch self {
        case .plain: .plain
        case .snp: .snp
        case .tdx: .tdx
        case .cca: .cca
        }
    }

    /// Whether the host gives the boot vCPU its registers
    /// (`LaunchSession.setBootState`); a TD's vCPUs start as the TDX module
    /// sets them, and KVM refuses KVM_SET_REGS on them.
    public var hostSetsBootState: Bool {
        if case .tdx = self { return false }
        return true
    }

    /// The VM type KVM_CREATE_VM takes for the platform.
    public var vmType: VMType {
        switch self {
        case .plain: .default
        case .snp: .snp
        case .tdx: .tdx
        case .cca: .armRealm
        }
    }
}

/// What KVM_SEV_INIT2, KVM_SEV_SNP_LAUNCH_START and KVM_SEV_SNP_LAUNCH_FINISH take.
public struct SNPLaunchParameters: Sendable {
    public var policy: SNPGuestPolicy
    /// SEV features of every vCPU (`vmsa_features` of KVM_SEV_INIT2); they enter every VMSA KVM measures.
    public var vmsaFeatures: UInt64
    /// The GHCB protocol version; 0 lets KVM choose.
    public var ghcbVersion: UInt16
    /// ID block, author key and host data given at launch finish.
    public var finish: SNPLaunchFinish

    public init(policy: SNPGuestPolicy = .default, vmsaFeatures: UInt64 = 0, ghcbVersion: UInt16 = 0,
                finish: SNPLaunchFinish = SNPLaunchFinish()) {
        self.policy = policy
        self.vmsaFeatures = vmsaFeatures
        self.ghcbVersion = ghcbVersion
        self.finish = finish
    }
}

/// What KVM_TDX_INIT_VM takes.
public struct TDXLaunchParameters: Sendable {
    public var attributes: TDXAttributes
    public var xfam: TDXXFAM
    /// MRCONFIGID, MROWNER and MROWNERCONFIG: 48 bytes each, zeros by default.
    public var mrConfigID: [UInt8], mrOwner: [UInt8], mrOwnerConfig: [UInt8]
    /// The CPUID the TD's vCPUs get.
    public var cpuid: [kvm_cpuid_entry2]
    /// RCX of every vCPU at its first entry (KVM_TDX_INIT_VCPU's data): the
    /// address of the TD hand-off block list, as QEMU passes it to TDVF.
    public var handOffAddress: UInt64

    public init(attributes: TDXAttributes = [], xfam: TDXXFAM = .required, mrConfigID: [UInt8] = [],
                mrOwner: [UInt8] = [], mrOwnerConfig: [UInt8] = [], cpuid: [kvm_cpuid_entry2] = [],
                handOffAddress: UInt64 = 0) {
        self.handOffAddress = handOffAddress
        self.attributes = attributes
        self.xfam = xfam
        self.mrConfigID = mrConfigID
        self.mrOwner = mrOwner
        self.mrOwnerConfig = mrOwnerConfig
        self.cpuid = cpuid
    }
}

/// Why a launch session stopped.
public enum LaunchError: Error, CustomStringConvertible {
    /// The host lacks what the platform needs; each entry names one thing.
    case hostNotReady(Platform, missing: [String])
    /// A step was asked for before the one it depends on, or after the launch closed.
    case outOfOrder(step: String, needs: String)
    case kvm(KVMError)
    case population(PopulateError)

    /// The kernel call that failed, where one did.
    public var kvmError: KVMError? {
        switch self {
        case .kvm(let error): error
        case .population(let error): error.kernelError
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .hostNotReady(let platform, let missing):
            "this host cannot launch \(platform) guests: " + missing.joined(separator: "; ")
        case .outOfOrder(let step, let needs): "\(step) needs \(needs) first"
        case .kvm(let error): error.description
        case .population(let error): error.description
        }
    }
}

/// One confidential guest's launch, in the order the kernel and the
/// firmware require, for every platform:
///
/// 1. create the VM with the platform's type, and initialise the platform
///    (KVM_SEV_INIT2; KVM_TDX_INIT_VM) before any vCPU exists;
/// 2. create the vCPUs (KVM_TDX_INIT_VCPU on each TD vCPU);
/// 3. give the boot vCPU its registers, before the launch seals them
///    (a TD's vCPUs start as the TDX module sets them);
/// 4. add guest memory;
/// 5. start the launch (KVM_SEV_SNP_LAUNCH_START with the policy), populate
///    the plan, and finish (KVM_SEV_SNP_LAUNCH_FINISH; KVM_TDX_FINALIZE_VM;
///    a realm activates at its first run), measuring as the platform does.
///
/// A step asked for out of order fails with `LaunchError.outOfOrder` before
/// any ioctl. A VMM that owns its descriptors (as QEMU and cloud-hypervisor
/// do) adopts them: `init(adopting:platform:platformInitialised:)` and
/// `adoptVCPUs(_:initialised:)`, with `GuestMemfd`'s adopting initialisers.
public final class LaunchSession {
    public enum Stage: Int, Comparable, Sendable {
        case platformReady, vcpusCreated, started, populated

        public static func < (lhs: Stage, rhs: Stage) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    public let platform: LaunchPlatform
    public let vm: VM
    public private(set) var vcpus: [VCPU] = []
    public private(set) var memory = GuestMemoryLayout(slots: [])
    public private(set) var stage: Stage = .platformReady
    /// The SEV firmware interface of an SNP session.
    public let snp: SEVSNP?

    /// What the host lacks for `platform`, one entry per missing piece;
    /// empty when it is ready. x86 VM types are read from KVM_CAP_VM_TYPES;
    /// arm64 has no such capability, so a realm's type is not checked here
    /// (KVM_CREATE_VM answers for it).
    public static func missingFeatures(of kvm: KVM, for platform: LaunchPlatform) throws(KVMError) -> [String] {
        var missing: [String] = []
        if VMType.x86Types.contains(platform.vmType), platform.vmType != .default {
            let mask = try kvm.checkExtension(.vmTypes)
            if mask & (1 << Int(platform.vmType.rawValue)) == 0 {
                let offered = VMType.x86Types.filter { mask & (1 << Int($0.rawValue)) != 0 }.map(\.name)
                missing.append("KVM offers no \(platform.vmType.name) VM type (KVM_CAP_VM_TYPES: "
                               + (offered.isEmpty ? "the default type only" : offered.joined(separator: ", ")) + ")")
            }
        }
        if case .plain = platform {} else if try kvm.checkExtension(.guestMemfd) == 0 {
            missing.append("KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD = 0), which holds private memory")
        }
        if case .snp = platform {
            // Every SEV command names the firmware device (kvm_sev_cmd.sev_fd).
            do {
                try kvm.kernel.close(try kvm.kernel.open(SEVSNP.device, flags: O_RDWR | O_CLOEXEC))
            } catch {
                missing.append("the SEV firmware device \(SEVSNP.device) cannot be opened: \(error)")
            }
        }
        return missing
    }

    /// Creates the VM and initialises the platform, after checking that the host offers it.
    public init(kvm: KVM, platform: LaunchPlatform) throws(LaunchError) {
        let lacking: [String]
        do { lacking = try Self.missingFeatures(of: kvm, for: platform) } catch { throw .kvm(error) }
        guard lacking.isEmpty else { throw .hostNotReady(platform.platform, missing: lacking) }
        let missing: String?
        self.platform = platform
        do {
            vm = try kvm.createVM(type: platform.vmType)
            missing = try Self.missingConversion(vm, for: platform)
        } catch {
            throw .kvm(error)
        }
        if let missing { throw .hostNotReady(platform.platform, missing: [missing]) }
        do {
            snp = if case .snp = platform { try SEVSNP(vm: vm) } else { nil }
            try Self.initialise(platform, vm: vm, snp: snp)
        } catch {
            throw .kvm(error)
        }
    }

    /// Why `vm` cannot make memory private, where it cannot: neither the
    /// VM's attributes (KVM_CAP_MEMORY_ATTRIBUTES) nor, where opted in,
    /// guest_memfd's own (in-place conversion) offer PRIVATE.
    private static func missingConversion(_ vm: VM, for platform: LaunchPlatform) throws(KVMError) -> String? {
        if case .plain = platform { return nil }
        let attributes = MemoryAttributes(rawValue: UInt64(try vm.checkExtension(.memoryAttributes)))
        if attributes.contains(.private) { return nil }
        if try vm.checkExtension(.guestMemfdMemoryAttributes) != 0 { return nil }
        return "a \(platform.vmType.name) VM has no PRIVATE memory attribute (KVM_CAP_MEMORY_ATTRIBUTES = \(attributes));"
            + " where guest_memfd keeps the attributes itself, open KVM with experimental: .inPlaceConversion"
    }

    /// Adopts a VM the caller created with `platform.vmType`; with
    /// `platformInitialised` false the session initialises the platform now.
    public init(adopting vm: VM, platform: LaunchPlatform, platformInitialised: Bool) throws(LaunchError) {
        guard vm.type == platform.vmType else {
            throw .outOfOrder(step: "a \(platform.platform) launch", needs: "a VM of type \(platform.vmType.name), not \(vm.type.name),")
        }
        self.platform = platform
        self.vm = vm
        do {
            snp = if case .snp = platform { try SEVSNP(vm: vm) } else { nil }
            if !platformInitialised { try Self.initialise(platform, vm: vm, snp: snp) }
        } catch {
            throw .kvm(error)
        }
    }

    private static func initialise(_ platform: LaunchPlatform, vm: VM, snp: SEVSNP?) throws(KVMError) {
        switch platform {
        case .snp(let parameters):
            try snp?.init2(vmsaFeatures: parameters.vmsaFeatures, ghcbVersion: parameters.ghcbVersion)
        case .tdx(let parameters):
            try TDX(vm: vm).initVM(attributes: parameters.attributes, xfam: parameters.xfam,
                                   mrConfigID: parameters.mrConfigID, mrOwner: parameters.mrOwner,
                                   mrOwnerConfig: parameters.mrOwnerConfig, cpuid: parameters.cpuid)
        case .plain, .cca:
            break
        }
    }

    /// Creates `count` vCPUs with the next ids, initialising each TD vCPU.
    @discardableResult
    public func createVCPUs(_ count: Int) throws(LaunchError) -> [VCPU] {
        guard stage < .populated else { throw .outOfOrder(step: "creating vCPUs", needs: "a launch not yet populated") }
        var created: [VCPU] = []
        do {
            for _ in 0..<count {
                let vcpu = try vm.createVCPU(id: UInt32(vcpus.count + created.count))
                if case .tdx(let parameters) = platform { try TDX(vm: vm).initVCPU(vcpu, rcx: parameters.handOffAddress) }
                created.append(vcpu)
            }
        } catch {
            throw .kvm(error)
        }
        vcpus += created
        stage = max(stage, .vcpusCreated)
        return created
    }

    /// Adopts vCPUs the caller created; TD vCPUs not yet `initialised` get KVM_TDX_INIT_VCPU.
    public func adoptVCPUs(_ adopted: [VCPU], initialised: Bool) throws(LaunchError) {
        guard stage < .populated else { throw .outOfOrder(step: "adopting vCPUs", needs: "a launch not yet populated") }
        if case .tdx(let parameters) = platform, !initialised {
            do { for vcpu in adopted { try TDX(vm: vm).initVCPU(vcpu, rcx: parameters.handOffAddress) } } catch { throw .kvm(error) }
        }
        vcpus += adopted
        stage = max(stage, .vcpusCreated)
    }

    /// Gives the boot vCPU (the first) its registers; the launch seals them
    /// (SNP measures them in the VMSA, a realm in its REC). A TD's vCPUs
    /// start as the TDX module sets them, so TDX refuses this.
    ///
    /// - Parameter index: the vCPU, 0 (the boot vCPU) by default; a
    ///   firmware launch also gives the others their reset state (an SEV-ES
    ///   AP starts at the firmware's reset block).
    public func setBootState(regs: kvm_regs, sregs: kvm_sregs? = nil, vcpu index: Int = 0) throws(LaunchError) {
        guard index < vcpus.count else { throw .outOfOrder(step: "setting vCPU \(index)'s state", needs: "that vCPU") }
        let boot = vcpus[index]
        guard stage < .populated else { throw .outOfOrder(step: "setting the boot state", needs: "a launch not yet sealed") }
        guard platform.hostSetsBootState else {
            throw .outOfOrder(step: "setting a TD vCPU's registers", needs: "a platform that lets the host set them (not TDX)")
        }
        do {
            if let sregs { try boot.setSregs(sregs) }
            try boot.setRegs(regs)
        } catch {
            throw .kvm(error)
        }
    }

    /// Adds guest memory the caller bound with KVM_SET_USER_MEMORY_REGION2;
    /// `backing` (from `Populator.createGuestMemfd`) goes into the report.
    public func addMemory(_ slot: GuestMemoryLayout.Slot, backing: BackingOutcome? = nil) throws(LaunchError) {
        guard stage < .populated else { throw .outOfOrder(step: "adding memory", needs: "a launch not yet populated") }
        memory.slots.append(slot)
        if let backing { memory.backing = backing }
    }

    /// Creates a guest_memfd of `size` bytes, maps it where the host allows
    /// (MMAP, and INIT_SHARED where pages start shared), binds it at `gpa`
    /// in memslot `slot`, and adds it.
    @discardableResult
    public func createMemory(at gpa: UInt64, size: UInt64, slot: UInt32) throws(LaunchError) -> GuestMemoryLayout.Slot {
        guard stage < .populated else { throw .outOfOrder(step: "adding memory", needs: "a launch not yet populated") }
        let entry: GuestMemoryLayout.Slot
        do {
            let supported = GuestMemfdFlags(rawValue: UInt64(try vm.checkExtension(.guestMemfdFlags)))
            let flags = supported.intersection([.mmap, .initShared])
            let memfd = try vm.createGuestMemfd(size: size, flags: flags)
            if flags.contains(.mmap) {
                let mapping = try memfd.map()
                try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: slot, guestPhysicalAddress: gpa, mapping: mapping))
                entry = .init(range: GuestRange(start: gpa, size: size), mapping: mapping)
            } else {
                try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: slot, guestPhysicalAddress: gpa, size: size, memfd: memfd))
                entry = .init(range: GuestRange(start: gpa, size: size), memfd: memfd)
            }
        } catch {
            throw .kvm(error)
        }
        memory.slots.append(entry)
        return entry
    }

    /// The population backend for this session's platform, over its memory and vCPUs.
    func makeBackend() throws(LaunchError) -> any PopulationBackend {
        guard let boot = vcpus.first else { throw .outOfOrder(step: "populating", needs: "a vCPU") }
        do {
            switch platform {
            case .plain: return PlainBackend()
            case .snp(let parameters):
                return try SNPBackend(vm: vm, snp: snp!, memory: memory, vcpus: vcpus,
                                      vmsaFeatures: parameters.vmsaFeatures, finish: parameters.finish)
            case .tdx: return try TDXBackend(vm: vm, tdx: TDX(vm: vm), vcpu: boot, memory: memory)
            case .cca(let parameters): return CCABackend(vm: vm, vcpus: vcpus, parameters: parameters)
            }
        } catch {
            throw .kvm(error)
        }
    }

    /// Starts the launch (KVM_SEV_SNP_LAUNCH_START with the policy) and
    /// returns the population backend, for a caller that drives `Populator`
    /// itself; `populate(_:options:)` does both.
    public func start() throws(LaunchError) -> any PopulationBackend {
        guard stage == .vcpusCreated else {
            throw .outOfOrder(step: "starting the launch", needs: stage < .vcpusCreated ? "the vCPUs" : "a launch not yet started")
        }
        let backend = try makeBackend()
        if case .snp(let parameters) = platform {
            do { try snp!.launchStart(policy: parameters.policy) } catch { throw .kvm(error) }
        }
        stage = .started
        return backend
    }

    /// Starts the launch where it has not started, populates `plan`
    /// through the engine and, unless `options.finish` is false, finishes
    /// it. The result's expected measurement is what attestation will
    /// report: it includes the VMSAs of every vCPU (SNP) and the boot REC (CCA).
    public func populate(_ plan: LaunchPlan, options: PopulateOptions = PopulateOptions()) throws(LaunchError) -> PopulateResult {
        guard stage < .populated else { throw .outOfOrder(step: "populating", needs: "a launch not yet populated") }
        let backend = stage == .started ? try makeBackend() : try start()
        stage = .populated
        do {
            return try Populator(backend: backend, memory: memory, options: options).populate(plan)
        } catch {
            throw .population(error)
        }
    }
}
