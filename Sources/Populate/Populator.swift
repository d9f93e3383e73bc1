import GuestMemfd
import LaunchMeasurement
#if canImport(Glibc)
import Glibc
#endif

/// How contents reach private memory.
public enum PopulationPolicy: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The host writes the contents through the guest_memfd mapping while
    /// the pages are shared, converts them keeping the bytes, and the
    /// platform populates each page from itself.
    case inPlace = "in-place"
    /// The platform copies the contents from a separate source buffer into
    /// private memory (TDX, SNP without in-place conversion, CCA).
    case separateSource = "separate-source"

    public var description: String { rawValue }
}

/// Choices a caller may make; the defaults follow the platform's capabilities.
public struct PopulateOptions: Sendable {
    /// Forces a policy; nil picks in place where the platform can, else a separate source.
    public var policy: PopulationPolicy?
    /// EINTR or EAGAIN answers accepted in a row before giving up; each
    /// resumes from the progress the kernel wrote back.
    public var interruptionLimit = 16
    /// When the firmware refuses a page and writes the values it would
    /// accept into the source (an SNP CPUID page), populate it again with
    /// them. Off by default, as in QEMU, which reports the differing CPUID
    /// leaves and fails: the firmware's values are not the ones the VMM
    /// meant the guest to see, and only the caller can accept them.
    public var acceptCorrectedPages = false
    /// The largest single population call, in bytes; a multiple of 2 MiB so
    /// that whole 2 MiB runs are never split.
    public var maximumCallBytes: UInt64 = 64 << 20
    /// Whether to finish the launch (LAUNCH_FINISH, FINALIZE_VM) at the end.
    public var finish = true
    /// The host pages to ask for when creating guest memory through
    /// `Populator.createGuestMemfd(vm:size:flags:options:)`.
    public var backing: GuestMemoryBacking = .pages4K
    /// What the platform itself measured, where something can tell (a test
    /// double); the population then fails when its expected measurement differs.
    public var observer: (any LaunchMeasurementObserver)?
    /// Where notes such as CPUID corrections go.
    public var log: @Sendable (String) -> Void = { _ in }
    /// Where separate-source buffers come from and return to.
    var sourceMemory: any SourceMemory = HeapSourceMemory()

    public init() {}
}

/// The outcome of a population.
public struct PopulateResult: Sendable {
    public var report: PopulateReport
    public var ledger: Ledger
    /// The measurement computed from the plan (nil on the plain platform).
    public var expectedMeasurement: [UInt8]?
    /// The measurement the observer reported, where one was installed.
    public var reportedMeasurement: [UInt8]?
}

/// Fills a guest's private memory from a launch plan through one
/// `PopulationBackend`, computing the expected launch measurement as it
/// goes and accounting for every byte.
public final class Populator {
    public let backend: any PopulationBackend
    public let memory: GuestMemoryLayout
    public let options: PopulateOptions

    public init(backend: any PopulationBackend, memory: GuestMemoryLayout, options: PopulateOptions = PopulateOptions()) {
        self.backend = backend
        self.memory = memory
        self.options = options
    }

    /// The policy `options` and the platform's capabilities give.
    public func policy() throws(PopulateError) -> PopulationPolicy {
        let capabilities = backend.capabilities
        let mapped = memory.slots.allSatisfy { $0.mapping != nil }
        let chosen: PopulationPolicy = capabilities.privateMemory
            ? options.policy ?? (capabilities.populatesInPlace && mapped ? .inPlace : .separateSource)
            : .inPlace
        if chosen == .inPlace, let unmapped = memory.slots.first(where: { $0.mapping == nil }) {
            throw PopulateError(.policy("in-place population writes through the slot's host mapping, and the slot at \(unmapped.range) has none"))
        }
        guard capabilities.privateMemory else { return chosen }
        if let unbacked = memory.slots.first(where: { $0.memfd == nil }) {
            throw PopulateError(.policy("\(capabilities.platform) keeps guest memory private in guest_memfd, and the slot at \(unbacked.range) is shared memory without one"))
        }
        if chosen == .inPlace, !capabilities.populatesInPlace {
            let why = capabilities.inPlaceUnavailable ?? "the platform has no in-place population"
            throw PopulateError(.policy("\(capabilities.platform) cannot populate in place: \(why)"))
        }
        return chosen
    }

