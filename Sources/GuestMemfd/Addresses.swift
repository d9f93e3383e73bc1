/// The size of a base page on x86-64 and of a granule in the uAPIs here.
public let pageSize: UInt64 = 4096

/// A 2 MiB huge page, the RMP's large entry size.
public let hugePageSize: UInt64 = 2 << 20

/// A guest-physical address.
public struct GuestPhysicalAddress: RawRepresentable, Hashable, Comparable, Sendable,
    ExpressibleByIntegerLiteral, CustomStringConvertible
{
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt64) { self.rawValue = value }

    /// The frame this address lies in.
    public var frame: GuestFrameNumber { GuestFrameNumber(rawValue / pageSize) }
    public var isPageAligned: Bool { rawValue % pageSize == 0 }

    /// This address moved forward by `bytes`, or nil where that would wrap.
    public func advanced(by bytes: UInt64) -> GuestPhysicalAddress? {
        let (sum, overflow) = rawValue.addingReportingOverflow(bytes)
        return overflow ? nil : GuestPhysicalAddress(sum)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// A guest frame number: a guest-physical address divided by the page size.
public struct GuestFrameNumber: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    /// The address of the frame's first byte, or nil where it does not fit in 64 bits.
    public var address: GuestPhysicalAddress? {
        let (product, overflow) = rawValue.multipliedReportingOverflow(by: pageSize)
        return overflow ? nil : GuestPhysicalAddress(product)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "gfn 0x" + String(rawValue, radix: 16) }
}

/// A half-open guest-physical range `[start, start + size)`.
///
/// Any start and size can be represented, so that a caller can hand the
/// kernel an unaligned or wrapping range and see its errno; `isValid` and
/// `isPageAligned` say whether the range is one the kernel accepts.
public struct GuestRange: Hashable, Sendable, CustomStringConvertible {
    public let start: GuestPhysicalAddress
    public let size: UInt64

    @_disfavoredOverload
    public init(start: GuestPhysicalAddress, size: UInt64) {
        self.start = start
        self.size = size
    }

    public init(start: UInt64, size: UInt64) {
        self.init(start: GuestPhysicalAddress(start), size: size)
    }

    /// The first address past the range, or nil where it wraps past 2^64.
    public var end: GuestPhysicalAddress? { start.advanced(by: size) }

    /// True for a non-empty range that does not wrap.
    public var isValid: Bool { size > 0 && end != nil }

    public var isPageAligned: Bool { start.isPageAligned && size % pageSize == 0 }

    /// Whole pages in the range (rounded down).
    public var pageCount: UInt64 { size / pageSize }

    public func contains(_ address: GuestPhysicalAddress) -> Bool {
        address >= start && address.rawValue - start.rawValue < size
    }

    public func overlaps(_ other: GuestRange) -> Bool {
        guard size > 0, other.size > 0 else { return false }
        let selfEnd = start.rawValue &+ size, otherEnd = other.start.rawValue &+ other.size
        return start.rawValue < otherEnd && other.start.rawValue < selfEnd
    }

    public var description: String {
        "[\(start), 0x\(String(start.rawValue &+ size, radix: 16)))"
    }
}
