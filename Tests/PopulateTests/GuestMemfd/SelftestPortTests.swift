#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import KVMFake
import Testing

/// Cases of the kernel's KVM selftests, ported to the fake: each test is
/// named after the selftest and case it mirrors, and expects what the
/// kernel answers there.
@Suite struct SelftestPortTests {
    /// set_memory_region_test, test_add_private_memory_region: a regular
    /// memfd, or any open descriptor that is not a guest_memfd, is refused
    /// with EINVAL (kvm_gmem_bind's f_op check); a descriptor that is not
    /// open at all is EBADF (fget).
    @Test func setMemoryRegionTestRefusesANonGuestMemfdWithEINVALAndAClosedDescriptorWithEBADF() throws {
        let vm = try KVM.open(using: FakeKVM()).createVM()
        let regular = try SharedMemory(size: 0x10000, name: "not-guest-memfd")  // memfd_create
        let memfd = regular.fd
        let closed: CInt = 0x7FFF_FFF0  // past any descriptor limit: never open
        for (fd, errno) in [(memfd, Errno.invalidArgument), (0, .invalidArgument), (closed, .badFileDescriptor)] {
            let region = UserMemoryRegion2(slot: 0, flags: UserMemoryRegion2.guestMemfdFlag, guestPhysicalAddress: 0,
                                           memorySize: 0x10000, guestMemfdOffset: 0, guestMemfd: UInt32(bitPattern: fd))
            #expect(kvmError { try vm.setUserMemoryRegion2(region) }?.errno == errno, "fd \(fd)")
        }
    }

