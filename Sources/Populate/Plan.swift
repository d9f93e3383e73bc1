import GuestMemfd
import LaunchMeasurement
/// What a page of the launch plan is, in the platform-neutral terms the
/// population backends translate into their own page types.
public enum PageKind: String, Sendable, CaseIterable, Codable {
    /// Data the platform copies in and measures (SNP NORMAL, TDX PAGE.ADD + MR.EXTEND, CCA measured DATA_CREATE).
    case normal
    /// Memory that starts as zeros; on SNP measured by type and address only (ZERO pages).
    case zero
    /// Data copied in but left out of the measurement (SNP UNMEASURED, TDX without MEASURE, CCA unmeasured).
    case unmeasured
    /// The SNP secrets page, filled by the firmware.
    case secrets
    /// The SNP CPUID page, checked and possibly corrected by the firmware.
    case cpuid
}

/// Where a region's bytes come from.
public enum RegionContents: Sendable, Equatable {
    /// Bytes held in memory.
    case bytes([UInt8])
    /// `length` bytes of a file starting at `offset`.
    case file(path: String, offset: UInt64, length: UInt64)
    /// Nothing: the region is all zeros.
    case zeros

    /// The number of content bytes; the rest of the region is zero.
    public var count: UInt64 {
        switch self {
        case .bytes(let bytes): UInt64(bytes.count)
        case .file(_, _, let length): length
        case .zeros: 0
        }
    }
}

/// One guest-physical range of a launch plan.
public struct PlanRegion: Sendable, Equatable {
    /// A name for messages and the ledger: "kernel", "initrd", "OVMF section 3".
    public var name: String
    public var range: GuestRange
    public var contents: RegionContents
    public var kind: PageKind

    public init(name: String, range: GuestRange, contents: RegionContents, kind: PageKind = .normal) {
        self.name = name
        self.range = range
        self.contents = contents
        self.kind = kind
    }

    /// Whether the platform extends the launch measurement with this region's pages.
    public var isMeasured: Bool { kind == .normal || kind == .zero || kind == .secrets || kind == .cpuid }
}

/// Why a launch plan was rejected before any ioctl was issued.
public struct PlanError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Reason: Equatable, Sendable {
        case emptyRange
        case wrapsAround
        case notPageAligned
        case contentsLongerThanRange(contents: UInt64)
        case overlaps(other: String, otherIndex: Int)
        case outsideMemory
        case contentsForKind(PageKind)
        case kindNotOnPlatform(PageKind, platform: String)
    }

    public var index: Int
    public var region: String
    public var range: GuestRange
    public var reason: Reason

    public var description: String {
        let subject = "plan region \(index) '\(region)' \(range)"
        switch reason {
        case .emptyRange: return "\(subject) is empty"
        case .wrapsAround: return "\(subject) wraps past the end of the address space"
        case .notPageAligned: return "\(subject) is not 4 KiB aligned in start and size"
        case .contentsLongerThanRange(let count):
            return "\(subject) holds \(count) bytes of contents, more than its \(range.size)-byte range"
        case .overlaps(let other, let otherIndex): return "\(subject) overlaps region \(otherIndex) '\(other)'"
        case .outsideMemory: return "\(subject) is not inside the guest's memory slots"
        case .contentsForKind(let kind): return "\(subject) is a \(kind.rawValue) region and cannot carry contents"
        case .kindNotOnPlatform(let kind, let platform):
            return "\(subject) is a \(kind.rawValue) region, which \(platform) has no page type for"
        }
    }
}

/// An ordered list of regions to populate: the order is the measurement order.
public struct LaunchPlan: Sendable, Equatable {
    public var regions: [PlanRegion]

    public init(regions: [PlanRegion] = []) { self.regions = regions }

    /// Checks every rule that can be checked without the kernel: each region
    /// is non-empty, page aligned, not wrapping, no longer than its contents
    /// allow, inside `memory`, and overlaps no other region.
    ///
    /// - Parameter memory: the guest-physical ranges memslots will cover.
    /// - Throws: the first `PlanError`, naming the region.
    public func validate(memory: [GuestRange]) throws(PlanError) {
        for (index, region) in regions.enumerated() {
            func reject(_ reason: PlanError.Reason) -> PlanError {
                PlanError(index: index, region: region.name, range: region.range, reason: reason)
            }
            guard region.range.size > 0 else { throw reject(.emptyRange) }
            guard let end = region.range.end else { throw reject(.wrapsAround) }
            guard region.range.isPageAligned else { throw reject(.notPageAligned) }
            guard region.contents.count <= region.range.size else {
                throw reject(.contentsLongerThanRange(contents: region.contents.count))
            }
            if region.kind == .zero || region.kind == .secrets, region.contents != .zeros {
                throw reject(.contentsForKind(region.kind))
            }
            let inside = memory.contains { slot in
                slot.start <= region.range.start && (slot.end.map { end <= $0 } ?? true)
            }
            guard inside else { throw reject(.outsideMemory) }
        }
        // Overlaps: sort by start and compare neighbours, reporting the later region in plan order.
        let order = regions.indices.sorted { regions[$0].range.start < regions[$1].range.start }
        for (first, second) in zip(order, order.dropFirst()) where regions[first].range.overlaps(regions[second].range) {
            let (earlier, later) = (min(first, second), max(first, second))
            throw PlanError(index: later, region: regions[later].name, range: regions[later].range,
                            reason: .overlaps(other: regions[earlier].name, otherIndex: earlier))
        }
    }
}