    /// Populates `plan` in order and, unless told not to, finishes the launch.
    ///
    /// - Throws: `PopulateError`, which names the region or call that failed
    ///   and lists exactly which ranges were made private and which were
    ///   populated before it.
    public func populate(_ plan: LaunchPlan) throws(PopulateError) -> PopulateResult {
        let capabilities = backend.capabilities
        var clock = PhaseClock()
        do {
            try plan.validate(memory: memory.slots.map(\.range))
        } catch {
            throw PopulateError(.plan(error))
        }
        for (index, region) in plan.regions.enumerated() where !capabilities.kinds.contains(region.kind) {
            throw PopulateError(.plan(PlanError(index: index, region: region.name, range: region.range,
                                                reason: .kindNotOnPlatform(region.kind, platform: capabilities.platform.description))))
        }
        let policy = try policy()
        clock.lap("validate")

        let measurement = backend.makeMeasurement()
        var state = PopulationState(platform: capabilities.platform, algorithm: measurement.algorithm, policy: policy)
        state.report.backing = memory.backing?.description
        for (index, region) in plan.regions.enumerated() {
            if !capabilities.privateMemory {
                try writeInPlace(region, index: index, state: &state)
                clock.lap("fill", bytes: region.range.size)
                continue
            }
            var contents: [UInt8] = []
            // The copy may hold secrets: it is wiped on every way out, as the source buffers are.
            defer { contents.wipe() }
            // Pages whose calls take no source, from a separate source, and
            // that the plan leaves zero take no bytes from the host.
            var bytesUnused = policy == .separateSource && capabilities.kindsWithoutSource.contains(region.kind)
            if case .zeros = region.contents {} else { bytesUnused = false }
            if !bytesUnused {
                do {
                    contents = try LaunchPlan.pageContents(of: region, index: index)
                } catch {
                    throw state.failure(.contents(error.description))
                }
                clock.lap("read", bytes: UInt64(contents.count))
            }
            let hashes = measuredPageHashes(region, contents, measured: measurement.algorithm != .none)
            if !hashes.isEmpty { clock.lap("measure", bytes: UInt64(contents.count)) }
            try populateRegion(region, contents: contents, hashes: hashes, measurement: measurement, state: &state,
                               clock: &clock)
        }

        var atFinish: [UInt8]?
        if options.finish {
            do {
                state.ledger.records += try measurement.finishLaunch()
                atFinish = measurement.current
                state.ledger.records += try measurement.firstRun()
            } catch {
                throw state.failure(.kernel(error))
            }
        }
        let expected = measurement.algorithm == .none ? nil : measurement.current
        state.ledger.measurement = expected

        if options.finish {
            do { try backend.finish() } catch { throw state.failure(.kernel(error)) }
            state.report.ioctls += capabilities.finishCalls
        }
        clock.lap("finish")
        // The platform has measured up to the finish; what it measures at the first run comes later.
        let reported = options.observer?.launchMeasurement()
        let comparable = options.finish ? atFinish : expected
        if let comparable, let reported, reported != comparable {
            throw state.failure(.measurementMismatch(expected: comparable, reported: reported,
                                                     firstDivergingPage: firstDivergence(measurement.pageLog)))
        }
        state.report.phaseSeconds = clock.laps
        state.report.phaseBytes = clock.bytes
        return PopulateResult(report: state.report, ledger: state.ledger, expectedMeasurement: expected,
                              reportedMeasurement: reported)
    }

    /// SHA-384 (or the realm's hash) of each page the platform measures by content.
    private func measuredPageHashes(_ region: PlanRegion, _ contents: [UInt8], measured: Bool) -> [[UInt8]] {
        guard region.kind == .normal, measured else { return [] }
        var hashes = [[UInt8]](repeating: [], count: contents.count / Int(pageSize))
        contents.withUnsafeBytes { raw in
            ParallelPageHasher.forEachPageDigest(raw, algorithm: .sha384) { page, digest in
                hashes[page] = Array(digest)
            }
        }
        return hashes
    }

