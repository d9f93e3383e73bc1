import CKVMHeaders

/// A guest_memfd: a file of guest memory that KVM can make private, bound to one VM.
///
/// Created by `VM.createGuestMemfd(size:flags:)`; the descriptor is closed
/// when the object is released. The file's size is fixed at creation.
public final class GuestMemfd: KernelObject, Sendable {
    public let vm: VM
    /// The raw descriptor, for embedding VMMs; closed on release unless it was adopted as borrowed.
    public let fd: CInt
    public let size: UInt64
    public let flags: GuestMemfdFlags
    public var kernel: any KernelInterface { vm.kernel }
    var objectKind: KVMObjectKind { .guestMemfd }

    private let ownsDescriptor: Bool

    init(vm: VM, fd: CInt, size: UInt64, flags: GuestMemfdFlags, ownsDescriptor: Bool = true) {
        self.vm = vm
        self.fd = fd
        self.size = size
        self.flags = flags
        self.ownsDescriptor = ownsDescriptor
    }

    deinit { if ownsDescriptor { try? kernel.close(fd) } }

    /// The file's size and block size (`fstat(2)`).
    public func stat() throws(KVMError) -> FileStatus {
        do { return try kernel.fstat(fd) } catch { throw syscallError(.fstat, error) }
    }

    /// `fallocate(2)` with any mode, for callers that need the raw call.
    ///
    /// - Throws: EOPNOTSUPP without `FALLOC_FL_KEEP_SIZE` or with any mode bit
    ///   other than KEEP_SIZE and PUNCH_HOLE; EINVAL for an unaligned range or
    ///   an allocation past the end of the file.
    public func fallocate(mode: CInt, offset: UInt64, length: UInt64) throws(KVMError) {
        do {
            try kernel.fallocate(fd, mode: mode, offset: Int(truncatingIfNeeded: offset),
                                 length: Int(truncatingIfNeeded: length))
        } catch {
            throw syscallError(.fallocate, error, detail: "mode \(hex(mode)), offset \(hex(offset)), length \(hex(length))")
        }
    }

    /// Allocates backing pages for a range of the file without zeroing or
    /// preparing them for the guest.
    public func allocate(offset: UInt64, length: UInt64) throws(KVMError) {
        try fallocate(mode: CKVM_FALLOC_FL_KEEP_SIZE, offset: offset, length: length)
    }

    /// Frees a range of the file; it reads back as zeros afterwards. For
    /// private memory this destroys the contents and returns the pages to the
    /// host (on SNP, to the hypervisor state in the RMP).
    public func punchHole(offset: UInt64, length: UInt64) throws(KVMError) {
        try fallocate(mode: CKVM_FALLOC_FL_KEEP_SIZE | CKVM_FALLOC_FL_PUNCH_HOLE, offset: offset, length: length)
    }

    /// Converts pages of this file between shared and private in place, all
    /// or nothing. Shared pages can be mapped and written by the host;
    /// private ones belong to the guest (a host access fails).
    ///
    /// The corresponding ioctl is `KVM_SET_MEMORY_ATTRIBUTES2` (guest_memfd
    /// ioctl, in-place conversion series v8, unmerged).
    /// - Throws: ENOTTY where guest_memfd does not convert in place; EINVAL
    ///   for a VM without private memory, flags, an unknown attribute, or an
    ///   empty, unaligned or out-of-file range; EAGAIN when a page is pinned
    ///   (the error names it); ENOMEM.
    public func setMemoryAttributes2(offset: UInt64, size: UInt64, attributes: MemoryAttributes) throws(KVMError) {
        guard vm.kvm.experimental.contains(.inPlaceConversion) else {
            throw .notOptedIn(.ioctl(.setMemoryAttributes2), on: .guestMemfd, fd: fd, .inPlaceConversion)
        }
        var value = ckvm_memory_attributes2()
        value.offset = offset
        value.size = size
        value.attributes = attributes.rawValue
        do {
            _ = try kernel.ioctl(fd, Ioctl.setMemoryAttributes2.request, pointerTo: &value)
        } catch {
            throw KVMError(.ioctl(.setMemoryAttributes2), on: .guestMemfd, fd: fd, errno: error,
                           detail: "offset \(hex(offset)), size \(hex(size)), attributes \(attributes)"
                               + (error == .resourceTemporarilyUnavailable ? ", blocked at offset \(hex(value.error_offset))" : ""))
        }
    }

    /// Maps the file (or its first `length` bytes) into this process.
    ///
    /// - Parameter shared: `MAP_SHARED`, the only kind guest_memfd accepts;
    ///   false asks for `MAP_PRIVATE`, which the kernel refuses with EINVAL.
    /// - Throws: ENODEV for a file created without `GUEST_MEMFD_FLAG_MMAP`.
    ///
    /// - Parameter address: a hint for where the mapping goes, for example
    ///   2 MiB-aligned so that huge pages can back it.
    public func map(length: UInt64? = nil, shared: Bool = true, address: UnsafeMutableRawPointer? = nil)
        throws(KVMError) -> GuestMemoryMapping
    {
        let length = Int(length ?? size)
        do {
            let base = try kernel.mmap(address: address, length: length, protection: PROT_READ | PROT_WRITE,
                                       flags: shared ? MAP_SHARED : MAP_PRIVATE, fd: fd, offset: 0)
            return GuestMemoryMapping(memfd: self, base: base, length: length)
        } catch {
            throw syscallError(.mmap, error, detail: "length \(hex(length)), \(shared ? "MAP_SHARED" : "MAP_PRIVATE")")
        }
    }
}
