import GuestMemfd
import KVMFake
import Populate
import Testing

@Suite struct BackingTests {
    private func options(_ backing: GuestMemoryBacking) -> PopulateOptions {
        var options = PopulateOptions()
        options.backing = backing
        return options
    }

    @Test(arguments: [GuestMemoryBacking.huge2M, .huge1G])
    func hugeTLBBackingIsTakenWhereTheKernelOffersIt(_ backing: GuestMemoryBacking) throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 8 << 30))
        let vm = try KVM.open(using: fake, experimental: .all).createVM(type: .snp)
        let (memfd, outcome) = try Populator.createGuestMemfd(vm: vm, size: 3 << 20, flags: [.mmap], options: options(backing))
        #expect(outcome == BackingOutcome(asked: backing, got: backing))
        #expect(outcome.description == backing.description)
        // Rounded up to whole huge pages.
        #expect(memfd.size == (3 << 20 + backing.pageSize - 1) / backing.pageSize * backing.pageSize)
        #expect(memfd.flags.hugetlbPageSize == backing.pageSize)
        try memfd.allocate(offset: 0, length: 1 << 20)
        let first = try #require(fake.hostFrame(of: memfd, offset: 0))
        #expect(first % (backing.pageSize / pageSize) == 0)
    }

    @Test func withoutTheHugeTLBSeriesTheFileGets4KiBPagesAndTheReasonIsGiven() throws {
        let vm = try KVM.open(using: FakeKVM(profile: .snpHost), experimental: .all).createVM(type: .snp)
        let (memfd, outcome) = try Populator.createGuestMemfd(vm: vm, size: 3 << 20, flags: [.mmap], options: options(.huge1G))
        #expect(memfd.size == 3 << 20)
        #expect(memfd.flags == [.mmap])
        #expect(outcome.got == .pages4K)
        #expect(outcome.asked == .huge1G)
        #expect(outcome.description.hasPrefix("4 KiB pages (asked for 1 GiB HugeTLB pages: this kernel's guest_memfd has no HugeTLB flag"))
        #expect(outcome.description.contains("KVM_CAP_GUEST_MEMFD_FLAGS is MMAP"))
    }

    @Test func fourKiBPagesNeedNoProbeAndGiveNoReason() throws {
        let vm = try KVM.open(using: FakeKVM(profile: .snpHost), experimental: .all).createVM(type: .snp)
        let (memfd, outcome) = try Populator.createGuestMemfd(vm: vm, size: 1 << 20, flags: [.mmap], options: PopulateOptions())
        #expect(outcome == BackingOutcome(asked: .pages4K, got: .pages4K))
        #expect(outcome.description == "4 KiB pages")
        #expect(memfd.size == 1 << 20)
    }

    @Test func thePopulationReportNamesTheBacking() throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 8 << 30))
        let kvm = try KVM.open(using: fake, experimental: .all)
        let vm = try kvm.createVM(type: .snp)
        let snp = try SEVSNP(vm: vm)
        try snp.init2()
        let vcpu = try vm.createVCPU(id: 0)
        let (memfd, outcome) = try Populator.createGuestMemfd(vm: vm, size: 4 << 20, flags: [.mmap], options: options(.huge2M))
        let mapping = try memfd.map()
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, mapping: mapping))
        try snp.launchStart(policy: 0x30000)
        let layout = GuestMemoryLayout(slots: [.init(range: GuestRange(start: 0, size: 4 << 20), mapping: mapping)],
                                       backing: outcome)
        let plan = LaunchPlan(regions: [PlanRegion(name: "ram", range: GuestRange(start: 0, size: 4 << 20), contents: .zeros,
                                                   kind: .zero)])
        let backend = try SNPBackend(vm: vm, snp: snp, memory: layout, vcpus: [vcpu])
        let result = try Populator(backend: backend, memory: layout).populate(plan)
        #expect(result.report.backing == "2 MiB HugeTLB pages")
        #expect(result.report.description.contains("\nbacking: 2 MiB HugeTLB pages"))
        // Two 2 MiB RMP entries, one per huge page, and the VMSA.
        #expect(fake.rmpUpdates == 3)
    }
}
