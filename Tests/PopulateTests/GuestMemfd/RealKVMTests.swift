import CKVMHeaders
import Fixtures
import Foundation
import GuestMemfd
import Testing

/// Runs the checksum guest from `memory`, already bound at guest-physical 0,
/// and checks what it reports.
private func runChecksumGuest(_ vm: VM, _ memory: any MappedGuestMemory) throws {
        let codeAddress: UInt64 = 0x1000, dataAddress: UInt64 = 0x2000
        let data = (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try memory.write(Fixtures.checksum16, at: Int(codeAddress))
        try memory.write(data, at: Int(dataAddress))

        let vcpu = try vm.createVCPU(id: 0)
        var sregs = try vcpu.getSregs()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        sregs.ds.base = 0
        sregs.ds.selector = 0
        try vcpu.setSregs(sregs)
        var regs = kvm_regs()
        regs.rip = codeAddress
        regs.rsi = dataAddress
        regs.rcx = UInt64(data.count)
        regs.rflags = 0x2
        try vcpu.setRegs(regs)

        guard case .io(let io) = try vcpu.run() else {
            Issue.record("expected a port write first")
            return
        }
        #expect(io.direction == .out)
        #expect(io.port == Fixtures.checksumPort)
        #expect(io.size == 4)
        #expect(io.value == Fixtures.checksum(data))
        guard case .hlt = try vcpu.run() else {
            Issue.record("expected HLT after the report")
            return
        }
        #expect(try vcpu.getRegs().rip == codeAddress + UInt64(Fixtures.checksum16.count))
}

/// The typed KVM objects on the real `/dev/kvm`: what every KVM offers (T1 and up).
@Suite(.requiresKVM(.kvm))
struct RealKVMTests {
    let kvm: KVM
    let vm: VM

    init() throws {
        kvm = try KVMHost.open()
        vm = try kvm.createVM()
    }

    @Test func guestRunFromMemfdRAMReportsTheChecksumOfItsData() throws {
        let memory = try SharedMemory(size: 0x10000)
        try vm.setUserMemoryRegion(slot: 0, guestPhysicalAddress: 0, memorySize: 0x10000,
                                   userspaceAddress: memory.userspaceAddress)
        try runChecksumGuest(vm, memory)
    }

    // MARK: Capabilities

    @Test func capabilitiesAreReadAsTypedValues() throws {
        let caps = try kvm.capabilities()
        #expect(caps.apiVersion == 12)
        #expect(caps.vmTypes.contains(.default))
        #expect(caps.guestMemfd == (try kvm.checkExtension(.guestMemfd) != 0))
        #expect(caps.tier >= .t1)
        #expect(caps.memslots > 0)
        #expect(try vm.checkExtension(.guestMemfdFlags) == Int(caps.guestMemfdFlags.rawValue))
    }

    @Test func everyReportedVMTypeCanBeCreatedAndNoOtherCan() throws {
        let supported = try kvm.capabilities().vmTypes
        for type in VMType.x86Types {
            let error = kvmError { _ = try kvm.createVM(type: type) }
            if supported.contains(type) {
                #expect(error == nil, "\(type) is reported but failed: \(String(describing: error))")
            } else {
                #expect(error?.errno == .invalidArgument, "\(type)")
                #expect(error?.operation == .ioctl(.createVM))
            }
        }
    }

    @Test func guestMemfdCreatedOnTheSystemDescriptorFailsWithEINVAL() throws {
        var request = ckvm_create_guest_memfd()
        request.size = 0x1000
        #expect(throws: Errno.invalidArgument) {
            _ = try kvm.kernel.ioctl(kvm.fd, Ioctl.createGuestMemfd.request, pointerTo: &request)
        }
    }

    // MARK: A KVM without guest_memfd

    @Test(.requiresKVMWithout(.guestMemfd))
    func guestMemfdOnAKVMWithoutItFailsWithENOTTYNamingTheMissingCapability() throws {
        #expect(try vm.checkExtension(.guestMemfd) == 0)
        #expect(try vm.checkExtension(.guestMemfdFlags) == 0)
        let error = kvmError { _ = try vm.createGuestMemfd(size: 0x1000, flags: []) }
        #expect(error?.errno == .notTTY)
        #expect(error?.description.contains("has no guest_memfd (KVM_CAP_GUEST_MEMFD = 0)") == true)
    }

    @Test(.requiresKVMWithout(.guestMemfd))
    func aGuestMemfdMemslotOnAKVMWithoutItFailsWithEINVAL() throws {
        let memory = try SharedMemory(size: 0x4000)
        var region = UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, sharedMemory: memory)
        region.flags = UserMemoryRegion2.guestMemfdFlag
        // check_memory_region_flags refuses the flag before the descriptor is looked at.
        region.guestMemfd = 999
        #expect(kvmError { try vm.setUserMemoryRegion2(region) }?.errno == .invalidArgument)
        region.flags = 0
        #expect(kvmError { try vm.setUserMemoryRegion2(region) } == nil)
    }

    // MARK: Attributes, pre-fault, encrypt ops on this host's default VM
    @Test func memoryAttributesFollowTheCapability() throws {
        let supported = try vm.checkExtension(.memoryAttributes)
        let error = kvmError { try vm.setMemoryAttributes(GuestRange(start: 0, size: 0x1000), attributes: .private) }
        if try kvm.checkExtension(.memoryAttributes) == 0 {
            // Not built in: the ioctl is unknown.
            #expect(error?.errno == .notTTY)
        } else if supported == 0 {
            #expect(error?.errno == .invalidArgument)
        } else {
            #expect(error == nil)
        }
        #expect(error.map { $0.description.hasPrefix("KVM_SET_MEMORY_ATTRIBUTES on VM fd") } ?? true)
    }

    @Test func preFaultFollowsTheCapability() throws {
        let memory = try SharedMemory(size: 0x4000)
        try vm.setUserMemoryRegion(slot: 0, guestPhysicalAddress: 0, memorySize: 0x4000, userspaceAddress: memory.userspaceAddress)
        let vcpu = try vm.createVCPU(id: 0)
        let range = GuestRange(start: 0, size: 0x4000)
        if try kvm.checkExtension(.preFaultMemory) == 0 {
            let error = kvmError { _ = try vcpu.preFaultMemory(range) }
            #expect(error?.errno == .notSupported)
            #expect(error?.range == range)
        } else {
            try vcpu.preFaultMemory(covering: range)
        }
    }

    @Test func preFaultWithUnalignedOrEmptyRangeFailsWithEINVALOrIsUnsupported() throws {
        let vcpu = try vm.createVCPU(id: 0)
        let unsupported = try kvm.checkExtension(.preFaultMemory) == 0
        for range in [GuestRange(start: 0x800, size: 0x1000), GuestRange(start: 0, size: 0)] {
            let error = kvmError { _ = try vcpu.preFaultMemory(range) }
            // The generic argument checks run before the x86 TDP check.
            #expect(error?.errno == .invalidArgument || (unsupported && error?.errno == .notSupported), "\(range)")
        }
    }

    @Test func encryptOpOnADefaultVMFailsWithENOTTY() throws {
        let tdx = TDX(vm: vm)
        let error = kvmError { try tdx.finalizeVM() }
        #expect(error?.errno == .notTTY)
        #expect(error?.operation == .encryptOp(.tdxFinalizeVM))
    }
}

