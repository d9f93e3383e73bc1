#if canImport(Glibc)
import Glibc
#endif
import GuestMemfd
import Populate

/// Random access to the bytes of a boot image, bounds-checked: the parsers
/// read headers through this, never the whole file, and every read past the
/// end is an error rather than a trap.
///
/// A file is read with `pread(2)` on demand, so a 60 MiB vmlinux costs only
/// its headers here; the loaded segments stay on disk until population
/// copies them straight into guest memory.
public struct ImageSource: Sendable {
    /// The file the bytes come from, for plan regions that name it; nil for in-memory bytes.
    let path: String?
    let size: UInt64
    private let storage: Storage

    private enum Storage: Sendable {
        case bytes([UInt8])
        case file(FileDescriptor)
    }

    /// Bytes held in memory, for tests and fuzzing.
    public init(bytes: [UInt8]) {
        self.path = nil
        self.size = UInt64(bytes.count)
        self.storage = .bytes(bytes)
    }

    /// Opens `path` for reading. The open does not block, so a FIFO with
    /// no writer is refused as not a regular file rather than waited on.
    ///
    /// - Throws: `ImageError.unreadable` naming the file and the errno's text.
    public init(path: String, role: String) throws(ImageError) {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw .unreadable(role: role, path: path, reason: String(cString: strerror(errno))) }
        let descriptor = FileDescriptor(fd)
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw .unreadable(role: role, path: path, reason: String(cString: strerror(errno)))
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw .unreadable(role: role, path: path, reason: "not a regular file")
        }
        self.path = path
        self.size = UInt64(info.st_size)
        self.storage = .file(descriptor)
    }

    /// Whether `[offset, offset + count)` lies inside the image.
    func contains(offset: UInt64, count: UInt64) -> Bool {
        let (end, overflow) = offset.addingReportingOverflow(count)
        return !overflow && end <= size
    }

    /// Reads `count` bytes at `offset`.
    ///
    /// - Throws: `ImageError.truncated` when the range is not inside the
    ///   image, naming `what` was being read.
    func read(offset: UInt64, count: Int, _ what: @autoclosure () -> String) throws(ImageError) -> [UInt8] {
        guard count >= 0, contains(offset: offset, count: UInt64(count)) else {
            throw .truncated(what: what(), offset: offset, count: UInt64(max(count, 0)), size: size)
        }
        switch storage {
        case .bytes(let bytes):
            return Array(bytes[Int(offset)..<Int(offset) + count])
        case .file(let descriptor):
            var result = [UInt8](repeating: 0, count: count)
            var done = 0
            while done < count {
                let got = result.withUnsafeMutableBytes { raw in
                    pread(descriptor.fd, raw.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                }
                if got < 0 && errno == EINTR { continue }
                guard got > 0 else {
                    let reason = got < 0 ? String(cString: strerror(errno)) : "the file ended early"
                    throw .unreadable(role: what(), path: path ?? "", reason: reason)
                }
                done += got
            }
            return result
        }
    }
}

extension ImageSource {
    /// `count` bytes at `offset` as plan contents: a slice of the file,
    /// which population reads straight into guest memory, or for in-memory
    /// bytes the bytes themselves.
    func contents(offset: UInt64, length: UInt64, _ what: @autoclosure () -> String) throws(ImageError) -> RegionContents {
        guard contains(offset: offset, count: length) else {
            throw .truncated(what: what(), offset: offset, count: length, size: size)
        }
        if let path { return .file(path: path, offset: offset, length: length) }
        return .bytes(try read(offset: offset, count: Int(length), what()))
    }
}

/// A file descriptor closed when the last copy of the image source goes away.
public final class FileDescriptor: Sendable {
    let fd: CInt
    init(_ fd: CInt) { self.fd = fd }
    deinit { close(fd) }
}

/// Little-endian field access on a header read from an image, bounds-checked.
public struct LittleEndianBytes {
    public let bytes: [UInt8]
    /// What these bytes are, for error messages ("ELF header").
    let what: String

    public init(bytes: [UInt8], what: String) {
        self.bytes = bytes
        self.what = what
    }

    public func u8(_ offset: Int) throws(ImageError) -> UInt8 {
        UInt8(try unsigned(offset, 1))
    }

    public func u16(_ offset: Int) throws(ImageError) -> UInt16 {
        UInt16(try unsigned(offset, 2))
    }

    public func u32(_ offset: Int) throws(ImageError) -> UInt32 {
        UInt32(try unsigned(offset, 4))
    }

    public func u64(_ offset: Int) throws(ImageError) -> UInt64 {
        try unsigned(offset, 8)
    }

    private func unsigned(_ offset: Int, _ width: Int) throws(ImageError) -> UInt64 {
        guard offset >= 0, offset <= bytes.count - width else {
            throw .truncated(what: what, offset: UInt64(max(offset, 0)), count: UInt64(width), size: UInt64(bytes.count))
        }
        var value: UInt64 = 0
        for index in 0..<width { value |= UInt64(bytes[offset + index]) << (8 * index) }
        return value
    }
}

/// A little-endian byte buffer the loaders build boot structures in.
public struct LittleEndianWriter {
    public private(set) var bytes: [UInt8]

    public init(count: Int) { bytes = [UInt8](repeating: 0, count: count) }

    /// Stores `value` in `width` bytes at `offset`; the offsets are the
    /// loaders' own constants, so a store outside the buffer is a bug.
    public mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + T.bitWidth / 8 <= bytes.count, "boot structure store outside its buffer")
        for index in 0..<(T.bitWidth / 8) {
            bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index))
        }
    }

    public mutating func store(_ data: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset + data.count <= bytes.count, "boot structure store outside its buffer")
        bytes.replaceSubrange(offset..<offset + data.count, with: data)
    }
}