    private func populateRegion(_ region: PlanRegion, contents: [UInt8], hashes: [[UInt8]], measurement: any LaunchMeasurer,
                                state: inout PopulationState, clock: inout PhaseClock) throws(PopulateError) {
        let capabilities = backend.capabilities
        let range = region.range
        state.report.pagesByKind[region.kind, default: 0] += range.pageCount
        state.report.countUnits(range)
        let inPlace = state.policy == .inPlace

        // In place, the host writes the bytes while the pages are shared.
        if inPlace {
            try writeThroughMappings(contents, at: range.start.rawValue, state: &state)
            clock.lap("fill", bytes: UInt64(contents.count))
        }
        var conversionRetries = 0
        while true {
            do {
                try backend.makePrivate(range)
                break
            } catch {
                // A conversion is all or nothing, so after EAGAIN (a page still
                // pinned, kvm_gmem_set_attributes) or EINTR nothing is half done
                // and the same request may be sent again.
                if error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable,
                   conversionRetries < options.interruptionLimit {
                    conversionRetries += 1
                    state.report.retries += 1
                    continue
                }
                throw state.failure(.kernel(error), region: region, next: range.start.rawValue)
            }
        }
        state.report.ioctls += inPlace ? memory.slots.filter { $0.range.overlaps(range) }.count : 1
        state.madePrivate.append(range)
        clock.lap("convert", bytes: range.size)

        let needsCall = !capabilities.kindsWithoutCall.contains(region.kind)
        var source: SourceBuffer?
        if !inPlace && needsCall && !capabilities.kindsWithoutSource.contains(region.kind) {
            source = SourceBuffer(contents, memory: options.sourceMemory)
            state.report.bytesCopied += UInt64(contents.count)
            clock.lap("fill", bytes: UInt64(contents.count))
        }
        defer { source?.wipe() }
        if needsCall {
            try issueCalls(region, contents: contents, source: source, hashes: hashes, measurement: measurement,
                           state: &state)
        }
        state.populated.append(range)
        clock.lap("populate", bytes: needsCall ? range.size : 0)
    }

    /// Writes a region of a plain guest straight into its guest_memfd
    /// mapping: a file is read into guest memory with pread (one copy, from
    /// the page cache) and the rest of the region is zero-filled. Nothing is
    /// measured, so no copy of the contents is kept.
    private func writeInPlace(_ region: PlanRegion, index: Int, state: inout PopulationState) throws(PopulateError) {
        let range = region.range
        // validate() has put the region inside one slot.
        guard let (slot, offset) = memory.locate(range.start.rawValue), let mapping = slot.mapping else {
            throw state.failure(.contents("no mapped memory slot holds \(range.start)"), region: region)
        }
        let size = Int(range.size)
        var filled = 0
        func memoryStep(_ body: () throws(KVMError) -> Void) throws(PopulateError) {
            do { try body() } catch { throw state.failure(.kernel(error), region: region, next: range.start.rawValue) }
        }
        func contentsFailure(_ error: ExpectedMeasurementError) -> PopulateError {
            state.failure(.contents(error.description), region: region, next: range.start.rawValue)
        }
        switch region.contents {
        case .bytes(let bytes):
            try memoryStep { () throws(KVMError) in try mapping.write(bytes, at: offset) }
            filled = bytes.count
        case .file(let path, let fileOffset, let length):
            try memoryStep { () throws(KVMError) in try mapping.populateWrite(offset: offset, count: Int(length)) }
            let destination = UnsafeMutableRawBufferPointer(start: mapping.base + offset, count: Int(length))
            do {
                filled = try FileBytes.read(path, offset: fileOffset, into: destination)
            } catch {
                throw contentsFailure(.unreadable(index: index, region: region.name, error: error))
            }
            guard filled == Int(length) else {
                throw contentsFailure(.shortFile(index: index, region: region.name, expected: length, read: UInt64(filled)))
            }
        case .zeros:
            break
        }
        if size > filled {
            try memoryStep { () throws(KVMError) in try mapping.fill(0, at: offset + filled, count: size - filled) }
        }
        state.report.pagesByKind[region.kind, default: 0] += range.pageCount
        state.report.countUnits(range)
        state.report.bytesCopied += UInt64(size)
        state.ledger.records.append(LedgerRecord(call: backend.callName, gpa: range.start.rawValue, pages: range.pageCount,
                                                 type: region.kind.rawValue, pageHashes: [], digest: nil))
        state.populated.append(range)
    }

    /// Writes a region's bytes through the guest_memfd mappings that hold it.
    private func writeThroughMappings(_ contents: [UInt8], at gpa: UInt64, state: inout PopulationState) throws(PopulateError) {
        var done = 0
        while done < contents.count {
            guard let (slot, offset) = memory.locate(gpa + UInt64(done)), let mapping = slot.mapping else {
                throw state.failure(.contents("no mapped memory slot holds \(GuestPhysicalAddress(gpa + UInt64(done)))"))
            }
            let inSlot = min(contents.count - done, Int(slot.range.start.rawValue + slot.range.size - gpa) - done)
            do {
                try contents.withUnsafeBytes { raw in
                    Result { () throws(KVMError) in
                        try mapping.write(UnsafeRawBufferPointer(rebasing: raw[done..<(done + inSlot)]), at: offset)
                    }
                }.get()
            } catch {
                throw state.failure(.kernel(error))
            }
            done += inSlot
        }
        state.report.bytesCopied += UInt64(contents.count)
    }

