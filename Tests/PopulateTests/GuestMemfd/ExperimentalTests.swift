import GuestMemfd
import KVMFake
import Populate
import Synchronization
import Testing

/// Unmerged kernel interfaces are used only by callers that opt in: the
/// default path never reads their guessed numbers.
@Suite struct ExperimentalTests {
    /// Forwards to the fake and keeps every KVM_CHECK_EXTENSION argument and ioctl request.
    final class RecordingKernel: KernelInterface, Sendable {
        let base: FakeKVM
        private let seen = Mutex<(capabilities: [UInt], requests: [UInt])>(([], []))
        init(_ base: FakeKVM) { self.base = base }
        var capabilities: [UInt] { seen.withLock { $0.capabilities } }
        var requests: [UInt] { seen.withLock { $0.requests } }

        func open(_ path: String, flags: CInt) throws(Errno) -> CInt { try base.open(path, flags: flags) }
        func close(_ fd: CInt) throws(Errno) { try base.close(fd) }
        func ioctl(_ fd: CInt, _ request: UInt, _ argument: UInt) throws(Errno) -> Int {
            seen.withLock {
                $0.requests.append(request)
                if request == Ioctl.checkExtension.request { $0.capabilities.append(argument) }
            }
            return try base.ioctl(fd, request, argument)
        }
        func mmap(address: UnsafeMutableRawPointer?, length: Int, protection: CInt, flags: CInt, fd: CInt, offset: Int)
            throws(Errno) -> UnsafeMutableRawPointer {
            try base.mmap(address: address, length: length, protection: protection, flags: flags, fd: fd, offset: offset)
        }
        func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno) { try base.munmap(address, length: length) }
        func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: CInt) throws(Errno) {
            try base.madvise(address, length: length, advice: advice)
        }
        func fstat(_ fd: CInt) throws(Errno) -> FileStatus { try base.fstat(fd) }
        func lseek(_ fd: CInt, offset: Int, whence: CInt) throws(Errno) -> Int { try base.lseek(fd, offset: offset, whence: whence) }
        func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, offset: Int?) throws(Errno) -> Int {
            try base.read(fd, into: buffer, offset: offset)
        }
        func write(_ fd: CInt, from buffer: UnsafeRawBufferPointer, offset: Int?) throws(Errno) -> Int {
            try base.write(fd, from: buffer, offset: offset)
        }
        func fallocate(_ fd: CInt, mode: CInt, offset: Int, length: Int) throws(Errno) {
            try base.fallocate(fd, mode: mode, offset: offset, length: length)
        }
    }

    static let plan = LaunchPlan(regions: [
        PlanRegion(name: "image", range: GuestRange(start: 0, size: 0x2000), contents: .bytes([7, 7, 7])),
    ])

    @Test func withoutTheOptInAHostThatConvertsOnlyInPlaceIsRefusedAndCapability250IsNeverRead() throws {
        // The in-place series moves the attributes into guest_memfd: the VM has none of its own.
        let kernel = RecordingKernel(FakeKVM(profile: .snpInPlaceHost))
        do {
            _ = try LaunchSession(kvm: try KVM.open(using: kernel), platform: .snp(SNPLaunchParameters()))
            Issue.record("without the opt-in this host cannot make memory private")
        } catch let error as LaunchError {
            guard case .hostNotReady(_, let missing) = error else { Issue.record("got \(error)"); return }
            #expect(missing.first?.contains("experimental: .inPlaceConversion") == true)
        }
        #expect(!kernel.capabilities.contains(UInt(Capability.guestMemfdMemoryAttributes.rawValue)))
        #expect(!kernel.requests.contains(Ioctl.setMemoryAttributes2.request))
    }

    @Test func withTheOptInTheSameHostConvertsInPlace() throws {
        let kernel = RecordingKernel(FakeKVM(profile: .snpInPlaceHost))
        let kvm = try KVM.open(using: kernel, experimental: .inPlaceConversion)
        let session = try LaunchSession(kvm: kvm, platform: .snp(SNPLaunchParameters()))
        try session.createVCPUs(1)
        try session.createMemory(at: 0, size: 0x10000, slot: 0)
        #expect(try session.populate(Self.plan).report.policy == .inPlace)
        #expect(kernel.capabilities.contains(UInt(Capability.guestMemfdMemoryAttributes.rawValue)))
    }

    @Test func theAssumedHugeTLBBitIsMaskedAndItsFlagRefusedBeforeAnyIoctl() throws {
        let kernel = RecordingKernel(FakeKVM(profile: .snpRMPOPTHost()))
        let vm = try KVM.open(using: kernel).createVM(type: .snp)
        let flags = GuestMemfdFlags(rawValue: UInt64(try vm.checkExtension(.guestMemfdFlags)))
        #expect(!flags.contains(.hugetlb))
        let optedIn = try KVM.open(using: FakeKVM(profile: .snpRMPOPTHost()), experimental: .hugeTLBGuestMemfd)
        #expect(GuestMemfdFlags(rawValue: UInt64(try optedIn.createVM(type: .snp).checkExtension(.guestMemfdFlags)))
            .contains(.hugetlb))
        let before = kernel.requests.count
        do {
            _ = try vm.createGuestMemfd(size: 2 << 20, flags: .hugetlb(pageSize: 2 << 20))
            Issue.record("a HugeTLB guest_memfd needs the opt-in")
        } catch {
            #expect(error.errno == .notSupported)
            #expect(error.description.contains("experimental: .hugeTLBGuestMemfd"))
        }
        #expect(kernel.requests.count == before)
    }

    @Test func aRealmNeedsTheArmCCAOptIn() throws {
        let kvm = try KVM.open(using: FakeKVM(profile: .ccaHost))
        #expect(throws: KVMError.self) { _ = try kvm.createVM(type: .armRealm) }
        #expect(try kvm.checkExtension(.armRMI) == 0)
    }
}