    /// private_mem_kvm_exits_test, test_private_access_memslot_deleted: a
    /// private access to a GPA whose memslot is gone exits with EFAULT and
    /// KVM_EXIT_MEMORY_FAULT (flags PRIVATE, the GPA, 4096 bytes), not MMIO.
    @Test func privateMemKVMExitsTestPrivateAccessToADeletedMemslotIsAMemoryFault() throws {
        let fake = FakeKVM(profile: .swProtectedHost)
        let vm = try KVM.open(using: fake).createVM(type: .swProtected)
        let code = try bindCodeMemory(vm)
        defer { withExtendedLifetime(code) {} }
        let gpa: UInt64 = 0xC000_0000
        let memfd = try vm.createGuestMemfd(size: 0x1000)
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 1, guestPhysicalAddress: gpa, size: 0x1000, memfd: memfd,
                                                      userspaceAddress: 0))
        try vm.setMemoryAttributes(GuestRange(start: gpa, size: 0x1000), attributes: .private)
        try vm.setUserMemoryRegion(slot: 1, guestPhysicalAddress: gpa, memorySize: 0, userspaceAddress: 0)
        let vcpu = try vm.createVCPU(id: 0)
        fake.program(vcpu, [.read(gpa: gpa, count: 8, isPrivate: true)])
        guard case .memoryFault(let fault) = try vcpu.run() else {
            Issue.record("expected KVM_EXIT_MEMORY_FAULT")
            return
        }
        #expect(fault.isPrivate && fault.range == GuestRange(start: gpa, size: 0x1000))
    }

    /// guest_memfd_test, test_collapse: MADV_COLLAPSE on a guest_memfd
    /// mapping is EINVAL whatever the mapping's alignment (no huge-page order
    /// is allowed for the VMA), where a plain memfd could collapse.
    @Test func guestMemfdTestCollapseIsRefusedWithEINVAL() throws {
        let kernel = FakeKVM()
        let vm = try KVM.open(using: kernel).createVM()
        let mapping = try vm.createGuestMemfd(size: 4 << 20, flags: [.mmap, .initShared]).map()
        #expect(throws: Errno.invalidArgument) { try kernel.madvise(mapping.base, length: 2 << 20, advice: 25) }
    }

    /// set_memory_region_test, test_zero_memory_regions: a VM without a
    /// single memslot takes KVM_SET_NR_MMU_PAGES(64), and KVM_RUN then ends in
    /// KVM_EXIT_INTERNAL_ERROR.
    @Test func setMemoryRegionTestZeroMemoryRegionsEndsInAnInternalError() throws {
        let vm = try KVM.open(using: FakeKVM()).createVM()
        try vm.setNrMMUPages(64)
        #expect(kvmError { try vm.setNrMMUPages(63) }?.errno == .invalidArgument)
        let vcpu = try vm.createVCPU(id: 0)
        guard case .internalError = try vcpu.run() else {
            Issue.record("expected KVM_EXIT_INTERNAL_ERROR")
            return
        }
    }

    /// guest_memfd_test, test_fault_private: a host access to a private page
    /// of a guest_memfd mapping (made with MMAP but not INIT_SHARED, so
    /// private throughout on 6.18) raises SIGBUS (kvm_gmem_fault_user_mapping).
    /// The access runs in a child process, which the signal ends.
    @Test func guestMemfdTestFaultPrivateRaisesSIGBUS() throws {
        let vm = try KVM.open(using: FakeKVM(profile: .swProtectedHost)).createVM(type: .swProtected)
        let mapping = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap]).map()
        let page = mapping.base.assumingMemoryBound(to: UInt8.self)
        let child = fork()
        if child == 0 {
            page.pointee = 1
            _exit(0)
        }
        var status: CInt = 0
        #expect(waitpid(child, &status, 0) == child)
        // WIFSIGNALED and WTERMSIG, spelled out: the low seven bits hold the signal.
        #expect(status & 0x7F == SIGBUS, "child status \(status)")
    }

    /// private_mem_conversions_test on an in-place host: a SW_PROTECTED VM's
    /// guest_memfd starts shared and converts page by page in the file
    /// itself, with no VM-wide attribute involved.
    @Test func privateMemConversionsTestConvertsInPlaceOnTheInPlaceHostPreset() throws {
        let fake = FakeKVM(profile: .inPlaceHost)
        let vm = try KVM.open(using: fake, experimental: .inPlaceConversion).createVM(type: .swProtected)
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        let mapping = try memfd.map()
        try mapping.write([1, 2, 3], at: 0x1000)
        try memfd.setMemoryAttributes2(offset: 0x1000, size: 0x1000, attributes: .private)
        #expect(kvmError { _ = try mapping.read(at: 0x1000, count: 3) }?.errno == .badAddress)
        try memfd.setMemoryAttributes2(offset: 0x1000, size: 0x1000, attributes: [])
        #expect(try mapping.read(at: 0x1000, count: 3) == [1, 2, 3])
        #expect(HostProfile.inPlaceHost.description == "in-place-host (7.2 + in-place conversion series)")
    }

    /// guest_memfd_test maps huge-page cases 2 MiB-aligned: an address hint
    /// passes through the kernel seam, and a free aligned address is taken.
    @Test func aGuestMemfdMapsAtAFree2MiBAlignedHint() throws {
        let vm = try KVM.open(using: FakeKVM()).createVM()
        let memfd = try vm.createGuestMemfd(size: 2 << 20, flags: [.mmap, .initShared])
        // Find a free 2 MiB-aligned address: reserve 4 MiB, then give it back.
        let reserved = try #require(mmap(nil, 4 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        let aligned = UnsafeMutableRawPointer(bitPattern: (UInt(bitPattern: reserved) + (2 << 20) - 1) & ~UInt((2 << 20) - 1))!
        munmap(reserved, 4 << 20)
        let mapping = try memfd.map(address: aligned)
        #expect(mapping.base == aligned)
    }

    /// guest_memfd_test, test_file_size and test_file_read_write: fstat gives
    /// the size and a page-sized block; read, write, pread and pwrite fail.
    @Test func guestMemfdTestFileSizeAndReadWrite() throws {
        let fake = FakeKVM()
        let memfd = try KVM.open(using: fake).createVM().createGuestMemfd(size: 0x8000, flags: [.mmap, .initShared])
        #expect(try memfd.stat() == FileStatus(size: 0x8000, blockSize: 4096))
        var buffer = [UInt8](repeating: 0, count: 64)
        #expect(throws: Errno.invalidArgument) { try buffer.withUnsafeMutableBytes { _ = try fake.read(memfd.fd, into: $0, offset: nil) } }
        #expect(throws: Errno.illegalSeek) { try buffer.withUnsafeMutableBytes { _ = try fake.read(memfd.fd, into: $0, offset: 0) } }
        #expect(throws: Errno.invalidArgument) { try buffer.withUnsafeBytes { _ = try fake.write(memfd.fd, from: $0, offset: nil) } }
        #expect(throws: Errno.illegalSeek) { try buffer.withUnsafeBytes { _ = try fake.write(memfd.fd, from: $0, offset: 0) } }
        #expect(throws: Errno.illegalSeek) { _ = try fake.lseek(memfd.fd, offset: 0, whence: SEEK_END) }
    }

    /// The real kernel's side of the same primitives, on a memfd, which has them all.
    @Test func theLinuxKernelSeamStatsReadsAndWritesAFile() throws {
        let kernel = LinuxKernel()
        let file = try SharedMemory(size: 0x2000, name: "seam-check")
        #expect(try kernel.fstat(file.fd).size == 0x2000)
        #expect(try [UInt8]([1, 2, 3]).withUnsafeBytes { try kernel.write(file.fd, from: $0, offset: 0x10) } == 3)
        var back = [UInt8](repeating: 0, count: 3)
        #expect(try back.withUnsafeMutableBytes { try kernel.read(file.fd, into: $0, offset: 0x10) } == 3)
        #expect(back == [1, 2, 3])
        #expect(try kernel.lseek(file.fd, offset: 0, whence: SEEK_END) == 0x2000)
    }

    /// A profile built from scratch through the public initialiser behaves as
    /// it says: here a 6.18 host with SW_PROTECTED VMs but no TDP, whose
    /// pre-fault is missing (kvm_arch_vcpu_pre_fault_memory needs TDP).
    @Test func aProfileBuiltFromScratchOffersWhatItSays() throws {
        let profile = HostProfile(name: "no-tdp", kernel: "6.18", vmTypes: [.default, .swProtected], tdp: false,
                                  memoryAttributes: true)
        let capabilities = try KVM.open(using: FakeKVM(profile: profile)).capabilities()
        #expect(capabilities.vmTypes == [.default, .swProtected])
        #expect(!capabilities.preFaultMemory)
        #expect(profile.description == "no-tdp (6.18)")
    }
}