    /// Issues the population calls for one region in calls no larger than
    /// `maximumCallBytes`, resuming from the kernel's write-back, and
    /// measures the pages each call did.
    private func issueCalls(_ region: PlanRegion, contents: [UInt8], source: SourceBuffer?, hashes: [[UInt8]],
                            measurement: any LaunchMeasurer, state: inout PopulationState) throws(PopulateError) {
        let range = region.range, total = range.pageCount
        let chunkBytes = max(options.maximumCallBytes / hugePageSize * hugePageSize, hugePageSize)
        var done: UInt64 = 0, transient = 0, corrections = 0
        while done < total {
            // Calls end on 2 MiB-aligned guest addresses, so no 2 MiB run is split.
            let gpa = range.start.rawValue + done * pageSize
            var end = (gpa + chunkBytes) / hugePageSize * hugePageSize
            if end <= gpa { end = gpa + chunkBytes }
            let pages = min((end - gpa) / pageSize, total - done)
            let call = PopulateCall(kind: region.kind, gpa: gpa, pages: pages,
                                    source: source.map { $0.address + done * pageSize } ?? 0)
            let step = backend.populate(call)
            state.report.ioctls += 1
            if step.pagesDone > 0 {
                try record(region, gpa: call.gpa, pages: step.pagesDone, firstPage: Int(done), contents: contents,
                           hashes: hashes, measurement: measurement, state: &state)
                done += step.pagesDone
            }
            guard let error = step.error else {
                if step.pagesDone == 0 {
                    throw state.failure(.noProgress(call: backend.callName, gpa: call.gpa), region: region, next: call.gpa)
                }
                transient = 0
                // A short call (a signal part-way, the end of a memslot) is resumed from its write-back.
                if step.pagesDone < pages { state.report.retries += 1 }
                continue
            }
            let next = range.start.rawValue + done * pageSize
            switch backend.classify(error, in: call) {
            case .transient where transient < options.interruptionLimit:
                transient += 1
                state.report.retries += 1
                continue
            case .sourceCorrected:
                guard let source else { break }
                let page = Int(done) * Int(pageSize)
                let original = Array(region.contentsBytesForDiff[page..<(page + Int(pageSize))])
                let note = backend.describeCorrection(of: call, original: original,
                                                      corrected: source.bytes(at: page, count: Int(pageSize)))
                options.log(note)
                guard options.acceptCorrectedPages, corrections == 0 else {
                    throw state.failure(.firmwareCorrected(error, corrections: note), region: region, next: next)
                }
                corrections += 1
                state.report.retries += 1
                continue
            default:
                break
            }
            throw state.failure(.kernel(error), region: region, next: next)
        }
    }

    /// Measures the pages of one successful call and appends its ledger record.
    private func record(_ region: PlanRegion, gpa: UInt64, pages: UInt64, firstPage: Int, contents: [UInt8],
                        hashes: [[UInt8]], measurement: any LaunchMeasurer, state: inout PopulationState)
        throws(PopulateError)
    {
        let callHashes = hashes.isEmpty ? [] : Array(hashes[firstPage..<(firstPage + Int(pages))])
        let failure: MeasurementInputError? = contents.withUnsafeBytes { raw in
            for page in 0..<Int(pages) {
                let offset = (firstPage + page) * Int(pageSize)
                let bytes = raw.count >= offset + Int(pageSize)
                    ? UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + Int(pageSize))]) : nil
                do throws(MeasurementInputError) {
                    try measurement.add(gpa: gpa + UInt64(page) * pageSize, kind: region.kind, contents: bytes,
                                        sha384: callHashes.isEmpty ? nil : callHashes[page])
                } catch {
                    return error
                }
            }
            return nil
        }
        if let failure { throw state.failure(.contents(failure.description), region: region, next: gpa) }
        state.ledger.records.append(LedgerRecord(call: backend.callName, gpa: gpa, pages: pages,
                                                 type: measurement.ledgerType(of: region.kind), pageHashes: callHashes,
                                                 digest: measurement.current))
    }

    /// The first GPA at which the engine's running measurement and the platform's disagree.
    private func firstDivergence(_ ours: [MeasuredPage]) -> UInt64? {
        let theirs = options.observer?.measuredPages().filter { !$0.measurement.isEmpty } ?? []
        guard !theirs.isEmpty else { return nil }
        for (index, page) in theirs.enumerated() {
            guard index < ours.count else { return page.gpa }
            if ours[index].measurement != page.measurement || ours[index].gpa != page.gpa { return page.gpa }
        }
        return ours.count > theirs.count ? ours[theirs.count].gpa : nil
    }
}

