import GuestMemfd
import KVMFake
import Testing

private let gib: UInt64 = 1 << 30
private let framesPerRegion: UInt64 = 262_144

/// An SNP guest on a shared fake RMPOPT host, its guest_memfd created with
/// the given flags, launched up to LAUNCH_START.
private struct RMPOPTGuest {
    let vm: VM
    let snp: SEVSNP
    let memfd: GuestMemfd
    let vcpu: VCPU

    init(_ kvm: KVM, size: UInt64, flags: GuestMemfdFlags = [.mmap]) throws {
        vm = try kvm.createVM(type: .snp)
        snp = try SEVSNP(vm: vm)
        try snp.init2()
        vcpu = try vm.createVCPU(id: 0)
        memfd = try vm.createGuestMemfd(size: size, flags: flags)
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: size, memfd: memfd))
        try snp.launchStart(policy: 0x30000)
    }

    /// Makes `[0, size)` private and has the firmware zero it (ZERO pages), so that every page is assigned.
    func assignPrivate(_ size: UInt64) throws {
        try vm.setMemoryAttributes(GuestRange(start: 0, size: size), attributes: .private)
        var update = SNPLaunchUpdate(gfnStart: 0, sourceAddress: 0, length: size, type: .zero)
        while update.length > 0 { update = try snp.launchUpdate(update) }
    }

    /// Makes `[0, size)` private and has the firmware assign the first page
    /// of every 2 MiB of it, at a 512th of the cost of every page. With
    /// HugeTLB backing the whole huge page is the guest's from its first
    /// page on, so the regions touched are those of the whole range.
    func assignSparsely(_ size: UInt64) throws {
        try vm.setMemoryAttributes(GuestRange(start: 0, size: size), attributes: .private)
        for gpa in stride(from: 0, to: size, by: Int(hugePageSize)) {
            _ = try snp.launchUpdate(SNPLaunchUpdate(gfnStart: UInt64(gpa) / pageSize, sourceAddress: 0, length: pageSize,
                                                     type: .zero))
        }
    }
}

/// The regions that hold a frame of `memfd`'s first `size` bytes, looking
/// at one page every `step` bytes.
private func regions(of fake: FakeKVM, _ memfd: GuestMemfd, _ size: UInt64, step: UInt64 = pageSize) -> Set<Int> {
    Set(stride(from: 0, to: size, by: Int(step)).compactMap { fake.hostFrame(of: memfd, offset: $0) }
        .map { Int($0 / framesPerRegion) })
}

/// Regions some CPU does not have optimised.
private func deoptimized(_ fake: FakeKVM) -> Set<Int> {
    Set(fake.rmpoptRegions.filter { $0.optimizedCPUs.count != fake.rmpoptCPUs }.map(\.index))
}

