import CKVMHeaders

/// The KVM system device, `/dev/kvm`: the root every VM is created from.
///
/// It owns its descriptor and closes it when released. The kernel interface
/// it is opened with (the real kernel by default, or a fake) is inherited by
/// every VM, vCPU and guest_memfd created from it.
public final class KVM: KernelObject, Sendable {
    public let kernel: any KernelInterface
    /// The raw descriptor, for embedding VMMs; closed on release unless it was adopted as borrowed.
    public let fd: CInt
    var objectKind: KVMObjectKind { .system }

    private let ownsDescriptor: Bool
    /// The unmerged interfaces the caller opted in to; every object created from this one shares them.
    public let experimental: ExperimentalInterfaces

    init(kernel: any KernelInterface, fd: CInt, experimental: ExperimentalInterfaces) {
        self.kernel = kernel
        self.fd = fd
        self.experimental = experimental
        ownsDescriptor = true
    }

    /// Wraps a `/dev/kvm` descriptor the caller already has. It is closed on
    /// release only with `.owned`; a VMM that keeps using it passes `.borrowed`.
    public init(adopting fd: CInt, ownership: DescriptorOwnership, using kernel: any KernelInterface = LinuxKernel(),
                experimental: ExperimentalInterfaces = []) {
        self.kernel = kernel
        self.fd = fd
        self.experimental = experimental
        ownsDescriptor = ownership == .owned
    }

    deinit { if ownsDescriptor { try? kernel.close(fd) } }

    /// Opens the KVM device through `kernel`.
    ///
    /// - Throws: `KVMError` for `open`: ENOENT where the kernel has no KVM,
    ///   EACCES where the caller may not use it (both with a remedy in the message).
    ///
    /// - Parameter experimental: the unmerged kernel interfaces the package
    ///   may probe and use (`ExperimentalInterfaces`); none by default.
    public static func open(
        path: String = "/dev/kvm", using kernel: any KernelInterface = LinuxKernel(),
        experimental: ExperimentalInterfaces = []
    ) throws(KVMError) -> KVM {
        do {
            let fd = try kernel.open(path, flags: O_RDWR | O_CLOEXEC)
            return KVM(kernel: kernel, fd: fd, experimental: experimental)
        } catch {
            throw KVMError(.syscall(.open), on: .system, fd: -1, errno: error, detail: path)
        }
    }

    /// Returns the KVM API version, which is 12 on every kernel since 2.6.22.
    ///
    /// The corresponding ioctl is `KVM_GET_API_VERSION` (system ioctl).
    public func getAPIVersion() throws(KVMError) -> Int {
        try call(.getAPIVersion)
    }

    /// Asks the kernel about a capability; 0 means absent, and some
    /// capabilities answer with a count or a bit mask.
    ///
    /// The corresponding ioctl is `KVM_CHECK_EXTENSION` (system ioctl).
    /// An unmerged capability the caller did not opt in to reads as 0
    /// without asking the kernel, and the HugeTLB bit is masked out of
    /// `KVM_CAP_GUEST_MEMFD_FLAGS`.
    public func checkExtension(_ capability: Capability) throws(KVMError) -> Int {
        try experimental.filter(capability) { () throws(KVMError) in
            try call(.checkExtension, UInt(capability.rawValue), detail: capability.name)
        }
    }

    /// Returns the size of the `kvm_run` area each vCPU descriptor maps.
    ///
    /// The corresponding ioctl is `KVM_GET_VCPU_MMAP_SIZE` (system ioctl).
    public func getVCPUMmapSize() throws(KVMError) -> Int {
        try call(.getVCPUMmapSize)
    }

    /// Creates a VM of the given type.
    ///
    /// The corresponding ioctl is `KVM_CREATE_VM` (system ioctl).
    /// - Throws: EINVAL for a type this host does not support (see `capabilities().vmTypes`).
    public func createVM(type: VMType = .default) throws(KVMError) -> VM {
        if type == .armRealm, !experimental.contains(.armCCA) {
            throw .notOptedIn(.ioctl(.createVM), on: .system, fd: fd, .armCCA)
        }
        let fd = try call(.createVM, type.rawValue, detail: "type \(type.name)")
        return VM(kvm: self, type: type, fd: CInt(fd))
    }

