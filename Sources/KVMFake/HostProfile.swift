import GuestMemfd
/// The kernel and platform a `FakeKVM` behaves as.
///
/// Where KVM changed behaviour between releases, a profile names the release
/// it follows (`kernel`), and the rules that differ are fields here, so that a
/// test can pin the behaviour of one release.
public struct HostProfile: Sendable {
    /// A short name for messages: "this-machine", "snp-host".
    public var name: String
    /// The kernel release whose rules this profile follows.
    public var kernel: String

    // MARK: KVM

    /// VM types `KVM_CREATE_VM` accepts.
    public var vmTypes: [VMType]
    /// Two-dimensional paging (EPT/NPT). Without it `KVM_CAP_PRE_FAULT_MEMORY`
    /// is 0 and pre-fault fails with EOPNOTSUPP (`kvm_arch_vcpu_pre_fault_memory`).
    public var tdp: Bool
    /// Whether `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES` is built in; without it
    /// `KVM_SET_MEMORY_ATTRIBUTES` is an unknown VM ioctl (ENOTTY).
    public var memoryAttributes: Bool
    /// Whether `CONFIG_KVM_GUEST_MEMFD` is built in. Without it
    /// `KVM_CAP_GUEST_MEMFD` and `KVM_CAP_GUEST_MEMFD_FLAGS` are 0,
    /// `KVM_CREATE_GUEST_MEMFD` is an unknown VM ioctl (ENOTTY, from
    /// `kvm_arch_vm_ioctl`), and `check_memory_region_flags` refuses
    /// `KVM_MEM_GUEST_MEMFD` with EINVAL.
    public var guestMemfd: Bool = true
    /// `KVM_CAP_NR_MEMSLOTS`.
    public var memslots: Int = 32764
    /// `KVM_CAP_MAX_VCPU_ID`: vCPU ids must be below it.
    public var maxVCPUID: UInt32 = 4096
    /// `CONFIG_KVM_SMM`: x86 VMs get a second memslot address space for SMM.
    public var smm: Bool = true
    /// `KVM_GET_VCPU_MMAP_SIZE`: kvm_run plus the PIO and coalesced-MMIO pages.
    public var vcpuMmapSize: Int = 12288

    /// The errno for binding a guest_memfd range that already backs another
    /// memslot: EINVAL up to 7.1, EEXIST from the 7.2 guest_memfd merge (`kvm_gmem_bind`).
    public var bindingOverlapErrno: Errno = .invalidArgument
    /// The 2026 rework of guest_memfd population ("Rework preparation/population
    /// flows in prep for in-place conversion", merged for 6.20). Before it
    /// (6.11–6.18) `kvm_gmem_populate` refuses a folio already marked prepared
    /// with EEXIST and takes any source pointer, a null one copying nothing.
    /// After it there is no prepared tracking (the platform refuses double
    /// population), the source must be page aligned, an empty range is
    /// EINVAL, and a null source needs in-place conversion.
    public var reworkedPopulation: Bool = false
    /// guest_memfd tracks shared/private per page itself and converts in
    /// place (the in-place conversion series, unmerged): INIT_SHARED is then
    /// accepted on private-memory VM types, and a population call may name no
    /// source, populating from the page's current contents.
    public var inPlaceConversion: Bool = false
    /// The guest_memfd HugeTLB series (unmerged): `GUEST_MEMFD_FLAG_HUGETLB`
    /// with 2 MiB or 1 GiB pages. A file created with it gets contiguous
    /// runs of that size whatever `placement` says.
    public var guestMemfdHugeTLB: Bool = false

    // MARK: Platforms

    /// The SEV-SNP firmware, where the host has one.
    public var snp: SNPFirmwareProfile?
    /// The TDX module, where the host has one.
    public var tdx: TDXModuleProfile?
    /// The Arm CCA RMM (realm support), where the host has one.
    public var cca: RMMProfile?

    /// Simulated host physical memory, for placement and the RMP.
    public var hostMemory: UInt64 = 64 << 30
    /// How host frames are handed to guest_memfd pages created without HugeTLB.
    public var placement: PlacementPolicy = .scattered4K

    /// A profile from scratch; most tests start from a preset
    /// (`thisMachine`, `snpHost`, `swProtectedHost`, ...) and change what differs.
    public init(name: String, kernel: String, vmTypes: [VMType], tdp: Bool, memoryAttributes: Bool, smm: Bool = true) {
        self.name = name
        self.kernel = kernel
        self.vmTypes = vmTypes
        self.tdp = tdp
        self.memoryAttributes = memoryAttributes
        self.smm = smm
    }

    /// Whether `type` has private memory on this host (`kvm_arch_has_private_mem`).
    func hasPrivateMemory(_ type: VMType) -> Bool { type.hasPrivateMemory }

