#if canImport(Glibc)
import Glibc
#endif
import CKVMHeaders
import Synchronization

/// A kernel interface that makes the kernel below look like one built
/// without some KVM features, so that a host of a higher tier can run the
/// code paths of a lower one (`SNPVMM_HIDE_KVM_CAPS`).
///
/// A hidden feature's capabilities answer 0 to `KVM_CHECK_EXTENSION`, and its
/// ioctls fail, before they reach the kernel below, with the errno a kernel
/// without the feature gives:
///
/// | feature | capabilities | ioctls |
/// |---|---|---|
/// | `kvm` | — | `open("/dev/kvm")`: ENOENT, as where KVM is not loaded |
/// | `guest_memfd` | `KVM_CAP_GUEST_MEMFD`, `_FLAGS`, `_MEMORY_ATTRIBUTES` | `KVM_CREATE_GUEST_MEMFD` on a VM: ENOTTY (`kvm_vm_ioctl` has no case for it and `kvm_arch_vm_ioctl` answers ENOTTY); `KVM_SET_USER_MEMORY_REGION2` with `KVM_MEM_GUEST_MEMFD`: EINVAL (`check_memory_region_flags`) |
/// | `mmap` | MMAP and INIT_SHARED in `KVM_CAP_GUEST_MEMFD_FLAGS` | `KVM_CREATE_GUEST_MEMFD` asking for them: EINVAL (`kvm_gmem_create`) |
/// | `attributes` | `KVM_CAP_MEMORY_ATTRIBUTES` | `KVM_SET_MEMORY_ATTRIBUTES`: ENOTTY (no `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES`) |
/// | `pre_fault` | `KVM_CAP_PRE_FAULT_MEMORY` | `KVM_PRE_FAULT_MEMORY`: EOPNOTSUPP, as a 6.18 host without TDP answers (`kvm_arch_vcpu_pre_fault_memory`) |
/// | `confidential` | every type but the default in `KVM_CAP_VM_TYPES` | `KVM_CREATE_VM` of another type: EINVAL (`kvm_arch_init_vm`) |
///
/// The errnos were checked against a 6.18 host built without guest_memfd,
/// whose answers the differential suite compares with the fake's.
public final class FeatureHidingKernel: KernelInterface, Sendable {
    public let base: any KernelInterface
    public let hidden: Set<KVMFeature>
    /// Descriptors of the VMs and vCPUs created through this interface, so
    /// that their ioctls can be told from the same request on another descriptor.
    private let descriptors = Mutex<[CInt: KVMObjectKind]>([:])

    public init(_ base: any KernelInterface, hiding hidden: Set<KVMFeature>) {
        self.base = base
        self.hidden = hidden
    }

    /// The variable that names the features to hide, comma-separated.
    public static let environmentVariable = "SNPVMM_HIDE_KVM_CAPS"

    /// The real kernel, seen without the features `SNPVMM_HIDE_KVM_CAPS`
    /// names; the real kernel as it is where the variable is unset or empty.
    ///
    /// - Throws: `KVMFeatureListError` for a name that is not a feature.
    public static func hostKernel() throws(KVMFeatureListError) -> any KernelInterface {
        try hostKernel(hiding: getenv(environmentVariable).map { String(cString: $0) } ?? "")
    }

    /// The real kernel without the features the comma-separated `names` list.
    public static func hostKernel(hiding names: String) throws(KVMFeatureListError) -> any KernelInterface {
        let hidden = try KVMFeature.list(names)
        return hidden.isEmpty ? LinuxKernel() : FeatureHidingKernel(LinuxKernel(), hiding: hidden)
    }

    public func open(_ path: String, flags: CInt) throws(Errno) -> CInt {
        if hidden.contains(.kvm), path == "/dev/kvm" { throw .noSuchFileOrDirectory }
        return try base.open(path, flags: flags)
    }

    public func close(_ fd: CInt) throws(Errno) {
        descriptors.withLock { _ = $0.removeValue(forKey: fd) }
        try base.close(fd)
    }

