import CKVMHeaders
import GuestMemfd
import KVMFake
import Testing

@Suite struct FaultInjectionTests {
    enum Backend: String, CaseIterable, Sendable { case fake, real }

    static var backends: [Backend] { KVMHost.isUsable ? Backend.allCases : [.fake] }

    func kernel(_ backend: Backend) -> FaultInjectingKernel {
        FaultInjectingKernel(backend == .real ? (try? KVMHost.kernel.get()) ?? LinuxKernel()
                                              : FakeKVM(profile: KVMHost.matchingFakeProfile))
    }

    @Test(arguments: backends)
    func anInjectedErrnoFailsTheNamedCallOnceThenItSucceeds(_ backend: Backend) throws {
        let kernel = kernel(backend)
        let kvm = try KVM.open(using: kernel, experimental: .all)
        kernel.inject(.noMemory, into: .ioctl(.createVM))
        let error = kvmError { _ = try kvm.createVM() }
        #expect(error?.errno == .noMemory)
        #expect(error?.operation == .ioctl(.createVM))
        #expect(kvmError { _ = try kvm.createVM() } == nil)
        let calls = kernel.trace.filter { $0.operation == .ioctl(.createVM) }
        #expect(calls.map(\.injected) == [true, false])
        #expect(calls.map(\.errno) == [.noMemory, nil])
    }

    @Test(arguments: backends)
    func timesAlwaysAfterCallsAndFromCallModesFireAsNamed(_ backend: Backend) throws {
        let kernel = kernel(backend)
        let kvm = try KVM.open(using: kernel, experimental: .all)
        kernel.inject(.interrupted, into: .ioctl(.checkExtension), .times(2))
        let outcomes = (0..<3).map { _ in kvmError { _ = try kvm.checkExtension(.guestMemfd) }?.errno }
        #expect(outcomes == [.interrupted, .interrupted, nil])
        kernel.inject(.ioError, into: .ioctl(.getAPIVersion), .afterCalls(2))
        let later = (0..<4).map { _ in kvmError { _ = try kvm.getAPIVersion() }?.errno }
        #expect(later == [nil, nil, .ioError, nil])
        kernel.inject(.noMemory, into: .ioctl(.getAPIVersion), .fromCall(1))
        let persistent = (0..<3).map { _ in kvmError { _ = try kvm.getAPIVersion() }?.errno }
        #expect(persistent == [nil, .noMemory, .noMemory])
        kernel.clearRules()
        // Every tier maps a vCPU's kvm_run area through the seam. A vCPU
        // outlives its descriptor (it goes with the VM), so each try takes a new id.
        let vm = try kvm.createVM()
        kernel.inject(.badAddress, into: .syscall(.mmap), .always)
        #expect(kvmError { _ = try vm.createVCPU(id: 0) }?.errno == .badAddress)
        #expect(kvmError { _ = try vm.createVCPU(id: 1) }?.errno == .badAddress)
        kernel.clearRules()
        #expect(kvmError { _ = try vm.createVCPU(id: 2) } == nil)
    }

    @Test func encryptSubcommandsAreTargetedByName() throws {
        let kernel = FaultInjectingKernel(FakeKVM(profile: .snpHost))
        let vm = try KVM.open(using: kernel, experimental: .all).createVM(type: .snp)
        let snp = try SEVSNP(vm: vm)
        kernel.inject(.resourceTemporarilyUnavailable, into: .encryptCommand(.snpLaunchStart))
        try snp.init2()
        #expect(kvmError { try snp.launchStart(policy: 0x30000) }?.errno == .resourceTemporarilyUnavailable)
        try snp.launchStart(policy: 0x30000)
        #expect(kernel.count(of: .encryptCommand(.snpLaunchStart)) == 2)
        #expect(kernel.count(of: .encryptCommand(.sevInit2)) == 1)
    }

