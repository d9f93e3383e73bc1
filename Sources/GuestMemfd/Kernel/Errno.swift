#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A Linux error number, as a kernel call reports it.
///
/// The named values are the ones KVM and guest_memfd return to userspace;
/// any other number still round-trips through `rawValue`.
public struct Errno: RawRepresentable, Error, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: CInt
    public init(rawValue: CInt) { self.rawValue = rawValue }

    /// The corresponding C error is `EPERM`.
    public static let notPermitted = Errno(rawValue: 1)
    /// The corresponding C error is `ENOENT`.
    public static let noSuchFileOrDirectory = Errno(rawValue: 2)
    /// The corresponding C error is `EINTR`.
    public static let interrupted = Errno(rawValue: 4)
    /// The corresponding C error is `EIO`.
    public static let ioError = Errno(rawValue: 5)
    /// The corresponding C error is `ENXIO`.
    public static let noSuchDeviceOrAddress = Errno(rawValue: 6)
    /// The corresponding C error is `E2BIG`.
    public static let argumentListTooLong = Errno(rawValue: 7)
    /// The corresponding C error is `EBADF`.
    public static let badFileDescriptor = Errno(rawValue: 9)
    /// The corresponding C error is `EAGAIN`.
    public static let resourceTemporarilyUnavailable = Errno(rawValue: 11)
    /// The corresponding C error is `ENOMEM`.
    public static let noMemory = Errno(rawValue: 12)
    /// The corresponding C error is `EACCES`.
    public static let permissionDenied = Errno(rawValue: 13)
    /// The corresponding C error is `EFAULT`.
    public static let badAddress = Errno(rawValue: 14)
    /// The corresponding C error is `EBUSY`.
    public static let resourceBusy = Errno(rawValue: 16)
    /// The corresponding C error is `EEXIST`.
    public static let fileExists = Errno(rawValue: 17)
    /// The corresponding C error is `ENODEV`.
    public static let noSuchDevice = Errno(rawValue: 19)
    /// The corresponding C error is `EINVAL`.
    public static let invalidArgument = Errno(rawValue: 22)
    /// The corresponding C error is `EMFILE`.
    public static let tooManyOpenFiles = Errno(rawValue: 24)
    /// The corresponding C error is `ENOTTY`.
    public static let notTTY = Errno(rawValue: 25)
    /// The corresponding C error is `ENOSPC`.
    public static let noSpace = Errno(rawValue: 28)
    /// The corresponding C error is `ESPIPE`.
    public static let illegalSeek = Errno(rawValue: 29)
    /// The corresponding C error is `EOPNOTSUPP`.
    public static let notSupported = Errno(rawValue: 95)
    /// The corresponding C error is `EHWPOISON`.
    public static let hardwarePoison = Errno(rawValue: 133)

    private static let names: [CInt: String] = [
        1: "EPERM", 2: "ENOENT", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG", 9: "EBADF",
        11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST",
        19: "ENODEV", 22: "EINVAL", 24: "EMFILE", 25: "ENOTTY", 28: "ENOSPC", 29: "ESPIPE",
        95: "EOPNOTSUPP", 133: "EHWPOISON",
    ]

    /// The symbolic C name, such as `EINVAL`, or `errno N` for a number not named here.
    public var name: String { Errno.names[rawValue] ?? "errno \(rawValue)" }

    /// The C library's message followed by the symbolic name: "Invalid argument (EINVAL)".
    public var description: String {
        guard let message = strerror(rawValue) else { return name }
        return "\(String(cString: message)) (\(name))"
    }

    /// Lets `catch Errno.interrupted` match an error that carries this errno.
    public static func ~= (lhs: Errno, rhs: any Error) -> Bool {
        if let errno = rhs as? Errno { return errno == lhs }
        if let error = rhs as? KVMError { return error.errno == lhs }
        return false
    }
}