@Suite struct RMPOPTTests {
    @Test func snpInitialisationOptimisesEveryRegionOnEveryCPU() {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 16 * gib, cpus: 4))
        #expect(fake.rmpoptRegions.count == 16)
        #expect(fake.rmpoptRegions.allSatisfy { $0.optimizedCPUs == [0, 1, 2, 3] && $0.assignedPages == 0 })
        #expect(fake.rmpoptPasses == 1)
        #expect(fake.rmpoptInstructions == 16 * 4)
        // A host without the series has no tables.
        #expect(FakeKVM(profile: .snpHost).rmpoptRegions.isEmpty)
    }

    @Test func assigningOnePageDeoptimisesExactlyItsRegionOnEveryCPU() throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 16 * gib, cpus: 4))
        let guest = try RMPOPTGuest(try KVM.open(using: fake, experimental: .all), size: 0x40000)
        try guest.vm.setMemoryAttributes(GuestRange(start: 0x3000, size: 0x1000), attributes: .private)
        let before = fake.rmpUpdates
        _ = try guest.snp.launchUpdate(SNPLaunchUpdate(gfnStart: 3, sourceAddress: 0, length: 0x1000, type: .zero))
        #expect(fake.rmpUpdates - before == 1)
        let frame = try #require(fake.hostFrame(of: guest.memfd, offset: 0x3000))
        let region = Int(frame / framesPerRegion)
        #expect(deoptimized(fake) == [region])
        let row = fake.rmpoptRegions[region]
        #expect(row.optimizedCPUs.isEmpty)
        #expect(row.assignedByASID == [try #require(fake.snpASID(of: guest.vm)): 1])
        // RMPOPT cannot optimise a region that holds an assigned page.
        #expect(fake.rmpopt(cpu: 2, region: region) == false)
        #expect(fake.rmpoptRegions[region].optimizedCPUs.isEmpty)
    }

    @Test func rmpoptOnOneCPUSetsOnlyThatCPUsBit() throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 8 * gib, cpus: 4))
        let guest = try RMPOPTGuest(try KVM.open(using: fake, experimental: .all), size: 0x40000)
        try guest.assignPrivate(0x1000)
        let region = Int(try #require(fake.hostFrame(of: guest.memfd, offset: 0)) / framesPerRegion)
        // Punching the page out returns it to the hypervisor; the bits stay clear until RMPOPT runs.
        try guest.memfd.punchHole(offset: 0, length: 0x1000)
        #expect(fake.rmpoptRegions[region].assignedPages == 0)
        #expect(fake.rmpoptRegions[region].optimizedCPUs.isEmpty)
        #expect(fake.rmpopt(cpu: 1, region: region, function: 1) == false)
        #expect(fake.rmpopt(cpu: 1, region: region) == true)
        #expect(fake.rmpoptRegions[region].optimizedCPUs == [1])
        #expect(fake.rmpopt(cpu: 1, region: region, function: 1) == true)
        #expect(fake.rmpopt(cpu: 4, region: region) == nil)
    }

    @Test func teardownAndTheScheduledPassRestoreEveryRegion() throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 16 * gib, cpus: 4))
        var touched = Set<Int>()
        do {
            let kvm = try KVM.open(using: fake, experimental: .all)
            let guests = try (0..<3).map { _ in try RMPOPTGuest(kvm, size: 4 << 20) }
            for guest in guests {
                try guest.assignPrivate(4 << 20)
                try guest.snp.launchFinish()
                touched.formUnion(regions(of: fake, guest.memfd, 4 << 20))
            }
            // The VMSAs are kernel pages in the first gigabyte.
            touched.insert(0)
            #expect(deoptimized(fake) == touched)
            #expect(touched.count > 3)
            // Closing a guest_memfd returns its pages, but only the VM's destruction schedules the pass.
            let first = try RMPOPTGuest(kvm, size: 0x10000)
            try first.assignPrivate(0x10000)
            #expect(!fake.rmpoptPending)
        }
        #expect(fake.assignedFrames.isEmpty)
        #expect(fake.rmpoptRegions.allSatisfy { $0.assignedPages == 0 })
        // Freed pages leave the bits clear: only RMPOPT sets them.
        #expect(deoptimized(fake).isSuperset(of: touched))
        #expect(fake.rmpoptPending)
        #expect(fake.runPendingRMPOptimization())
        #expect(deoptimized(fake).isEmpty)
        #expect(!fake.rmpoptPending)
        #expect(!fake.runPendingRMPOptimization())
        #expect(fake.rmpoptPasses == 2)
    }

    @Test func aGuestMemfdOutlivingItsVMDescriptorDelaysTheDestruction() throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 4 * gib, cpus: 2))
        var memfd: GuestMemfd?
        do {
            let guest = try RMPOPTGuest(try KVM.open(using: fake, experimental: .all), size: 0x10000)
            try guest.assignPrivate(0x10000)
            memfd = guest.memfd
        }
        // The file holds the VM: nothing is destroyed or scheduled yet.
        #expect(!fake.rmpoptPending)
        #expect(fake.assignedFrames.count == 16)
        memfd = nil
        #expect(fake.rmpoptPending)
        #expect(fake.assignedFrames.isEmpty)
        _ = memfd
    }

    @Test(arguments: [(64 << 20) as UInt64, gib, gib + (2 << 20), 2 * gib + (6 << 20)])
    func oneGiBPlacementDeoptimisesExactlyTheCeilingOfThePrivateSize(_ privateSize: UInt64) throws {
        let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 16 * gib, cpus: 2))
        let kvm = try KVM.open(using: fake, experimental: .all)
        let fileSize = (privateSize + gib - 1) / gib * gib
        let guests = try (0..<2).map { _ in
            try RMPOPTGuest(kvm, size: fileSize, flags: [.mmap, .hugetlb(pageSize: gib)])
        }
        var expected = Set<Int>()
        for guest in guests {
            try guest.assignSparsely(privateSize)
            let own = regions(of: fake, guest.memfd, privateSize, step: hugePageSize)
            #expect(own.count == Int((privateSize + gib - 1) / gib))
            #expect(expected.isDisjoint(with: own))
            expected.formUnion(own)
        }
        #expect(deoptimized(fake) == expected)
    }

    @Test func scattered4KiBPlacementDeoptimisesManyRegionsWhere2MiBPacksGuestsTogether() throws {
        let privateSize: UInt64 = 16 << 20
        let scattered = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 64 * gib, cpus: 2))
        let small = try RMPOPTGuest(try KVM.open(using: scattered, experimental: .all), size: privateSize)
        try small.assignPrivate(privateSize)
        let spread = regions(of: scattered, small.memfd, privateSize)
        #expect(spread.count > 32)
        #expect(deoptimized(scattered) == spread)

        let packed = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 64 * gib, cpus: 2))
        let kvm = try KVM.open(using: packed, experimental: .all)
        let guests = try (0..<4).map { _ in
            try RMPOPTGuest(kvm, size: privateSize, flags: [.mmap, .hugetlb(pageSize: hugePageSize)])
        }
        for guest in guests { try guest.assignPrivate(privateSize) }
        // Four 16 MiB guests share the lowest free region above the kernel's.
        #expect(deoptimized(packed) == [1])
        #expect(packed.rmpoptRegions[1].assignedByASID.count == 4)
    }

    @Test func twoMiBEntriesTakeOneRMPUpdateEachWayWhere4KiBPagesTake512() throws {
        for (flags, perRun) in [([.mmap, .hugetlb(pageSize: hugePageSize)], 1), ([.mmap] as GuestMemfdFlags, 512)] {
            let fake = FakeKVM(profile: .snpRMPOPTHost(hostMemory: 8 * gib, cpus: 2))
            do {
                let guest = try RMPOPTGuest(try KVM.open(using: fake, experimental: .all), size: 4 << 20, flags: flags)
                try guest.assignPrivate(4 << 20)
                #expect(fake.rmpUpdates == 2 * perRun)
            }
            #expect(fake.rmpUpdates == 4 * perRun)
        }
    }

    @Test func hugeTLBFlagsAreCheckedAsTheSeriesDoes() throws {
        let kvm = try KVM.open(using: FakeKVM(profile: .snpRMPOPTHost(hostMemory: 8 * gib)), experimental: .all)
        #expect(try kvm.capabilities().guestMemfdFlags.contains(.hugetlb))
        let vm = try kvm.createVM(type: .snp)
        // The file must be whole huge pages, of a size the host has a pool for.
        #expect(kvmError { _ = try vm.createGuestMemfd(size: 3 << 20, flags: [.mmap, .hugetlb(pageSize: hugePageSize)]) }?
            .errno == .invalidArgument)
        #expect(kvmError { _ = try vm.createGuestMemfd(size: 16 << 20, flags: [.mmap, .hugetlb(pageSize: 16 << 20)]) }?
            .errno == .invalidArgument)
        _ = try vm.createGuestMemfd(size: 4 << 20, flags: [.mmap, .hugetlb(pageSize: hugePageSize)])
        // 6.18 has no such flag.
        let plain = try KVM.open(using: FakeKVM(profile: .snpHost), experimental: .all)
        #expect(try !plain.capabilities().guestMemfdFlags.contains(.hugetlb))
        #expect(kvmError { _ = try plain.createVM(type: .snp).createGuestMemfd(size: 4 << 20,
                                                                             flags: [.mmap, .hugetlb(pageSize: hugePageSize)]) }?
            .errno == .invalidArgument)
    }
}
