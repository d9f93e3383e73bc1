import CKVMHeaders
import GuestMemfd
import KVMFake
import Populate
import Testing

/// The launch order a `LaunchSession` keeps, the host check it makes first,
/// and the descriptors it adopts.
@Suite struct LaunchSessionTests {
    static let plan = LaunchPlan(regions: [
        PlanRegion(name: "image", range: GuestRange(start: 0, size: 0x2000), contents: .bytes([1, 2, 3])),
    ])

    @Test func aHostWithoutTheVMTypeGuestMemfdOrSEVDeviceIsNamedBeforeAnyVMExists() throws {
        let fake = FakeKVM(profile: .thisMachineWithoutGuestMemfd)
        do {
            _ = try LaunchSession(kvm: try KVM.open(using: fake), platform: .snp(SNPLaunchParameters()))
            Issue.record("an SNP launch on a host without SNP must be refused")
        } catch let error as LaunchError {
            guard case .hostNotReady(let platform, let missing) = error else {
                Issue.record("expected hostNotReady, got \(error)")
                return
            }
            #expect(platform == .snp)
            #expect(missing.count == 3)
            #expect(error.description.contains("KVM offers no KVM_X86_SNP_VM VM type"))
            #expect(error.description.contains("KVM_CAP_GUEST_MEMFD = 0"))
            #expect(error.description.contains("the SEV firmware device /dev/sev cannot be opened"))
        }
        #expect(fake.openDescriptors == 0)
    }

    /// Each phase counts the bytes it handled, so the report can give a rate per phase.
    @Test func theReportCountsTheBytesOfEachPhase() throws {
        let session = try LaunchSession(kvm: try KVM.open(using: FakeKVM(profile: .snpHost)), platform: .snp(SNPLaunchParameters()))
        try session.createVCPUs(1)
        try session.createMemory(at: 0, size: 0x10_0000, slot: 0)
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "image", range: GuestRange(start: 0, size: 0x3000), contents: .bytes([7, 8, 9])),
            PlanRegion(name: "zeros", range: GuestRange(start: 0x8000, size: 0x2000), contents: .zeros, kind: .zero),
        ])
        let report = try session.populate(plan).report
        #expect(report.phaseBytes["measure"] == 0x3000, "only NORMAL pages are hashed")
        #expect(report.phaseBytes["convert"] == 0x5000)
        #expect(report.phaseBytes["populate"] == 0x5000)
        #expect(report.phaseBytes["fill"] == 0x3000, "a ZERO region takes no source bytes")
        #expect(report.gibPerSecond("populate") != nil)
        #expect(report.gibPerSecond("validate") == nil, "validation handles no bytes")
        #expect(report.description.contains("populate ") && report.description.contains(" GiB/s)"))
    }

    @Test func populatingBeforeTheVCPUsExistIsRefusedBeforeAnyIoctl() throws {
        let session = try LaunchSession(kvm: try KVM.open(using: FakeKVM(profile: .snpHost)), platform: .snp(SNPLaunchParameters()))
        try session.createMemory(at: 0, size: 0x10000, slot: 0)
        #expect(throws: LaunchError.self) { _ = try session.populate(Self.plan) }
        #expect(session.stage == .platformReady)
        var regs = kvm_regs()
        regs.rip = 0x1000
        #expect(throws: LaunchError.self) { try session.setBootState(regs: regs) }
    }

    @Test func aTDsRegistersAreTheTDXModulesAndCannotBeSet() throws {
        let session = try LaunchSession(kvm: try KVM.open(using: FakeKVM(profile: .tdxHost)), platform: .tdx(TDXLaunchParameters()))
        try session.createVCPUs(1)
        do {
            try session.setBootState(regs: kvm_regs())
            Issue.record("TDX must refuse a host-set boot state")
        } catch {
            guard case .outOfOrder = error else { Issue.record("expected outOfOrder, got \(error)"); return }
        }
    }

    @Test func nothingCanBeAddedOnceTheLaunchIsPopulated() throws {
        let session = try LaunchSession(kvm: try KVM.open(using: FakeKVM(profile: .snpHost)), platform: .snp(SNPLaunchParameters()))
        try session.createVCPUs(1)
        try session.createMemory(at: 0, size: 0x10000, slot: 0)
        _ = try session.populate(Self.plan)
        #expect(session.stage == .populated)
        #expect(throws: LaunchError.self) { try session.createVCPUs(1) }
        #expect(throws: LaunchError.self) { _ = try session.populate(Self.plan) }
    }

    @Test func adoptedBorrowedDescriptorsStayOpenAfterTheSessionIsGone() throws {
        let fake = FakeKVM(profile: .snpHost)
        let kvm = try KVM.open(using: fake)
        // The VMM's own objects, as QEMU or cloud-hypervisor hold them; KVM_SEV_INIT2
        // must come before the first vCPU, so the VMM creates it after the session's.
        let owner = try kvm.createVM(type: .snp)
        var ownerVCPU: VCPU?
        do {
            let vm = VM(adopting: owner.fd, type: .snp, kvm: kvm, ownership: .borrowed)
            let session = try LaunchSession(adopting: vm, platform: .snp(SNPLaunchParameters()), platformInitialised: false)
            ownerVCPU = try owner.createVCPU(id: 0)
            try session.adoptVCPUs([try vm.adoptVCPU(fd: ownerVCPU!.fd, id: 0, ownership: .borrowed)], initialised: true)
            try session.createMemory(at: 0, size: 0x10000, slot: 0)
            var options = PopulateOptions()
            options.observer = fake.observer(of: vm)
            let result = try session.populate(Self.plan, options: options)
            #expect(result.reportedMeasurement == result.expectedMeasurement)
        }
        // /dev/kvm, the VM and the vCPU stay open for their owner; the
        // session's own /dev/sev and guest_memfd are closed.
        #expect(fake.openDescriptors == 3)
        #expect(fake.launchMeasurement(of: owner) != nil)
        #expect(ownerVCPU != nil)
    }
}
