#if canImport(Glibc)
import Glibc
#endif
import CKVMHeaders
import GuestMemfd
import KVMFake
import Testing

/// What a user porting KVM selftests to the fake drives it with: scripted
/// guests whose accesses follow the VM type, hypercalls with the guest's
/// own arguments, MMIO reads answered by the host, exits for shutdown and
/// system events, and guest_memfd's own reference on its VM.
@Suite struct FakeEmbedderTests {
    @Test func anMMIOReadSeesTheBytesTheHostPutInTheExit() throws {
        let fake = FakeKVM()
        let vm = try KVM.open(using: fake).createVM()
        let code = try bindCodeMemory(vm)
        defer { withExtendedLifetime(code) {} }
        let vcpu = try vm.createVCPU(id: 0)
        fake.program(vcpu, [.read(gpa: 0xFED0_0000, count: 4, isPrivate: false), .halt])
        let answered = try vcpu.run { exit, data -> Bool in
            guard case .mmio(let access) = exit, !access.isWrite, data.count == 4 else { return false }
            for index in 0..<4 { data[index] = UInt8(0xA0 + index) }
            return true
        }
        #expect(answered)
        guard case .hlt = try vcpu.run() else {
            Issue.record("expected the guest to halt after its read")
            return
        }
        #expect(fake.guestReads(vcpu) == [[0xA0, 0xA1, 0xA2, 0xA3]])
    }

    /// private_mem_conversions_test: the guest's KVM_HC_MAP_GPA_RANGE carries
    /// its own attribute bits, and only numbers the host enabled exit.
    @Test func aHypercallExitsWithTheGuestsOwnArgumentsOnlyWhereEnabled() throws {
        let fake = FakeKVM(profile: .swProtectedHost)
        let vm = try KVM.open(using: fake).createVM(type: .swProtected)
        let code = try bindCodeMemory(vm)
        defer { withExtendedLifetime(code) {} }
        let vcpu = try vm.createVCPU(id: 0)
        let mapGPARange = UInt64(CKVM_HC_MAP_GPA_RANGE)
        fake.program(vcpu, [.hypercall(nr: mapGPARange, arguments: [0x10_0000, 3, 0x11]), .halt])
        guard case .hlt = try vcpu.run() else {
            Issue.record("a hypercall the host did not enable must not exit")
            return
        }
        try vm.enableCap(.exitHypercall, arguments: [1 << mapGPARange])
        fake.program(vcpu, [.hypercall(nr: mapGPARange, arguments: [0x10_0000, 3, 0x11])])
        guard case .hypercall(let nr, let arguments) = try vcpu.run() else {
            Issue.record("expected KVM_EXIT_HYPERCALL")
            return
        }
        #expect(nr == mapGPARange && Array(arguments.prefix(3)) == [0x10_0000, 3, 0x11])
    }

    /// On KVM_X86_SW_PROTECTED_VM an access is private exactly where the
    /// page's attribute is: no implicit-conversion exit for either kind.
    @Test func swProtectedAccessesFollowThePagesAttribute() throws {
        let fake = FakeKVM(profile: .swProtectedHost)
        let vm = try KVM.open(using: fake).createVM(type: .swProtected)
        let code = try bindCodeMemory(vm)
        defer { withExtendedLifetime(code) {} }
        let gpa: UInt64 = 0x10_0000
        let shared = try SharedMemory(size: 0x2000, name: "shared-side")
        let memfd = try vm.createGuestMemfd(size: 0x2000)
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 1, guestPhysicalAddress: gpa, size: 0x2000, memfd: memfd,
                                                      userspaceAddress: shared.userspaceAddress))
        try vm.setMemoryAttributes(GuestRange(start: gpa, size: 0x1000), attributes: .private)
        let vcpu = try vm.createVCPU(id: 0)
        fake.program(vcpu, [.store(gpa: gpa, bytes: [7]), .store(gpa: gpa + 0x1000, bytes: [9]),
                            .load(gpa: gpa, count: 1), .halt])
        guard case .hlt = try vcpu.run() else {
            Issue.record("no access should exit")
            return
        }
        #expect(fake.guestReads(vcpu) == [[7]])
        // The shared store went to the memslot's host memory; the private one did not.
        #expect(Array(UnsafeRawBufferPointer(start: shared.base + 0x1000, count: 1)) == [9])
        #expect(Array(UnsafeRawBufferPointer(start: shared.base, count: 1)) == [0])
    }

    @Test func shutdownAndSystemEventStepsExitAsKVMReportsThem() throws {
        let fake = FakeKVM()
        let vm = try KVM.open(using: fake).createVM()
        let code = try bindCodeMemory(vm)
        defer { withExtendedLifetime(code) {} }
        let vcpu = try vm.createVCPU(id: 0)
        fake.program(vcpu, [.systemEvent(type: 2), .shutdown])
        guard case .systemEvent(let type) = try vcpu.run(), type == 2 else {
            Issue.record("expected KVM_EXIT_SYSTEM_EVENT (reset)")
            return
        }
        guard case .shutdown = try vcpu.run() else {
            Issue.record("expected KVM_EXIT_SHUTDOWN")
            return
        }
    }

    /// kvm_gmem_create takes a reference on the VM (kvm_get_kvm): closing
    /// the VM's own descriptor leaves the guest_memfd working, and the VM
    /// goes with the guest_memfd's last reference.
    @Test func aGuestMemfdKeepsWorkingAfterItsVMsDescriptorIsClosed() throws {
        let fake = FakeKVM()
        let kvmFD = try fake.open("/dev/kvm", flags: O_RDWR)
        let vmFD = CInt(try fake.ioctl(kvmFD, Ioctl.createVM.request, 0))
        var request = ckvm_create_guest_memfd()
        request.size = 0x4000
        request.flags = GuestMemfdFlags([.mmap, .initShared]).rawValue
        let gmemFD = CInt(try fake.ioctl(vmFD, Ioctl.createGuestMemfd.request, pointerTo: &request))
        try fake.close(vmFD)
        try fake.close(kvmFD)
        let base = try fake.mmap(length: 0x4000, protection: PROT_READ | PROT_WRITE, flags: MAP_SHARED, fd: gmemFD, offset: 0)
        base.storeBytes(of: 0x5A, as: UInt8.self)
        try fake.fallocate(gmemFD, mode: CKVM_FALLOC_FL_KEEP_SIZE | CKVM_FALLOC_FL_PUNCH_HOLE, offset: 0, length: 0x1000)
        #expect(base.load(as: UInt8.self) == 0)
        #expect(fake.openDescriptors == 1)
        try fake.munmap(base, length: 0x4000)
        try fake.close(gmemFD)
        #expect(fake.openDescriptors == 0 && fake.liveMappings == 0)
    }
}