/// guest_memfd on the real `/dev/kvm` (T2 and up).
@Suite(.requiresKVM(.guestMemfd))
struct RealGuestMemfdTests {
    let kvm: KVM
    let vm: VM

    init() throws {
        kvm = try KVMHost.open()
        vm = try kvm.createVM()
    }

    // MARK: guest_memfd creation

    @Test(arguments: [GuestMemfdFlags(rawValue: 1 << 2), GuestMemfdFlags(rawValue: 1 << 3), GuestMemfdFlags(rawValue: 1 << 63)])
    func guestMemfdWithAFlagOutsideTheCapabilityFailsWithEINVAL(_ flags: GuestMemfdFlags) throws {
        let supported = try vm.checkExtension(.guestMemfdFlags)
        try #require(UInt64(supported) & flags.rawValue == 0)
        let error = kvmError { _ = try vm.createGuestMemfd(size: 0x1000, flags: flags) }
        #expect(error?.errno == .invalidArgument)
        #expect(error?.operation == .ioctl(.createGuestMemfd))
        #expect(error?.object == .vm)
    }

    @Test(arguments: [UInt64(0), 1, 4095, 4097, 6144, UInt64(bitPattern: -4096)])
    func guestMemfdWhoseSizeIsNotPositiveAndPageAlignedFailsWithEINVAL(_ size: UInt64) {
        let error = kvmError { _ = try vm.createGuestMemfd(size: size, flags: [.mmap]) }
        #expect(error?.errno == .invalidArgument)
        #expect(error?.description.contains("KVM_CREATE_GUEST_MEMFD on VM fd") == true)
    }