    @Test func preFaultResumesFromKernelReportedProgressAfterEINTR() throws {
        let fake = FakeKVM(profile: .snpHost)
        let kernel = FaultInjectingKernel(fake)
        let vm = try KVM.open(using: kernel, experimental: .all).createVM()
        let memfd = try vm.createGuestMemfd(size: 0x10000, flags: [.mmap, .initShared])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0x100000, size: 0x10000, memfd: memfd))
        let vcpu = try vm.createVCPU(id: 0)
        fake.interrupt(afterPages: 3, in: .preFaultMemory)
        kernel.inject(.interrupted, into: .ioctl(.preFaultMemory))
        try vcpu.preFaultMemory(covering: GuestRange(start: 0x100000, size: 0x10000))
        let calls = kernel.trace.filter { $0.operation == .ioctl(.preFaultMemory) }
        // Injected EINTR (nothing done), then 3 pages and a signal (success with progress), then the rest.
        #expect(calls.map(\.errno) == [.interrupted, nil, nil])
        #expect(fake.hostFrame(of: memfd, offset: 0xF000) != nil)
    }

    @Test func preFaultReportsHowMuchWasMappedBeforeAFailure() throws {
        let fake = FakeKVM(profile: .snpHost)
        let vm = try KVM.open(using: fake, experimental: .all).createVM()
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x4000, memfd: memfd))
        let vcpu = try vm.createVCPU(id: 0)
        let error = kvmError { try vcpu.preFaultMemory(covering: GuestRange(start: 0, size: 0x8000)) }
        #expect(error?.errno == .noSuchFileOrDirectory)
        #expect(error?.completedBytes == 0x4000)
        #expect(error?.range == GuestRange(start: 0x4000, size: 0x4000))
    }

    @Test func persistentInterruptionGivesUpAfterTheLimit() throws {
        let kernel = FaultInjectingKernel(FakeKVM(profile: .snpHost))
        let vm = try KVM.open(using: kernel, experimental: .all).createVM()
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x4000, memfd: memfd))
        let vcpu = try vm.createVCPU(id: 0)
        kernel.inject(.interrupted, into: .ioctl(.preFaultMemory), .always)
        let error = kvmError { try vcpu.preFaultMemory(covering: GuestRange(start: 0, size: 0x4000), interruptionLimit: 5) }
        #expect(error?.errno == .interrupted)
        #expect(error?.completedBytes == 0)
        #expect(kernel.count(of: .ioctl(.preFaultMemory)) == 6)
    }
}

@Suite struct FakeKVMTests {
    @Test func aGuestAccessThatDisagreesWithTheAttributeExitsWithAMemoryFault() throws {
        let snp = try FakeSNPGuest()
        try snp.snp.launchFinish()
        try snp.vm.enableCap(.exitHypercall, arguments: [1 << 12])
        snp.fake.program(snp.vcpu, [
            .write(gpa: 0x3000, bytes: [1, 2, 3], isPrivate: true),
            .mapGPARange(gpa: 0x3000, pages: 1, toPrivate: true),
            .read(gpa: 0x3000, count: 3, isPrivate: true),
        ])
        guard case .memoryFault(let fault) = try snp.vcpu.run() else {
            Issue.record("expected KVM_EXIT_MEMORY_FAULT")
            return
        }
        #expect(fault.isPrivate)
        #expect(fault.range == GuestRange(start: 0x3000, size: 0x1000))
        try snp.makePrivate(0x3000, 0x1000)
        guard case .hypercall(let nr, let arguments) = try snp.vcpu.run() else {
            Issue.record("expected the MAP_GPA_RANGE hypercall exit")
            return
        }
        #expect(nr == 12)
        #expect(arguments[0] == 0x3000 && arguments[1] == 1 && arguments[2] == CKVM_MAP_GPA_RANGE_ENCRYPTED)
        guard case .hlt = try snp.vcpu.run() else {
            Issue.record("expected the script to finish")
            return
        }
        #expect(snp.fake.guestReads(snp.vcpu) == [[1, 2, 3]])
        // The guest's private page is not the host's to read.
        #expect(kvmError { _ = try snp.memfd.map().read(at: 0x3000, count: 1) }?.errno == .badAddress)
    }

