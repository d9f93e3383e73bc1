import GuestMemfd
/// The confidential platform a VM runs on, or none.
public enum Platform: String, Sendable, CaseIterable, CustomStringConvertible {
    /// A default VM: guest_memfd memory stays shared and nothing is measured.
    case plain
    case snp
    case tdx
    case cca

    public var description: String {
        switch self {
        case .plain: "plain"
        case .snp: "SEV-SNP"
        case .tdx: "TDX"
        case .cca: "CCA"
        }
    }
}

/// The launch measurement a platform keeps.
public enum MeasurementAlgorithm: String, Sendable {
    /// None: the plain platform measures nothing.
    case none
    /// The SEV-SNP launch digest: a SHA-384 chain over PAGE_INFO.
    case snpLaunchDigest
    /// TDX MRTD: one SHA-384 over PAGE.ADD and MR.EXTEND blocks.
    case tdxMRTD
    /// The Arm CCA realm initial measurement: a chain over measurement descriptors.
    case ccaRealmInitialMeasurement
}

/// What a platform can do, answered before any population starts. A
/// missing operation is an answer here, never a trap later.
public struct PlatformCapabilities: Sendable, Equatable {
    /// The platform's name, for reports and ledgers.
    public var platform: Platform
    /// Guest memory becomes private before it is populated; false for a
    /// default VM, whose memory the host simply writes.
    public var privateMemory: Bool
    /// The platform can populate a page from its own contents (no source),
    /// after the host wrote it while shared and converted it preserving them.
    public var populatesInPlace: Bool
    /// Why in-place population is unavailable, where it is.
    public var inPlaceUnavailable: String?
    /// The platform can populate from a separate source buffer.
    public var populatesFromSource: Bool
    /// The granule population works in.
    public var granularity: UInt64
    /// Kinds the platform has a page type for.
    public var kinds: Set<PageKind>
    /// Kinds whose pages need no population call (CCA: delegated granules are already zero).
    public var kindsWithoutCall: Set<PageKind>
    /// Kinds whose population calls take no source (SNP ZERO pages: the firmware clears them).
    public var kindsWithoutSource: Set<PageKind>
    /// ioctls the launch finish issues.
    public var finishCalls: Int

    public init(platform: Platform, privateMemory: Bool = true, populatesInPlace: Bool, inPlaceUnavailable: String? = nil,
                populatesFromSource: Bool, granularity: UInt64 = pageSize, kinds: Set<PageKind>,
                kindsWithoutCall: Set<PageKind> = [], kindsWithoutSource: Set<PageKind> = [], finishCalls: Int = 1) {
        self.platform = platform
        self.privateMemory = privateMemory
        self.populatesInPlace = populatesInPlace
        self.inPlaceUnavailable = inPlaceUnavailable
        self.populatesFromSource = populatesFromSource
        self.granularity = granularity
        self.kinds = kinds
        self.kindsWithoutCall = kindsWithoutCall
        self.kindsWithoutSource = kindsWithoutSource
        self.finishCalls = finishCalls
    }
}

/// One population call: a contiguous run of one kind.
public struct PopulateCall: Sendable, Equatable {
    public var kind: PageKind
    public var gpa: UInt64
    public var pages: UInt64
    /// The source buffer's address, or 0 to populate in place.
    public var source: UInt64

    public init(kind: PageKind, gpa: UInt64, pages: UInt64, source: UInt64) {
        self.kind = kind
        self.gpa = gpa
        self.pages = pages
        self.source = source
    }
}

/// What one population call did: the pages the kernel reports done (from
/// its write-back), and the error that stopped it, if any.
public struct PopulateStep: Sendable {
    public var pagesDone: UInt64
    public var error: KVMError?

    public init(pagesDone: UInt64, error: KVMError? = nil) {
        self.pagesDone = pagesDone
        self.error = error
    }
}

/// What the engine does after a population call failed.
public enum CallFailure: Sendable, Equatable {
    /// Nothing was lost (a signal, a busy page): send the rest again.
    case transient
    /// The firmware rejected the source's contents and wrote the values it
    /// would accept back into the source (an SNP CPUID page). The engine
    /// reports the difference, and sends the corrected page again only
    /// when `PopulateOptions.acceptCorrectedPages` says so.
    case sourceCorrected
    /// The call failed for good.
    case fatal
}

/// One platform's population operations, implemented on the typed KVM
/// objects of `GuestMemfd`, so the same code runs over any kernel interface.
/// The engine (`Populator`) knows no platform: everything that differs
/// between them is answered here.
public protocol PopulationBackend: AnyObject {
    var capabilities: PlatformCapabilities { get }

    /// The name the ledger gives this platform's population call.
    var callName: String { get }

    /// Makes `range` private before it is populated.
    func makePrivate(_ range: GuestRange) throws(KVMError)

    /// Issues one population call; the kernel may do less than asked.
    func populate(_ call: PopulateCall) -> PopulateStep

    /// Says how to go on after `error` stopped `call`.
    func classify(_ error: KVMError, in call: PopulateCall) -> CallFailure

