import CKVMHeaders

/// A guest_memfd mapped into this process, through which the host writes
/// guest memory while it is shared.
///
/// Every access goes through `MADV_POPULATE_WRITE` or `MADV_POPULATE_READ`
/// first. That faults the pages in ahead of the copy (faster than first-touch
/// faults on guest_memfd) and turns an access the kernel would answer with
/// SIGBUS, a private page or a page beyond the end of the file, into an
/// EFAULT error instead of a crash.
///
/// Unmapped when released. Distinct ranges may be written from different
/// threads, as with any shared mapping.
public final class GuestMemoryMapping: MappedGuestMemory, KernelObject, @unchecked Sendable {
    public let memfd: GuestMemfd
    public let base: UnsafeMutableRawPointer
    public let length: Int
    public var kernel: any KernelInterface { memfd.kernel }
    var fd: CInt { memfd.fd }
    var objectKind: KVMObjectKind { .mapping }

    init(memfd: GuestMemfd, base: UnsafeMutableRawPointer, length: Int) {
        self.memfd = memfd
        self.base = base
        self.length = length
    }

    deinit { try? kernel.munmap(base, length: length) }

    private func advise(_ advice: CInt, offset: Int, count: Int, _ what: String) throws(KVMError) {
        guard offset >= 0, count >= 0, offset <= length, count <= length - offset else {
            throw syscallError(.madvise, .badAddress,
                               detail: "\(what) of \(count) bytes at offset \(hex(offset)) is outside the \(hex(length))-byte mapping")
        }
        guard count > 0 else { return }
        let start = offset & ~(Int(pageSize) - 1)
        let end = (offset + count + Int(pageSize) - 1) & ~(Int(pageSize) - 1)
        do throws(Errno) {
            try kernel.madvise(base + start, length: end - start, advice: advice)
        } catch {
            throw syscallError(.madvise, error, detail: "\(what) of \(count) bytes at offset \(hex(offset))")
        }
    }

    /// Faults in a range for writing, so that later copies run at memory bandwidth.
    ///
    /// - Throws: EFAULT where a page is private or beyond the end of the file.
    public func populateWrite(offset: Int, count: Int) throws(KVMError) {
        try advise(CKVM_MADV_POPULATE_WRITE, offset: offset, count: count, "MADV_POPULATE_WRITE")
    }

    /// Faults in a range for reading.
    ///
    /// - Throws: EFAULT where a page is private or beyond the end of the file.
    public func populateRead(offset: Int, count: Int) throws(KVMError) {
        try advise(CKVM_MADV_POPULATE_READ, offset: offset, count: count, "MADV_POPULATE_READ")
    }
}

/// Guest memory mapped into this process, which the host writes while it is
/// shared: a guest_memfd mapping (`GuestMemoryMapping`), or a memfd mapped
/// shared for RAM that is never private (`SharedMemory`).
///
/// Each access is checked first with `MADV_POPULATE_WRITE` or `_READ`, which
/// faults the pages in ahead of the copy and turns what would be a SIGBUS
/// (a private page, a page past the end of the file) into an EFAULT error.
public protocol MappedGuestMemory: AnyObject, Sendable {
    /// The first mapped byte.
    var base: UnsafeMutableRawPointer { get }
    /// The mapping's length in bytes.
    var length: Int { get }
    /// Faults `count` bytes at `offset` in for writing.
    func populateWrite(offset: Int, count: Int) throws(KVMError)
    /// Faults `count` bytes at `offset` in for reading.
    func populateRead(offset: Int, count: Int) throws(KVMError)
}

extension MappedGuestMemory {
    /// The mapping's address, as `userspace_addr` of a memslot wants it.
    public var userspaceAddress: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// Copies `bytes` into the mapping at `offset`.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(KVMError) {
        try populateWrite(offset: offset, count: bytes.count)
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        (base + offset).copyMemory(from: source, byteCount: bytes.count)
    }

    /// Copies `bytes` into the mapping at `offset`.
    public func write(_ bytes: [UInt8], at offset: Int) throws(KVMError) {
        try bytes.withUnsafeBytes { raw in Result { () throws(KVMError) in try write(raw, at: offset) } }.get()
    }

    /// Fills `count` bytes at `offset` with `value`.
    public func fill(_ value: UInt8, at offset: Int, count: Int) throws(KVMError) {
        try populateWrite(offset: offset, count: count)
        (base + offset).initializeMemory(as: UInt8.self, repeating: value, count: count)
    }

    /// Copies `count` bytes out of the mapping at `offset`.
    public func read(at offset: Int, count: Int) throws(KVMError) -> [UInt8] {
        try populateRead(offset: offset, count: count)
        return [UInt8](UnsafeRawBufferPointer(start: base + offset, count: count))
    }
}