    public func ioctl(_ fd: CInt, _ request: UInt, _ argument: UInt) throws(Errno) -> Int {
        let kind = descriptors.withLock { $0[fd] }
        let isVM = kind == .vm
        switch Ioctl(request: request) {
        case .checkExtension?:
            return hiddenCapability(argument, value: try base.ioctl(fd, request, argument))
        case .createVM?:
            if hidden.contains(.confidential), argument != UInt(CKVM_X86_DEFAULT_VM) { throw .invalidArgument }
            let vm = try base.ioctl(fd, request, argument)
            descriptors.withLock { $0[CInt(vm)] = .vm }
            return vm
        case .createVCPU? where isVM:
            let vcpu = try base.ioctl(fd, request, argument)
            descriptors.withLock { $0[CInt(vcpu)] = .vcpu }
            return vcpu
        case .createGuestMemfd? where isVM:
            if hidden.contains(.guestMemfd) { throw .notTTY }
            if hidden.contains(.mmap), let request = UnsafePointer<ckvm_create_guest_memfd>(bitPattern: argument),
               request.pointee.flags & (CKVM_GUEST_MEMFD_FLAG_MMAP | CKVM_GUEST_MEMFD_FLAG_INIT_SHARED) != 0 {
                throw .invalidArgument
            }
        case .setUserMemoryRegion2? where isVM && hidden.contains(.guestMemfd):
            if let region = UnsafePointer<ckvm_userspace_memory_region2>(bitPattern: argument),
               region.pointee.flags & UInt32(CKVM_MEM_GUEST_MEMFD) != 0 {
                throw .invalidArgument
            }
        case .setMemoryAttributes? where isVM && hidden.contains(.memoryAttributes):
            throw .notTTY
        case .preFaultMemory? where kind == .vcpu && hidden.contains(.preFault):
            throw .notSupported
        default:
            break
        }
        return try base.ioctl(fd, request, argument)
    }

    /// The answer to `KVM_CHECK_EXTENSION(capability)` with hidden features taken out.
    private func hiddenCapability(_ capability: UInt, value: Int) -> Int {
        switch Capability(rawValue: UInt32(truncatingIfNeeded: capability)) {
        case .guestMemfd?, .guestMemfdMemoryAttributes?:
            return hidden.contains(.guestMemfd) ? 0 : value
        case .guestMemfdFlags?:
            if hidden.contains(.guestMemfd) { return 0 }
            if hidden.contains(.mmap) {
                return value & ~Int(CKVM_GUEST_MEMFD_FLAG_MMAP | CKVM_GUEST_MEMFD_FLAG_INIT_SHARED)
            }
            return value
        case .memoryAttributes? where hidden.contains(.memoryAttributes):
            return 0
        case .preFaultMemory? where hidden.contains(.preFault):
            return 0
        case .vmTypes? where hidden.contains(.confidential):
            return value & (1 << Int(CKVM_X86_DEFAULT_VM))
        default:
            return value
        }
    }

    public func fstat(_ fd: CInt) throws(Errno) -> FileStatus { try base.fstat(fd) }

    public func lseek(_ fd: CInt, offset: Int, whence: CInt) throws(Errno) -> Int {
        try base.lseek(fd, offset: offset, whence: whence)
    }

    public func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        try base.read(fd, into: buffer, offset: offset)
    }

    public func write(_ fd: CInt, from buffer: UnsafeRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        try base.write(fd, from: buffer, offset: offset)
    }

    public func mmap(address: UnsafeMutableRawPointer?, length: Int, protection: CInt, flags: CInt, fd: CInt,
                     offset: Int) throws(Errno) -> UnsafeMutableRawPointer
    {
        try base.mmap(address: address, length: length, protection: protection, flags: flags, fd: fd, offset: offset)
    }

    public func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno) {
        try base.munmap(address, length: length)
    }

    public func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: CInt) throws(Errno) {
        try base.madvise(address, length: length, advice: advice)
    }

    public func fallocate(_ fd: CInt, mode: CInt, offset: Int, length: Int) throws(Errno) {
        try base.fallocate(fd, mode: mode, offset: offset, length: length)
    }
}