    /// Closes the launch: afterwards the guest can run and nothing more is measured.
    func finish() throws(KVMError)

    /// A new accumulator of the launch measurement this platform keeps.
    func makeMeasurement() -> any LaunchMeasurer

    /// What the firmware changed when it corrected a source page (`CallFailure.sourceCorrected`).
    func describeCorrection(of call: PopulateCall, original: [UInt8], corrected: [UInt8]) -> String
}

extension PopulationBackend {
    public func describeCorrection(of call: PopulateCall, original: [UInt8], corrected: [UInt8]) -> String {
        let changed = zip(original, corrected).filter { $0 != $1 }.count
        return "the firmware rewrote \(changed) bytes of the source page for \(GuestPhysicalAddress(call.gpa))"
    }

    /// A signal (EINTR) or a busy page (EAGAIN) loses nothing.
    public func classify(_ error: KVMError, in call: PopulateCall) -> CallFailure {
        error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable ? .transient : .fatal
    }
}

/// A guest's memory as population sees it: guest_memfd files bound at
/// guest-physical ranges, with a host mapping of each.
public struct GuestMemoryLayout {
    public struct Slot {
        public var range: GuestRange
        /// The guest_memfd behind the range; nil for RAM that is never
        /// private (a memfd mapped shared, on hosts without guest_memfd).
        public var memfd: GuestMemfd?
        /// The host's mapping of the range's memory, through which in-place
        /// population writes; nil where guest_memfd holds only private memory.
        public var mapping: (any MappedGuestMemory)?
        /// The slot's first byte in the file behind it (and in `mapping`).
        public var fileOffset: UInt64

        public init(range: GuestRange, mapping: GuestMemoryMapping, fileOffset: UInt64 = 0) {
            self.range = range
            self.memfd = mapping.memfd
            self.mapping = mapping
            self.fileOffset = fileOffset
        }

        /// A slot whose guest_memfd has no host mapping: only the separate-source policy can fill it.
        public init(range: GuestRange, memfd: GuestMemfd, fileOffset: UInt64 = 0) {
            self.range = range
            self.memfd = memfd
            self.mapping = nil
            self.fileOffset = fileOffset
        }

        /// A slot of shared memory with no guest_memfd: only a plain guest,
        /// whose memory is never private, can be populated into it.
        public init(range: GuestRange, sharedMemory: SharedMemory, fileOffset: UInt64 = 0) {
            self.range = range
            self.memfd = nil
            self.mapping = sharedMemory
            self.fileOffset = fileOffset
        }
    }

    public var slots: [Slot]
    /// How the guest_memfd behind the slots is backed, where it was created
    /// by `Populator.createGuestMemfd`; the population report repeats it.
    public var backing: BackingOutcome?

    public init(slots: [Slot], backing: BackingOutcome? = nil) {
        self.slots = slots
        self.backing = backing
    }

    /// The slot holding `gpa`, and the byte offset of `gpa` in its mapping.
    func locate(_ gpa: UInt64) -> (slot: Slot, offset: Int)? {
        guard let slot = slots.first(where: { $0.range.contains(GuestPhysicalAddress(gpa)) }) else { return nil }
        return (slot, Int(slot.fileOffset + gpa - slot.range.start.rawValue))
    }
}

extension GuestMemoryLayout {
    /// Makes `range` private or shared: with `KVM_SET_MEMORY_ATTRIBUTES` on
    /// the VM, or, where guest_memfd keeps the attributes itself (in-place
    /// conversion), with `KVM_SET_MEMORY_ATTRIBUTES2` on each guest_memfd
    /// behind the range. A VMM calls this for the guest's conversion
    /// requests too (`KVM_HC_MAP_GPA_RANGE`, `KVM_EXIT_MEMORY_FAULT`).
    public func convert(_ range: GuestRange, toPrivate: Bool, vm: VM, inGuestMemfd: Bool) throws(KVMError) {
        let attributes: MemoryAttributes = toPrivate ? .private : []
        guard inGuestMemfd else {
            try vm.setMemoryAttributes(range, attributes: attributes)
            return
        }
        var gpa = range.start.rawValue
        let end = gpa + range.size
        while gpa < end {
            guard let (slot, offset) = locate(gpa) else {
                throw KVMError(.ioctl(.setMemoryAttributes2), on: .guestMemfd, fd: -1, errno: .invalidArgument,
                               range: GuestRange(start: gpa, size: end - gpa), detail: "no guest_memfd slot holds this range")
            }
            let size = min(end, slot.range.start.rawValue + slot.range.size) - gpa
            guard let memfd = slot.memfd else {
                throw KVMError(.ioctl(.setMemoryAttributes2), on: .guestMemfd, fd: -1, errno: .invalidArgument,
                               range: GuestRange(start: gpa, size: size), detail: "the slot holding this range has no guest_memfd")
            }
            try memfd.setMemoryAttributes2(offset: UInt64(offset), size: size, attributes: attributes)
            gpa += size
        }
    }
}
