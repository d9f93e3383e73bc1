#if canImport(Glibc)
import Glibc
#endif

/// Why a measurement input file could not be read.
public struct FileReadError: Error, Equatable, Sendable, CustomStringConvertible {
    public var path: String
    public var errno: Int32
    /// What was being done: "open", "read", "stat".
    public var operation: String
    /// Why, where no errno says it ("not a regular file").
    public var reason: String?

    init(path: String, errno: Int32, operation: String, reason: String? = nil) {
        self.path = path
        self.errno = errno
        self.operation = operation
        self.reason = reason
    }

    public var description: String {
        if let reason { return "cannot \(operation) \(path): \(reason)" }
        return "cannot \(operation) \(path): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Reads measurement inputs (firmware, kernel, initrd) without Foundation,
/// so `snpvmm measure` starts quickly.
public enum FileBytes {
    /// The whole file at `path`.
    public static func read(_ path: String) throws(FileReadError) -> [UInt8] {
        let (fd, status) = try openRegularFile(path)
        defer { close(fd) }
        var bytes = [UInt8]()
        bytes.reserveCapacity(max(Int(status.st_size), 0))
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw FileReadError(path: path, errno: errno, operation: "read")
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return bytes
    }

    /// `length` bytes of the file at `path` starting at `offset`; fewer where
    /// the file ends first.
    public static func read(_ path: String, offset: UInt64, length: UInt64) throws(FileReadError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(length))
        let done = try bytes.withUnsafeMutableBytes { raw in
            Result { () throws(FileReadError) in try read(path, offset: offset, into: raw) }
        }.get()
        return Array(bytes[0..<done])
    }

    /// Reads the file at `path` from `offset` into `destination` with
    /// pread, stopping where the file ends; returns the bytes read.
    public static func read(_ path: String, offset: UInt64, into destination: UnsafeMutableRawBufferPointer)
        throws(FileReadError) -> Int
    {
        let (fd, _) = try openRegularFile(path)
        defer { close(fd) }
        guard let base = destination.baseAddress else { return 0 }
        var done = 0
        while done < destination.count {
            // pread moves at most about 2 GiB per call.
            let chunk = min(destination.count - done, 1 << 30)
            let count = pread(fd, base + done, chunk, off_t(offset) + off_t(done))
            if count < 0 {
                if errno == EINTR { continue }
                throw FileReadError(path: path, errno: errno, operation: "read")
            }
            if count == 0 { break }
            done += count
        }
        return done
    }

    /// The size of the regular file at `path`.
    public static func size(_ path: String) throws(FileReadError) -> UInt64 {
        let (fd, status) = try openRegularFile(path)
        close(fd)
        return UInt64(max(status.st_size, 0))
    }

    /// Opens `path` for reading and checks that it is a regular file. The
    /// open does not block, so a FIFO with no writer is refused rather than
    /// waited on, and a device such as /dev/zero is refused rather than read
    /// without end.
    static func openRegularFile(_ path: String) throws(FileReadError) -> (fd: CInt, status: stat) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw FileReadError(path: path, errno: errno, operation: "open") }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let error = errno
            close(fd)
            throw FileReadError(path: path, errno: error, operation: "stat")
        }
        switch status.st_mode & S_IFMT {
        case S_IFREG:
            return (fd, status)
        case S_IFDIR:
            close(fd)
            throw FileReadError(path: path, errno: EISDIR, operation: "read")
        default:
            close(fd)
            throw FileReadError(path: path, errno: EINVAL, operation: "read", reason: "not a regular file")
        }
    }
}