    @Test func guestAccessesOutsideEveryMemslotExitAsMMIO() throws {
        let fake = FakeKVM()
        let vm = try KVM.open(using: fake, experimental: .all).createVM()
        let code = try bindCodeMemory(vm)
        defer { withExtendedLifetime(code) {} }
        let vcpu = try vm.createVCPU(id: 0)
        fake.program(vcpu, [.write(gpa: 0xFEE0_0000, bytes: [1, 0, 0, 0], isPrivate: false), .portOut(port: 0xF4, bytes: [3])])
        guard case .mmio(let mmio) = try vcpu.run() else {
            Issue.record("expected an MMIO exit")
            return
        }
        #expect(mmio.physicalAddress == 0xFEE0_0000 && mmio.isWrite && mmio.written == [1, 0, 0, 0])
        guard case .io(let io) = try vcpu.run() else {
            Issue.record("expected a port exit")
            return
        }
        #expect(io.port == 0xF4 && io.value == 3 && io.direction == .out)
    }

    @Test func exitDataIsLentToTheHandlerAndCoversExactlyTheAccess() throws {
        let fake = FakeKVM()
        let vm = try KVM.open(using: fake).createVM()
        let code = try bindCodeMemory(vm)
        defer { withExtendedLifetime(code) {} }
        let vcpu = try vm.createVCPU(id: 0)
        fake.program(vcpu, [.portOut(port: 0x3F8, bytes: [0x41, 0x42]), .read(gpa: 0xFEE0_0010, count: 4, isPrivate: false)])
        let out = try vcpu.run { exit, data in (exit, data.bytes) }
        guard case .io(let io) = out.0 else {
            Issue.record("expected a port exit, got \(out.0)")
            return
        }
        #expect(io.written == [0x41, 0x42] && out.1 == [0x41, 0x42])
        // An MMIO read: the handler answers in the lent bytes, four of them.
        let count = try vcpu.run { exit, data -> Int in
            guard case .mmio(let read) = exit, !read.isWrite, read.written.isEmpty else { return -1 }
            for index in 0..<data.count { data[index] = 0xFF }
            return data.count
        }
        #expect(count == 4)
    }

    @Test func releasingEveryObjectLeavesNoDescriptorOrMappingBehind() throws {
        let fake = FakeKVM()
        do {
            let kvm = try KVM.open(using: fake, experimental: .all)
            let vm = try kvm.createVM()
            let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
            let memory = try memfd.map()
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, mapping: memory))
            let vcpu = try vm.createVCPU(id: 0)
            #expect(fake.openDescriptors == 4)
            #expect(fake.liveMappings == 2)
            _ = vcpu
        }
        #expect(fake.openDescriptors == 0)
        #expect(fake.liveMappings == 0)
    }

    @Test(arguments: PlacementPolicy.allCases)
    func placementDecidesHowMany1GiBRegionsAFileTouches(_ policy: PlacementPolicy) throws {
        var profile = HostProfile.snpHost
        profile.placement = policy
        let fake = FakeKVM(profile: profile)
        let vm = try KVM.open(using: fake, experimental: .all).createVM()
        let memfd = try vm.createGuestMemfd(size: 16 << 20, flags: [.mmap, .initShared])
        try memfd.allocate(offset: 0, length: 16 << 20)
        let frames = (0..<UInt64(4096)).compactMap { fake.hostFrame(of: memfd, offset: $0 * pageSize) }
        #expect(frames.count == 4096)
        let regions = Set(frames.map { $0 / 262_144 })
        switch policy {
        case .scattered4K: #expect(regions.count > 32)
        case .contiguous2M, .contiguous1G: #expect(regions.count == 1)
        }
        if policy != .scattered4K {
            #expect(frames == (0..<UInt64(4096)).map { frames[0] + $0 })
        }
    }
}