    /// The guest_memfd flags `KVM_CREATE_GUEST_MEMFD` accepts on a VM of
    /// `type`, or with no VM (`kvm_gmem_get_supported_flags`, 6.18):
    /// MMAP always; INIT_SHARED only where memory cannot be private, unless
    /// guest_memfd converts in place.
    public func guestMemfdFlags(for type: VMType?) -> GuestMemfdFlags {
        guard guestMemfd else { return [] }
        let hugetlb: GuestMemfdFlags = guestMemfdHugeTLB ? .hugetlb : []
        if let type, hasPrivateMemory(type), !inPlaceConversion { return [.mmap, hugetlb] }
        return [.mmap, .initShared, hugetlb]
    }

    /// Attributes `KVM_SET_MEMORY_ATTRIBUTES` accepts (`kvm_supported_mem_attributes`).
    func supportedAttributes(for type: VMType?) -> MemoryAttributes {
        // With in-place conversion the attributes live in guest_memfd, and the
        // VM-wide ioctl reports none.
        guard memoryAttributes, !inPlaceConversion else { return [] }
        guard let type else { return .private }
        return hasPrivateMemory(type) ? .private : []
    }
}

/// How the fake hands host physical frames to guest_memfd pages.
public enum PlacementPolicy: String, Sendable, CaseIterable {
    /// Each 4 KiB page lands on a frame anywhere in host memory, as a
    /// fragmented buddy allocator would hand them out.
    case scattered4K = "4k"
    /// Pages come in 2 MiB-aligned runs of 512 contiguous frames.
    case contiguous2M = "2m"
    /// Pages come in 1 GiB-aligned runs: a file fills one gigabyte region
    /// before it starts the next.
    case contiguous1G = "1g"
}

/// The SEV-SNP firmware a profile offers.
public struct SNPFirmwareProfile: Sendable {
    /// The firmware's ABI version (major, minor); a guest policy that asks
    /// for more is refused with POLICY_FAILURE.
    public var abiMajor: UInt8 = 1
    public var abiMinor: UInt8 = 55
    /// SMT is active on the host, so the policy must allow it.
    public var smtActive: Bool = true
    /// VMSA features KVM_SEV_INIT2 accepts (`KVM_X86_SEV_VMSA_FEATURES`): DEBUG_SWAP (bit 5).
    public var vmsaFeatures: UInt64 = 1 << 5
    /// Whether KVM issues 2 MiB RMP updates when a whole aligned 2 MiB run
    /// backed by one 2 MiB host frame is populated in one call. KVM 6.18
    /// always uses 4 KiB entries; hugepage-aware population sets this.
    public var largeRMPEntries: Bool = false
    /// CPUID leaves the firmware accepts in a CPUID page, keyed by
    /// (function, index), with the register values it enforces.
    public var cpuid: [SNPCPUIDLeaf] = SNPCPUIDLeaf.defaultTable
    /// RMPOPT (CPUID 0x80000025 EDX bit 0) and the kernel series that drives
    /// it, where the host has them.
    public var rmpopt: RMPOPTProfile?

    public init() {}
}

/// The RMPOPT support a profile offers (Ashish Kalra's
/// RMPOPT series, unmerged). The kernel optimises all memory once SNP is
/// initialised and, after an SNP VM is destroyed, again from a delayed work
/// about 10 s after the last destruction (`snp_rmpopt_all_physmem`).
public struct RMPOPTProfile: Sendable {
    /// CPUs whose RMPOPT tables the kernel programs (one per core).
    public var cpus: Int = 8
    /// The series revision whose interfaces the host has: v1 offered a
    /// configfs knob and a debugfs view, later revisions the debugfs view only.
    public var series: String = "v8"

    public init(cpus: Int = 8) { self.cpus = cpus }
}

/// The TDX module a profile offers.
public struct TDXModuleProfile: Sendable {
    /// TD attributes and XFAM bits the module supports (`KVM_TDX_CAPABILITIES`).
    public var supportedAttributes: UInt64 = 0x0000_0000_1000_0000 | (1 << 28) | (1 << 30)
    public var supportedXFAM: UInt64 = 0x0000_0000_0006_02E7
    /// The guest physical-address width; the shared bit is bit 47 at 48 bits, 51 at 52.
    public var guestPhysicalAddressBits: Int = 48

    public init() {}
}

/// The Arm CCA realm management monitor a profile offers.
public struct RMMProfile: Sendable {
    /// The series revision whose uAPI the host implements.
    public var series: String = "v14"
    /// The realm hash algorithm: SHA-256 (0) or SHA-512 (1), per the RMM
    /// specification's RMI_HASH_SHA_256 / RMI_HASH_SHA_512.
    public var hashAlgorithm: UInt8 = 0
    /// The breakpoints and watchpoints of the host's cores (ID_AA64DFR0_EL1
    /// BRPs + 1 and WRPs + 1), which KVM gives every realm.
    public var breakpoints: UInt32 = 6
    public var watchpoints: UInt32 = 4

    public init() {}
}

extension HostProfile {
    /// This development machine: Linux 6.18 on nested KVM without TDP. Only
    /// the default VM type; guest_memfd with MMAP|INIT_SHARED; no memory
    /// attributes; no pre-fault; no confidential platform.
    public static let thisMachine = HostProfile(
        name: "this-machine", kernel: "6.18", vmTypes: [.default], tdp: false, memoryAttributes: false, smm: false)

