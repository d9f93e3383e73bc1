/// The one seam between the typed KVM objects and the kernel.
///
/// Every kernel call the package makes passes through exactly one of these
/// primitives, each named after its syscall and working at the same
/// granularity: descriptors are plain `CInt`s, ioctl arguments are the
/// `unsigned long` the kernel receives (a value or a user pointer), and
/// failures are the `Errno` the syscall set. `LinuxKernel` forwards to the
/// real kernel; a test double (the `KVMFake` library's in-memory KVM and
/// fault injector) implements the same rules. Implementations are passed in when
/// a `KVM` is opened and inherited by every object created from it; there is
/// no global.
public protocol KernelInterface: Sendable {
    /// `open(2)`. Returns the new descriptor.
    func open(_ path: String, flags: CInt) throws(Errno) -> CInt

    /// `close(2)`.
    func close(_ fd: CInt) throws(Errno)

    /// `ioctl(2)` with the argument exactly as the kernel sees it. Returns the
    /// ioctl's non-negative result: a new descriptor, a capability value or 0.
    func ioctl(_ fd: CInt, _ request: UInt, _ argument: UInt) throws(Errno) -> Int

    /// `mmap(2)` of `length` bytes of `fd` from `offset`, at `address` where
    /// given (a hint, or with `MAP_FIXED` the place), else where the kernel picks.
    func mmap(address: UnsafeMutableRawPointer?, length: Int, protection: CInt, flags: CInt, fd: CInt, offset: Int)
        throws(Errno) -> UnsafeMutableRawPointer

    /// `munmap(2)`.
    func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno)

    /// `madvise(2)`. With `MADV_POPULATE_WRITE` a page the kernel would answer
    /// with SIGBUS (private guest_memfd memory, beyond the file's end) fails
    /// the call with EFAULT instead, which is how the typed layer checks host
    /// access before it touches guest memory.
    func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: CInt) throws(Errno)

    /// `fallocate(2)`.
    func fallocate(_ fd: CInt, mode: CInt, offset: Int, length: Int) throws(Errno)

    /// `fstat(2)`: the file's size and preferred block size.
    func fstat(_ fd: CInt) throws(Errno) -> FileStatus

    /// `read(2)`, or with `offset` `pread(2)`, into `buffer`; returns the bytes read.
    func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, offset: Int?) throws(Errno) -> Int

    /// `write(2)`, or with `offset` `pwrite(2)`, from `buffer`; returns the bytes written.
    func write(_ fd: CInt, from buffer: UnsafeRawBufferPointer, offset: Int?) throws(Errno) -> Int

    /// `lseek(2)`; returns the new offset.
    func lseek(_ fd: CInt, offset: Int, whence: CInt) throws(Errno) -> Int
}

/// What `fstat(2)` tells of a file, as far as the package needs it.
public struct FileStatus: Hashable, Sendable {
    public var size: Int
    public var blockSize: Int

    public init(size: Int, blockSize: Int) {
        self.size = size
        self.blockSize = blockSize
    }
}

extension KernelInterface {
    /// `mmap(2)` at an address the kernel picks.
    public func mmap(length: Int, protection: CInt, flags: CInt, fd: CInt, offset: Int) throws(Errno)
        -> UnsafeMutableRawPointer
    {
        try mmap(address: nil, length: length, protection: protection, flags: flags, fd: fd, offset: offset)
    }

    /// `ioctl(2)` whose argument is a pointer to `value`, which the kernel may
    /// read and write for the duration of the call.
    @inlinable
    public func ioctl<T>(_ fd: CInt, _ request: UInt, pointerTo value: inout T) throws(Errno) -> Int {
        let result: Result<Int, Errno> = withUnsafeMutablePointer(to: &value) { pointer in
            do throws(Errno) {
                return .success(try ioctl(fd, request, UInt(bitPattern: pointer)))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}
