#if canImport(Glibc)
import Glibc
#endif
import CKVMHeaders

/// Guest RAM that is never private: a memfd mapped shared, as QEMU's
/// `memory-backend-memfd`. It backs plain guests on hosts whose KVM has no
/// guest_memfd, and the shared side of memslots whose guest_memfd holds only
/// private memory.
///
/// A memslot names it by address (`UserMemoryRegion2(slot:guestPhysicalAddress:sharedMemory:)`).
/// The memfd and its mapping are plain host memory, not KVM objects, so they
/// come from the host's syscalls directly rather than through the kernel
/// seam. Unmapped and closed when released.
public final class SharedMemory: MappedGuestMemory, @unchecked Sendable {
    /// The memfd's descriptor, owned by this object.
    public let fd: CInt
    public let base: UnsafeMutableRawPointer
    public let length: Int

    /// Creates a memfd of `size` bytes, named `name` in /proc/PID/fd, and maps it shared.
    ///
    /// - Throws: `KVMError` naming `memfd_create`, `ftruncate` or `mmap` and its errno.
    public init(size: UInt64, name: String = "guest-ram") throws(KVMError) {
        let fd = ckvm_memfd_create(name, 1 /* MFD_CLOEXEC */)
        guard fd >= 0 else {
            throw KVMError(.syscall(.memfdCreate), on: .sharedMemory, fd: -1, errno: Errno(rawValue: -fd), detail: name)
        }
        guard size <= UInt64(Int.max), ftruncate(fd, off_t(size)) == 0 else {
            let error = size > UInt64(Int.max) ? Errno.invalidArgument : Errno(rawValue: errno)
            _ = ckvm_close(fd)
            throw KVMError(.syscall(.ftruncate), on: .sharedMemory, fd: fd, errno: error, detail: "size \(hex(size))")
        }
        var error: CInt = 0
        guard let base = ckvm_mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0, &error) else {
            _ = ckvm_close(fd)
            throw KVMError(.syscall(.mmap), on: .sharedMemory, fd: fd, errno: Errno(rawValue: error),
                           detail: "length \(hex(size)), MAP_SHARED")
        }
        self.fd = fd
        self.base = base
        self.length = Int(size)
    }

    deinit {
        _ = ckvm_munmap(base, length)
        _ = ckvm_close(fd)
    }

    private func advise(_ advice: CInt, offset: Int, count: Int, _ what: String) throws(KVMError) {
        guard offset >= 0, count >= 0, offset <= length, count <= length - offset else {
            throw KVMError(.syscall(.madvise), on: .sharedMemory, fd: fd, errno: .badAddress,
                           detail: "\(what) of \(count) bytes at offset \(hex(offset)) is outside the \(hex(length))-byte mapping")
        }
        guard count > 0 else { return }
        let start = offset & ~(Int(pageSize) - 1)
        let end = (offset + count + Int(pageSize) - 1) & ~(Int(pageSize) - 1)
        let result = ckvm_madvise(base + start, end - start, advice)
        // Kernels before 5.14 do not know MADV_POPULATE_*: memfd pages inside
        // the file fault in on first touch without it, so that is no error.
        guard result != 0, result != -Errno.invalidArgument.rawValue else { return }
        throw KVMError(.syscall(.madvise), on: .sharedMemory, fd: fd, errno: Errno(rawValue: -result),
                       detail: "\(what) of \(count) bytes at offset \(hex(offset))")
    }

    public func populateWrite(offset: Int, count: Int) throws(KVMError) {
        try advise(CKVM_MADV_POPULATE_WRITE, offset: offset, count: count, "MADV_POPULATE_WRITE")
    }

    public func populateRead(offset: Int, count: Int) throws(KVMError) {
        try advise(CKVM_MADV_POPULATE_READ, offset: offset, count: count, "MADV_POPULATE_READ")
    }
}

extension UserMemoryRegion2 {
    /// A memslot of ordinary memory (no `KVM_MEM_GUEST_MEMFD`) backed by
    /// `memory` from byte `offset`, `size` bytes long (the rest of the
    /// mapping by default).
    public init(slot: UInt32, guestPhysicalAddress: UInt64, sharedMemory memory: SharedMemory, offset: UInt64 = 0,
                size: UInt64? = nil) {
        self.init(slot: slot, guestPhysicalAddress: guestPhysicalAddress,
                  memorySize: size ?? (UInt64(memory.length) - offset), userspaceAddress: memory.userspaceAddress + offset)
    }
}