    /// The same machine with a KVM built without guest_memfd
    /// (`CONFIG_KVM_GUEST_MEMFD=n`), as other hosts of this project's kind
    /// run it: everything else as `thisMachine`.
    public static var thisMachineWithoutGuestMemfd: HostProfile {
        var profile = thisMachine
        profile.name = "this-machine-without-guest-memfd"
        profile.kernel = "6.18, CONFIG_KVM_GUEST_MEMFD=n"
        profile.guestMemfd = false
        return profile
    }

    /// The profile of this project's development hosts that has the
    /// capabilities a real host reported: with or without guest_memfd.
    public static func thisMachine(matching capabilities: HostCapabilities) -> HostProfile {
        capabilities.guestMemfd ? .thisMachine : .thisMachineWithoutGuestMemfd
    }

    /// A 6.18 host with TDP and `CONFIG_KVM_SW_PROTECTED_VM`: private memory
    /// without confidential hardware, as the kernel's guest_memfd selftests use it.
    public static var swProtectedHost: HostProfile {
        HostProfile(name: "sw-protected-host", kernel: "6.18, CONFIG_KVM_SW_PROTECTED_VM=y",
                    vmTypes: [.default, .swProtected], tdp: true, memoryAttributes: true)
    }

    /// A 7.2 host with guest_memfd in-place conversion (an unmerged series)
    /// and the population rework, and no confidential hardware: private
    /// memory through `KVM_X86_SW_PROTECTED_VM`, with guest_memfd keeping the
    /// shared/private state itself.
    public static var inPlaceHost: HostProfile { swProtectedHost.withInPlaceConversion(named: "in-place-host") }

    /// An AMD EPYC host with SEV-SNP firmware, KVM 6.18. A real such host
    /// also offers the legacy SEV and SEV-ES VM types; the fake does not, as
    /// it has none of their launch commands (LAUNCH_UPDATE_DATA,
    /// LAUNCH_UPDATE_VMSA, LAUNCH_MEASURE), and a profile that offered them
    /// would let a VMM create VMs it could never launch.
    public static var snpHost: HostProfile {
        var profile = HostProfile(name: "snp-host", kernel: "6.18", vmTypes: [.default, .snp],
                                  tdp: true, memoryAttributes: true)
        profile.snp = SNPFirmwareProfile()
        return profile
    }

    /// An SEV-SNP host running the guest_memfd in-place conversion series
    /// (unmerged) on top of the 2026 population rework: guest_memfd starts
    /// shared, converts in place, and launch update may name no source.
    public static var snpInPlaceHost: HostProfile { snpHost.withInPlaceConversion(named: "snp-inplace-host") }

    /// This host moved to 7.2 with the in-place conversion series: the 7.2
    /// binding rule (EEXIST), the population rework, in-place conversion.
    func withInPlaceConversion(named name: String) -> HostProfile {
        var profile = self
        profile.name = name
        profile.kernel = "7.2 + in-place conversion series"
        profile.bindingOverlapErrno = .fileExists
        profile.reworkedPopulation = true
        profile.inPlaceConversion = true
        return profile
    }

    /// An SEV-SNP host with RMPOPT: the RMPOPT series and the guest_memfd
    /// HugeTLB series (both unmerged), with hugepage-aware population that
    /// keeps 2 MiB RMP entries, on `hostMemory` of RAM.
    public static func snpRMPOPTHost(hostMemory: UInt64 = 64 << 30, cpus: Int = 8) -> HostProfile {
        var profile = snpHost
        profile.name = "snp-rmpopt-host"
        profile.kernel = "6.18 + RMPOPT v8 + guest_memfd HugeTLB series"
        profile.guestMemfdHugeTLB = true
        profile.hostMemory = hostMemory
        profile.snp?.largeRMPEntries = true
        profile.snp?.rmpopt = RMPOPTProfile(cpus: cpus)
        return profile
    }

    /// An Intel host with a TDX module, KVM 6.18.
    public static var tdxHost: HostProfile {
        var profile = HostProfile(name: "tdx-host", kernel: "6.18", vmTypes: [.default, .tdx], tdp: true,
                                  memoryAttributes: true)
        profile.tdx = TDXModuleProfile()
        return profile
    }

    /// An Arm host with realm support as in the CCA series v14 (unmerged,
    /// on 7.1-rc1): realm VMs have private memory and are populated only from
    /// a separate source.
    public static var ccaHost: HostProfile {
        var profile = HostProfile(name: "cca-host", kernel: "7.1-rc1 + Arm CCA v14", vmTypes: [.default, .armRealm],
                                  tdp: true, memoryAttributes: true)
        profile.cca = RMMProfile()
        return profile
    }
}

extension HostProfile: CustomStringConvertible {
    /// The profile's name and the kernel whose rules it follows, for test output.
    public var description: String { "\(name) (\(kernel))" }
}
