import VMMCore
import GuestMemfd
#if canImport(Glibc)
import Glibc
#endif

/// The process exit status of a command.
enum ExitCode: Int32 {
    case success = 0
    /// The host or the inputs could not do what was asked.
    case failure = 1
    /// The command line was wrong.
    case usage = 2
}

/// Prints `snpvmm: message` on standard error and exits with `status`.
func fail(_ message: String, status: ExitCode = .failure) -> Never {
    var standardError = StandardError()
    print("snpvmm: \(message)", to: &standardError)
    exit(status.rawValue)
}

/// Standard error as a `TextOutputStream`.
struct StandardError: TextOutputStream {
    /// Prints `snpvmm: line` on standard error.
    @Sendable static func log(_ line: String) {
        var standardError = StandardError()
        print("snpvmm: \(line)", to: &standardError)
    }

    mutating func write(_ string: String) {
        var bytes = Array(string.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}
