import VMMCore
import GuestMemfd
/// A size on snpvmm's command lines: a whole number in ASCII digits with an
/// optional binary suffix K, M, G or T (either case, optionally followed by
/// "iB" or "B", so 64M, 64MB and 64MiB agree).
enum SizeArgument: Equatable {
    case bytes(UInt64)
    /// Not a size: no digits, other characters, an unknown unit, or more digits than 64 bits hold.
    case malformed
    /// A size, but past 2^64 bytes once its unit is applied.
    case tooLarge

    /// Reads `text`; a bare number counts in units of 2^`bareUnitShift`
    /// bytes (0: bytes; 20: MiB, as QEMU's `-m`).
    init(_ text: String, bareUnitShift: UInt64 = 0) {
        var digits = Substring(text)
        for suffix in ["iB", "B"] where digits.count > 1 && digits.hasSuffix(suffix) {
            digits = digits.dropLast(suffix.count)
            break
        }
        var shift = bareUnitShift
        let shifts: [String: UInt64] = ["K": 10, "M": 20, "G": 30, "T": 40]
        if let last = digits.last, last.isLetter {
            guard let unit = shifts[last.uppercased()] else {
                self = .malformed
                return
            }
            shift = unit
            digits = digits.dropLast()
        } else if digits.count != text.count {
            self = .malformed  // "B" or "iB" without a unit letter
            return
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let count = UInt64(digits) else {
            self = .malformed
            return
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: 1 << shift)
        self = overflow ? .tooLarge : .bytes(bytes)
    }

    /// The size in bytes, or nil when it is malformed or too large.
    var value: UInt64? {
        if case .bytes(let bytes) = self { return bytes }
        return nil
    }
}
