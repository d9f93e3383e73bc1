import GuestMemfd
import KVMFake
import Populate
import VMMCore
import Testing

/// Capability tiers, the feature-hiding decorator and the memfd fallback,
/// over the fake's profiles, so that every tier is pinned on every host.
@Suite struct TierTests {
    static func capabilities(_ profile: HostProfile, hiding hidden: Set<KVMFeature> = []) throws -> HostCapabilities {
        try KVM.open(using: FeatureHidingKernel(FakeKVM(profile: profile), hiding: hidden)).capabilities()
    }

    @Test func eachTierFollowsFromTheCapabilities() throws {
        #expect(try Self.capabilities(.thisMachineWithoutGuestMemfd).tier == .t1)
        #expect(try Self.capabilities(.thisMachine, hiding: [.mmap]).tier == .t2)
        #expect(try Self.capabilities(.thisMachine).tier == .t3)
        #expect(try Self.capabilities(.ccaHost).tier == .t4)
        #expect(try Self.capabilities(.snpHost).tier == .t5)
        #expect(try Self.capabilities(.tdxHost).tier == .t5)
        #expect(try Self.capabilities(.snpHost, hiding: [.confidential]).tier == .t4)
        #expect(try Self.capabilities(.snpHost, hiding: [.guestMemfd]).tier == .t1)
    }

    @Test func aMissingFeatureIsNamedWithItsCapabilityAndValue() throws {
        let t1 = try Self.capabilities(.thisMachineWithoutGuestMemfd)
        #expect(t1.whyMissing(.guestMemfd) == "host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0)")
        #expect(t1.whyMissing(.preFault) == "host KVM lacks pre-fault (KVM_CAP_PRE_FAULT_MEMORY = 0)")
        let t2 = try Self.capabilities(.thisMachine, hiding: [.mmap])
        #expect(t2.whyMissing(.guestMemfd) == nil)
        #expect(t2.whyMissing(.mmap) == "host KVM's guest_memfd lacks MMAP|INIT_SHARED (KVM_CAP_GUEST_MEMFD_FLAGS = none)")
        #expect(try Self.capabilities(.snpHost).whyMissing(.confidential) == nil)
    }

    @Test func featureListsNameKnownFeaturesOnly() throws {
        #expect(try KVMFeature.list("guest_memfd, mmap,,pre_fault") == [.guestMemfd, .mmap, .preFault])
        #expect(try KVMFeature.list("") == [])
        #expect(throws: KVMFeatureListError(name: "gmem", list: "kvm,gmem")) { try KVMFeature.list("kvm,gmem") }
    }

    /// The decorator, over the fake of a host with guest_memfd, must answer
    /// every differential case as the fake of the same host without it,
    /// whose answers the differential suite checks against a real kernel
    /// built without guest_memfd.
    @Test(arguments: DifferentialCase.all)
    func hidingGuestMemfdAnswersAsAKVMBuiltWithoutIt(_ testCase: DifferentialCase) throws {
        var hidden = Observations(), without = Observations()
        try testCase.body(try KVM.open(using: FeatureHidingKernel(FakeKVM(profile: .thisMachine), hiding: [.guestMemfd])),
                          &hidden)
        try testCase.body(try KVM.open(using: FakeKVM(profile: .thisMachineWithoutGuestMemfd)), &without)
        #expect(!hidden.lines.isEmpty)
        #expect(hidden.lines == without.lines)
    }

    @Test func hidingKVMLooksLikeAHostWithoutIt() {
        let kernel = FeatureHidingKernel(FakeKVM(profile: .thisMachine), hiding: [.kvm])
        #expect(throws: Errno.noSuchFileOrDirectory) { _ = try kernel.open("/dev/kvm", flags: 0) }
    }

    @Test func hidingConfidentialTypesRefusesThemAsAKernelThatLacksThem() throws {
        let kvm = try KVM.open(using: FeatureHidingKernel(FakeKVM(profile: .snpHost), hiding: [.confidential]))
        #expect(try kvm.capabilities().vmTypes == [.default])
        #expect(kvmError { _ = try kvm.createVM(type: .snp) }?.errno == .invalidArgument)
        #expect(kvmError { _ = try kvm.createVM() } == nil)
    }

