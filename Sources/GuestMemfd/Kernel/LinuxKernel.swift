import CKVMHeaders

/// The real kernel: each primitive is one syscall through the C shim.
///
/// `open` and `fallocate` are retried when a signal interrupts them (they
/// report no partial progress). `ioctl` never is: KVM_RUN hands EINTR to its
/// caller, and the population ioctls resume from the progress the kernel
/// wrote back, which only their callers can see.
public struct LinuxKernel: KernelInterface {
    public init() {}

    public func open(_ path: String, flags: CInt) throws(Errno) -> CInt {
        while true {
            let result = ckvm_open(path, flags)
            if result >= 0 { return result }
            if result == -Errno.interrupted.rawValue { continue }
            throw Errno(rawValue: -result)
        }
    }

    public func close(_ fd: CInt) throws(Errno) {
        // Linux releases the descriptor even when close reports EINTR, so it is never retried.
        let result = ckvm_close(fd)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    public func ioctl(_ fd: CInt, _ request: UInt, _ argument: UInt) throws(Errno) -> Int {
        let result = ckvm_ioctl(fd, request, argument)
        if result < 0 { throw Errno(rawValue: CInt(-result)) }
        return result
    }

    public func mmap(address hint: UnsafeMutableRawPointer?, length: Int, protection: CInt, flags: CInt, fd: CInt,
                     offset: Int) throws(Errno) -> UnsafeMutableRawPointer
    {
        var error: CInt = 0
        guard let address = ckvm_mmap(hint, length, protection, flags, fd, offset, &error) else {
            throw Errno(rawValue: error)
        }
        return address
    }

    public func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(Errno) {
        let result = ckvm_munmap(address, length)
        if result < 0 { throw Errno(rawValue: -result) }
    }

    public func madvise(_ address: UnsafeMutableRawPointer, length: Int, advice: CInt) throws(Errno) {
        while true {
            let result = ckvm_madvise(address, length, advice)
            if result == 0 { return }
            // MADV_POPULATE_* report EINTR when a signal arrives; nothing is lost by repeating.
            if result == -Errno.interrupted.rawValue { continue }
            throw Errno(rawValue: -result)
        }
    }

    public func fstat(_ fd: CInt) throws(Errno) -> FileStatus {
        var size: Int64 = 0, blockSize = 0
        let result = ckvm_fstat(fd, &size, &blockSize)
        if result < 0 { throw Errno(rawValue: -result) }
        return FileStatus(size: Int(size), blockSize: blockSize)
    }

    public func read(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        let done = ckvm_read(fd, base, buffer.count, offset ?? -1)
        if done < 0 { throw Errno(rawValue: CInt(-done)) }
        return done
    }

    public func write(_ fd: CInt, from buffer: UnsafeRawBufferPointer, offset: Int?) throws(Errno) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        let done = ckvm_write(fd, base, buffer.count, offset ?? -1)
        if done < 0 { throw Errno(rawValue: CInt(-done)) }
        return done
    }

    public func lseek(_ fd: CInt, offset: Int, whence: CInt) throws(Errno) -> Int {
        let result = ckvm_lseek(fd, offset, whence)
        if result < 0 { throw Errno(rawValue: CInt(-result)) }
        return result
    }

    public func fallocate(_ fd: CInt, mode: CInt, offset: Int, length: Int) throws(Errno) {
        while true {
            let result = ckvm_fallocate(fd, mode, offset, length)
            if result == 0 { return }
            if result == -Errno.interrupted.rawValue { continue }
            throw Errno(rawValue: -result)
        }
    }
}