/// The running state of one population.
struct PopulationState {
    var report: PopulateReport
    var ledger: Ledger
    var madePrivate: [GuestRange] = []
    var populated: [GuestRange] = []
    let policy: PopulationPolicy

    init(platform: Platform, algorithm: MeasurementAlgorithm, policy: PopulationPolicy) {
        report = PopulateReport(platform: platform, policy: policy)
        ledger = Ledger(platform: platform, algorithm: algorithm)
        self.policy = policy
    }

    /// An error carrying exactly what was done before it.
    func failure(_ reason: PopulateError.Reason, region: PlanRegion? = nil, next: UInt64? = nil) -> PopulateError {
        var error = PopulateError(reason)
        error.region = region?.name
        error.madePrivate = madePrivate
        error.populated = populated
        // Pages of the failing region that the kernel reported done.
        if let region, let next, next > region.range.start.rawValue {
            error.populated.append(GuestRange(start: region.range.start, size: next - region.range.start.rawValue))
        }
        error.nextGPA = next
        return error
    }
}

/// Memory for separate-source buffers. The heap in use; a test gives its
/// own to look at every buffer's bytes as it comes back.
protocol SourceMemory: Sendable {
    func allocate(byteCount: Int) -> UnsafeMutableRawPointer
    /// Takes back a buffer, already wiped.
    func deallocate(_ pointer: UnsafeMutableRawPointer, byteCount: Int)
}

struct HeapSourceMemory: SourceMemory {
    func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: Int(pageSize))
    }

    func deallocate(_ pointer: UnsafeMutableRawPointer, byteCount: Int) { pointer.deallocate() }
}

/// A page-aligned copy of a region's contents for the platform to copy from.
/// It is wiped (explicit_bzero) before it is freed, as it may hold secrets,
/// on every path out of the region, failures included.
final class SourceBuffer {
    let pointer: UnsafeMutableRawPointer
    let count: Int
    private let memory: any SourceMemory
    private var byteCount: Int { max(count, Int(pageSize)) }

    init(_ contents: [UInt8], memory: any SourceMemory = HeapSourceMemory()) {
        count = contents.count
        self.memory = memory
        pointer = memory.allocate(byteCount: max(count, Int(pageSize)))
        contents.withUnsafeBytes { if let base = $0.baseAddress { pointer.copyMemory(from: base, byteCount: count) } }
    }

    var address: UInt64 { UInt64(UInt(bitPattern: pointer)) }

    func bytes(at offset: Int, count: Int) -> [UInt8] {
        [UInt8](UnsafeRawBufferPointer(start: pointer + offset, count: count))
    }

    /// Zeroes the buffer in a way the compiler may not elide.
    func wipe() { explicit_bzero(pointer, byteCount) }

    deinit {
        wipe()
        memory.deallocate(pointer, byteCount: byteCount)
    }
}

extension PlanRegion {
    /// The region's inline bytes zero-padded, for describing CPUID corrections.
    var contentsBytesForDiff: [UInt8] {
        var bytes: [UInt8] = if case .bytes(let inline) = contents { inline } else { [] }
        bytes += [UInt8](repeating: 0, count: Int(range.size) - bytes.count)
        return bytes
    }
}

extension [UInt8] {
    /// Zeroes the bytes in a way the compiler may not elide.
    mutating func wipe() {
        withUnsafeMutableBytes { if let base = $0.baseAddress { explicit_bzero(base, $0.count) } }
    }
}

/// Measures the time of each phase.
struct PhaseClock {
    private var last = PhaseClock.now()
    private(set) var laps: [String: Double] = [:]
    /// Bytes each phase handled, for its rate.
    private(set) var bytes: [String: UInt64] = [:]

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    mutating func lap(_ phase: String, bytes count: UInt64 = 0) {
        let now = PhaseClock.now()
        laps[phase, default: 0] += now - last
        bytes[phase, default: 0] += count
        last = now
    }
}