    @Test func hidingPreFaultAndAttributesRefusesTheirIoctls() throws {
        let kvm = try KVM.open(using: FeatureHidingKernel(FakeKVM(profile: .snpHost), hiding: [.preFault, .memoryAttributes]))
        let capabilities = try kvm.capabilities()
        #expect(!capabilities.preFaultMemory && capabilities.memoryAttributes.isEmpty)
        let vm = try kvm.createVM(type: .snp)
        #expect(kvmError { try vm.setMemoryAttributes(GuestRange(start: 0, size: 0x1000), attributes: .private) }?.errno == .notTTY)
        let vcpu = try vm.createVCPU(id: 0)
        #expect(kvmError { _ = try vcpu.preFaultMemory(GuestRange(start: 0, size: 0x1000)) }?.errno == .notSupported)
    }

    // MARK: The RAM backing snpvmm run picks

    @Test func autoRAMIsMemfdWithANoteWhereGuestMemfdCannotBeMapped() throws {
        let options = RunOptions()
        #expect(GuestRun.hostPlan(options, capabilities: try Self.capabilities(.thisMachineWithoutGuestMemfd))
                == .success(.init(ram: .memfd, note: "guest RAM is a memfd mapped shared, not guest_memfd: "
                                  + "host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0)")))
        #expect(GuestRun.hostPlan(options, capabilities: try Self.capabilities(.thisMachine, hiding: [.mmap]))
                == .success(.init(ram: .memfd, note: "guest RAM is a memfd mapped shared, not guest_memfd: "
                                  + "host KVM's guest_memfd lacks MMAP|INIT_SHARED (KVM_CAP_GUEST_MEMFD_FLAGS = none)")))
        #expect(GuestRun.hostPlan(options, capabilities: try Self.capabilities(.thisMachine)) == .success(.init(ram: .guestMemfd)))
    }

    @Test func emulatedLaunchesRunTheirGuestFromMemfdWithoutGuestMemfd() throws {
        var options = RunOptions()
        options.platform = .snp
        options.emulate = true
        #expect(GuestRun.hostPlan(options, capabilities: try Self.capabilities(.thisMachineWithoutGuestMemfd)).map(\.ram)
                == .success(.memfd))
    }

    @Test func guestMemfdAskedForOnAHostWithoutItIsRefusedNamingTheCapability() throws {
        var options = RunOptions()
        options.ram = .guestMemfd
        let refusal = try #require(GuestRun.hostPlan(options, capabilities: try Self.capabilities(.thisMachineWithoutGuestMemfd)).refusal)
        #expect(refusal.message.hasPrefix("--ram guest_memfd: host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0)"))
        options.ram = .memfd
        #expect(GuestRun.hostPlan(options, capabilities: try Self.capabilities(.thisMachine)) == .success(.init(ram: .memfd)))
    }

    @Test func aMachineOnAKVMWithoutGuestMemfdPopulatesMemfdRAMThroughOrdinaryMemslots() throws {
        let kernel = FaultInjectingKernel(FakeKVM(profile: .thisMachineWithoutGuestMemfd))
        let machine = try Machine(kvm: try KVM.open(using: kernel), ram: .memfd, memorySize: 4 << 20, cpus: 1, output: { _ in })
        #expect(machine.memfd == nil)
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "code", range: GuestRange(start: 0x1000, size: 0x1000), contents: .bytes([0xF4, 1, 2])),
        ])
        try machine.populatePlain(plan)
        #expect(try machine.hostMemory!.read(at: 0x1000, count: 4) == [0xF4, 1, 2, 0])
        #expect(kernel.count(of: .ioctl(.setUserMemoryRegion)) == 1)
        #expect(kernel.count(of: .ioctl(.setUserMemoryRegion2)) == 0)
        #expect(kernel.count(of: .ioctl(.createGuestMemfd)) == 0)
    }
}