    /// Returns the CPUID entries KVM can expose to a guest on this host.
    ///
    /// The corresponding ioctl is `KVM_GET_SUPPORTED_CPUID` (system ioctl).
    /// - Throws: E2BIG when `capacity` entries are too few.
    public func getSupportedCPUID(capacity: Int = 256) throws(KVMError) -> [kvm_cpuid_entry2] {
        var buffer = CPUIDBuffer(capacity: capacity)
        _ = try buffer.withHeader { (header: UnsafeMutablePointer<kvm_cpuid2>) throws(KVMError) in
            try call(.getSupportedCPUID, UInt(bitPattern: header), detail: "capacity \(capacity)")
        }
        return buffer.entries
    }

    /// Reads a device attribute of the system fd, such as the SEV group's
    /// `KVM_X86_SEV_VMSA_FEATURES`.
    ///
    /// The corresponding ioctl is `KVM_GET_DEVICE_ATTR` (system ioctl).
    public func getDeviceAttr(group: UInt32, attribute: UInt64) throws(KVMError) -> UInt64 {
        var value: UInt64 = 0
        try withUnsafeMutablePointer(to: &value) { (pointer) throws(KVMError) in
            var attr = kvm_device_attr(flags: 0, group: group, attr: attribute, addr: UInt64(UInt(bitPattern: pointer)))
            try call(.getDeviceAttr, pointerTo: &attr, detail: "group \(group) attribute \(attribute)")
        }
        return value
    }

    /// Reads every capability the population code depends on.
    public func capabilities() throws(KVMError) -> HostCapabilities {
        let typeMask = try checkExtension(.vmTypes)
        let vmTypes = typeMask == 0
            ? [VMType.default]
            : VMType.x86Types.filter { typeMask & (1 << Int($0.rawValue)) != 0 }
        return HostCapabilities(
            apiVersion: try getAPIVersion(),
            vmTypes: vmTypes,
            userMemory2: try checkExtension(.userMemory2) != 0,
            guestMemfd: try checkExtension(.guestMemfd) != 0,
            guestMemfdFlags: GuestMemfdFlags(rawValue: UInt64(try checkExtension(.guestMemfdFlags))),
            memoryAttributes: MemoryAttributes(rawValue: UInt64(try checkExtension(.memoryAttributes))),
            memoryFaultInfo: try checkExtension(.memoryFaultInfo) != 0,
            preFaultMemory: try checkExtension(.preFaultMemory) != 0,
            memslots: try checkExtension(.nrMemslots)
        )
    }
}

/// A `struct kvm_cpuid2` followed by room for its entries, as the CPUID ioctls expect.
struct CPUIDBuffer {
    private var storage: [UInt8]
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        storage = [UInt8](repeating: 0, count: MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride)
        storage.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(capacity), as: UInt32.self) }
    }

    init(entries: [kvm_cpuid_entry2]) {
        self.init(capacity: entries.count)
        storage.withUnsafeMutableBytes { raw in
            let base = raw.baseAddress! + MemoryLayout<kvm_cpuid2>.size
            for (index, entry) in entries.enumerated() {
                (base + index * MemoryLayout<kvm_cpuid_entry2>.stride).storeBytes(of: entry, as: kvm_cpuid_entry2.self)
            }
        }
    }

    mutating func withHeader<R, E: Error>(_ body: (UnsafeMutablePointer<kvm_cpuid2>) throws(E) -> R) throws(E) -> R {
        let result: Result<R, E> = storage.withUnsafeMutableBytes { raw in
            let header = raw.baseAddress!.assumingMemoryBound(to: kvm_cpuid2.self)
            do throws(E) { return .success(try body(header)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// The entries the kernel reported (its `nent` after the call).
    var entries: [kvm_cpuid_entry2] {
        storage.withUnsafeBytes { raw in
            let count = Int(raw.load(as: UInt32.self))
            let base = raw.baseAddress! + MemoryLayout<kvm_cpuid2>.size
            return (0..<min(count, capacity)).map {
                (base + $0 * MemoryLayout<kvm_cpuid_entry2>.stride).loadUnaligned(as: kvm_cpuid_entry2.self)
            }
        }
    }
}