    @Test func mappingAGuestMemfdMadeWithoutMMAPFailsWithENODEV() throws {
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [])
        let error = kvmError { _ = try memfd.map() }
        #expect(error?.errno == .noSuchDevice)
        #expect(error?.operation == .syscall(.mmap))
    }
}

/// guest_memfd the host maps and writes, on the real `/dev/kvm` (T3 and up).
@Suite(.requiresKVM(.mmap))
struct RealGuestMemfdMappingTests {
    let kvm: KVM
    let vm: VM

    init() throws {
        kvm = try KVMHost.open()
        vm = try kvm.createVM()
    }

    @Test func guestRunFromGuestMemfdReportsTheChecksumOfItsData() throws {
        let memory = try vm.createGuestMemfd(size: 0x10000, flags: [.mmap, .initShared]).map()
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, mapping: memory))
        try runChecksumGuest(vm, memory)
    }

    // MARK: mmap

    @Test func privateMappingOfAGuestMemfdFailsWithEINVAL() throws {
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [.mmap, .initShared])
        #expect(kvmError { _ = try memfd.map(shared: false) }?.errno == .invalidArgument)
    }

    @Test func writesThroughTheMappingReadBack() throws {
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        let memory = try memfd.map()
        let bytes = (0..<5000).map { UInt8(truncatingIfNeeded: $0) }
        try memory.write(bytes, at: 0x800)
        #expect(try memory.read(at: 0x800, count: bytes.count) == bytes)
        #expect(try memory.read(at: 0, count: 0x800) == [UInt8](repeating: 0, count: 0x800))
    }

    @Test func accessBeyondTheEndOfTheFileFailsWithEFAULTInsteadOfSIGBUS() throws {
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [.mmap, .initShared])
        let memory = try memfd.map(length: 0x4000)
        #expect(kvmError { try memory.write([1], at: 0x2000) }?.errno == .badAddress)
        #expect(kvmError { try memory.write([1], at: 0x1FFF) } == nil)
    }

    @Test func hostAccessToMemoryThatStartsPrivateFailsWithEFAULTInsteadOfSIGBUS() throws {
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [.mmap])
        let memory = try memfd.map()
        let error = kvmError { try memory.write([0xAA], at: 0) }
        #expect(error?.errno == .badAddress)
        #expect(error?.operation == .syscall(.madvise))
        #expect(kvmError { _ = try memory.read(at: 0x1000, count: 8) }?.errno == .badAddress)
    }

    // MARK: fallocate

    @Test func fallocateWithoutKeepSizeFailsWithEOPNOTSUPP() throws {
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [.mmap, .initShared])
        #expect(kvmError { try memfd.fallocate(mode: 0, offset: 0, length: 0x1000) }?.errno == .notSupported)
        #expect(kvmError { try memfd.fallocate(mode: CKVM_FALLOC_FL_ZERO_RANGE, offset: 0, length: 0x1000) }?.errno
                == .notSupported)
    }

    @Test func allocatingPastTheEndOfTheFileFailsWithEINVAL() throws {
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [.mmap, .initShared])
        #expect(kvmError { try memfd.allocate(offset: 0, length: 0x2000) } == nil)
        #expect(kvmError { try memfd.allocate(offset: 0x1000, length: 0x2000) }?.errno == .invalidArgument)
        #expect(kvmError { try memfd.allocate(offset: 0x2000, length: 0x1000) }?.errno == .invalidArgument)
    }

    @Test func unalignedFallocateFailsWithEINVAL() throws {
        let memfd = try vm.createGuestMemfd(size: 0x2000, flags: [.mmap, .initShared])
        #expect(kvmError { try memfd.punchHole(offset: 0x800, length: 0x1000) }?.errno == .invalidArgument)
        #expect(kvmError { try memfd.allocate(offset: 0, length: 0x800) }?.errno == .invalidArgument)
    }

    @Test func punchingAHoleZeroesExactlyThatRangeEvenPastTheEnd() throws {
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        let memory = try memfd.map()
        try memory.fill(0x5A, at: 0, count: 0x4000)
        try memfd.punchHole(offset: 0x1000, length: 0x2000)
        #expect(try memory.read(at: 0, count: 0x1000).allSatisfy { $0 == 0x5A })
        #expect(try memory.read(at: 0x1000, count: 0x2000).allSatisfy { $0 == 0 })
        #expect(try memory.read(at: 0x3000, count: 0x1000).allSatisfy { $0 == 0x5A })
        #expect(kvmError { try memfd.punchHole(offset: 0x4000, length: 0x1000) } == nil)
    }

    // MARK: Memslots

    @Test func bindingPastTheEndOfTheGuestMemfdFailsWithEINVAL() throws {
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        let error = kvmError {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x4000, memfd: memfd,
                                                          offset: 0x1000))
        }
        #expect(error?.errno == .invalidArgument)
        #expect(error?.operation == .ioctl(.setUserMemoryRegion2))
        #expect(error?.range == GuestRange(start: 0, size: 0x4000))
    }

    @Test func overlappingGuestPhysicalRangesFailWithEEXIST() throws {
        let memfd = try vm.createGuestMemfd(size: 0x8000, flags: [.mmap, .initShared])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0x10000, size: 0x4000, memfd: memfd))
        let error = kvmError {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 1, guestPhysicalAddress: 0x13000, size: 0x4000,
                                                          memfd: memfd, offset: 0x4000))
        }
        #expect(error?.errno == .fileExists)
    }

    @Test func bindingAFileRangeThatBacksAnotherSlotFailsWithEINVALOnThisKernel() throws {
        let memfd = try vm.createGuestMemfd(size: 0x8000, flags: [.mmap, .initShared])
        try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x4000, memfd: memfd))
        let error = kvmError {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 1, guestPhysicalAddress: 0x100000, size: 0x4000,
                                                          memfd: memfd, offset: 0x2000))
        }
        // Linux up to 7.1 answers EINVAL; the 7.2 guest_memfd merge makes it EEXIST.
        #expect(error?.errno == .invalidArgument || error?.errno == .fileExists)
        #expect(kvmError {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 1, guestPhysicalAddress: 0x100000, size: 0x4000,
                                                          memfd: memfd, offset: 0x4000))
        } == nil)
    }

    @Test func aGuestMemfdSlotCannotBeRecreatedOnlyDeleted() throws {
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        let region = UserMemoryRegion2(slot: 3, guestPhysicalAddress: 0, size: 0x4000, memfd: memfd)
        try vm.setUserMemoryRegion2(region)
        #expect(kvmError { try vm.setUserMemoryRegion2(region) }?.errno == .invalidArgument)
        var deletion = region
        deletion.memorySize = 0
        try vm.setUserMemoryRegion2(deletion)
        #expect(kvmError { try vm.setUserMemoryRegion2(deletion) }?.errno == .invalidArgument)
        try vm.setUserMemoryRegion2(region)
    }

    @Test func guestMemfdFlagWithDirtyLoggingOrReadOnlyFailsWithEINVAL() throws {
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        for extra in [UserMemoryRegion2.logDirtyPages, UserMemoryRegion2.readOnly] {
            var region = UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x4000, memfd: memfd)
            region.flags |= extra
            #expect(kvmError { try vm.setUserMemoryRegion2(region) }?.errno == .invalidArgument)
        }
    }

    @Test func bindingADescriptorThatIsNotOpenFailsWithEBADF() throws {
        let region = UserMemoryRegion2(slot: 0, flags: UserMemoryRegion2.guestMemfdFlag, guestPhysicalAddress: 0,
                                       memorySize: 0x4000, guestMemfd: 999)
        #expect(kvmError { try vm.setUserMemoryRegion2(region) }?.errno == .badFileDescriptor)
    }

    @Test func bindingAGuestMemfdOfAnotherVMFailsWithEINVAL() throws {
        let other = try kvm.createVM()
        let memfd = try other.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        let error = kvmError {
            try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x4000, memfd: memfd))
        }
        #expect(error?.errno == .invalidArgument)
    }

    @Test func unalignedMemslotFailsWithEINVAL() throws {
        let memfd = try vm.createGuestMemfd(size: 0x4000, flags: [.mmap, .initShared])
        let cases = [
            UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0x800, size: 0x1000, memfd: memfd),
            UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x1800, memfd: memfd),
            UserMemoryRegion2(slot: 0, guestPhysicalAddress: 0, size: 0x1000, memfd: memfd, offset: 0x10),
        ]
        for region in cases {
            #expect(kvmError { try vm.setUserMemoryRegion2(region) }?.errno == .invalidArgument, "\(region)")
        }
    }
}
