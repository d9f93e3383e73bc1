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
    /// Called after each chunk a population handles (at most `maximumCallBytes`), for a progress display.
    public var progress: (@Sendable (PopulateProgress) -> Void)?
    /// Where separate-source buffers come from and return to.
    var sourceMemory: any SourceMemory = HeapSourceMemory()

    public init() {}
}

/// How far a population has got: bytes of the plan handled so far, of the
/// plan's total, and the time since it started.
public struct PopulateProgress: Sendable, Equatable {
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    public var seconds: Double

    public init(bytesDone: UInt64, bytesTotal: UInt64, seconds: Double) {
        self.bytesDone = bytesDone
        self.bytesTotal = bytesTotal
        self.seconds = seconds
    }

    /// The rate so far, once some time has passed.
    public var gibPerSecond: Double? {
        seconds > 0 && bytesDone > 0 ? Double(bytesDone) / Double(1 << 30) / seconds : nil
    }

    /// Seconds left at the rate so far.
    public var secondsLeft: Double? {
        gibPerSecond.map { Double(bytesTotal - min(bytesDone, bytesTotal)) / Double(1 << 30) / $0 }
    }
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
        state.bytesTotal = plan.regions.reduce(0) { $0 + $1.range.size }
        state.started = PhaseClock.now()
        state.report.backing = memory.backing?.description
        // A file too short for its region is refused before anything is converted.
        for (index, region) in plan.regions.enumerated() where capabilities.privateMemory {
            do { try LaunchPlan.checkContents(of: region, index: index) } catch { throw state.failure(.contents(error.description)) }
        }
        for (index, region) in plan.regions.enumerated() {
            if !capabilities.privateMemory {
                try writeInPlace(region, index: index, state: &state)
                clock.lap("fill", bytes: region.range.size)
                reportProgress(region.range.size, &state)
                continue
            }
            try populateRegion(region, index: index, measurement: measurement, state: &state, clock: &clock)
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

    /// SHA-384 of each page of `contents` the platform measures by content.
    private func measuredPageHashes(_ region: PlanRegion, _ contents: UnsafeRawBufferPointer, measured: Bool) -> [[UInt8]] {
        guard region.kind == .normal, measured else { return [] }
        var hashes = [[UInt8]](repeating: [], count: contents.count / Int(pageSize))
        ParallelPageHasher.forEachPageDigest(contents, algorithm: .sha384) { page, digest in
            hashes[page] = Array(digest)
        }
        return hashes
    }

    /// The largest piece of a region handled at once: a multiple of 2 MiB.
    private var chunkBytes: UInt64 { max(options.maximumCallBytes / hugePageSize * hugePageSize, hugePageSize) }

    /// A region cut where population calls end: every piece but the last
    /// ends on a 2 MiB-aligned address at most `chunkBytes` past its start,
    /// so no 2 MiB run is split.
    private func chunks(of range: GuestRange) -> [GuestRange] {
        var pieces: [GuestRange] = []
        var start = range.start.rawValue
        let end = range.start.rawValue + range.size
        while start < end {
            var next = (start + chunkBytes) / hugePageSize * hugePageSize
            if next <= start { next = start + chunkBytes }
            next = min(next, end)
            pieces.append(GuestRange(start: start, size: next - start))
            start = next
        }
        return pieces
    }

    /// Streams one region into private memory a chunk at a time: each
    /// chunk's contents are read, hashed and written (in place) or copied
    /// into the source buffer, then populated, so neither the contents nor
    /// the source ever hold more than a chunk. A separate-source region is
    /// made private whole before its first call; in place, each chunk is
    /// made private once its bytes are written.
    private func populateRegion(_ region: PlanRegion, index: Int, measurement: any LaunchMeasurer,
                                state: inout PopulationState, clock: inout PhaseClock) throws(PopulateError) {
        let capabilities = backend.capabilities
        let range = region.range
        state.report.pagesByKind[region.kind, default: 0] += range.pageCount
        state.report.countUnits(range)
        let inPlace = state.policy == .inPlace
        let needsCall = !capabilities.kindsWithoutCall.contains(region.kind)
        let needsSource = !inPlace && needsCall && !capabilities.kindsWithoutSource.contains(region.kind)
        // Pages whose calls take no source, from a separate source, and
        // that the plan leaves zero take no bytes from the host.
        var bytesUnused = !inPlace && capabilities.kindsWithoutSource.contains(region.kind)
        if case .zeros = region.contents {} else { bytesUnused = false }

        let bufferBytes = bytesUnused ? 0 : Int(min(range.size, chunkBytes))
        // The chunk may hold secrets: it is wiped on every way out, as the source buffer is.
        let contents = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bufferBytes, 1), alignment: Int(pageSize))
        defer {
            explicit_bzero(contents.baseAddress!, contents.count)
            contents.deallocate()
        }
        let source = needsSource ? SourceBuffer(byteCount: bufferBytes, memory: options.sourceMemory) : nil
        defer { source?.wipe() }

        if !inPlace { try makePrivate(range, region: region, inPlace: false, state: &state, clock: &clock) }
        for chunk in chunks(of: range) {
            let count = bytesUnused ? 0 : Int(chunk.size)
            let bytes = UnsafeMutableRawBufferPointer(rebasing: contents[0..<count])
            if !bytesUnused {
                do {
                    try LaunchPlan.readContents(of: region, index: index, offset: chunk.start.rawValue - range.start.rawValue,
                                                into: bytes)
                } catch {
                    throw state.failure(.contents(error.description), region: region, next: chunk.start.rawValue)
                }
                clock.lap("read", bytes: UInt64(count))
            }
            let hashes = measuredPageHashes(region, UnsafeRawBufferPointer(bytes), measured: measurement.algorithm != .none)
            if !hashes.isEmpty { clock.lap("measure", bytes: UInt64(count)) }
            if inPlace {
                // In place, the host writes the bytes while the pages are shared.
                try writeThroughMappings(UnsafeRawBufferPointer(bytes), at: chunk.start.rawValue, state: &state)
                clock.lap("fill", bytes: UInt64(count))
                try makePrivate(chunk, region: region, inPlace: true, state: &state, clock: &clock)
            }
            if let source {
                source.copy(UnsafeRawBufferPointer(bytes))
                state.report.bytesCopied += UInt64(count)
                clock.lap("fill", bytes: UInt64(count))
            }
            if needsCall {
                try issueCalls(region, in: chunk, contents: UnsafeRawBufferPointer(bytes), source: source, hashes: hashes,
                               measurement: measurement, state: &state)
            }
            clock.lap("populate", bytes: needsCall ? chunk.size : 0)
            reportProgress(chunk.size, &state)
        }
        state.populated.append(range)
    }

    /// Counts `bytes` more of the plan as handled and tells `options.progress`.
    private func reportProgress(_ bytes: UInt64, _ state: inout PopulationState) {
        state.bytesDone += bytes
        options.progress?(PopulateProgress(bytesDone: state.bytesDone, bytesTotal: state.bytesTotal,
                                           seconds: PhaseClock.now() - state.started))
    }

    /// Makes `range` private, sending the same request again after EAGAIN
    /// or EINTR: a conversion is all or nothing, so nothing is half done
    /// (`kvm_gmem_set_attributes` answers EAGAIN while a page is still pinned).
    private func makePrivate(_ range: GuestRange, region: PlanRegion, inPlace: Bool, state: inout PopulationState,
                             clock: inout PhaseClock) throws(PopulateError) {
        var retries = 0
        while true {
            do {
                try backend.makePrivate(range)
                break
            } catch {
                if error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable, retries < options.interruptionLimit {
                    retries += 1
                    state.report.retries += 1
                    continue
                }
                throw state.failure(.kernel(error), region: region, next: range.start.rawValue)
            }
        }
        state.report.ioctls += inPlace ? memory.slots.filter { $0.range.overlaps(range) }.count : 1
        if let last = state.madePrivate.last, last.start.rawValue + last.size == range.start.rawValue {
            state.madePrivate[state.madePrivate.count - 1] = GuestRange(start: last.start, size: last.size + range.size)
        } else {
            state.madePrivate.append(range)
        }
        clock.lap("convert", bytes: range.size)
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

    /// Writes bytes through the guest_memfd mappings that hold them.
    private func writeThroughMappings(_ contents: UnsafeRawBufferPointer, at gpa: UInt64, state: inout PopulationState) throws(PopulateError) {
        var done = 0
        while done < contents.count {
            guard let (slot, offset) = memory.locate(gpa + UInt64(done)), let mapping = slot.mapping else {
                throw state.failure(.contents("no mapped memory slot holds \(GuestPhysicalAddress(gpa + UInt64(done)))"))
            }
            let inSlot = min(contents.count - done, Int(slot.range.start.rawValue + slot.range.size - gpa) - done)
            do {
                try mapping.write(UnsafeRawBufferPointer(rebasing: contents[done..<(done + inSlot)]), at: offset)
            } catch {
                throw state.failure(.kernel(error))
            }
            done += inSlot
        }
        state.report.bytesCopied += UInt64(contents.count)
    }

    /// Issues the population calls for one chunk of a region in calls no
    /// larger than `maximumCallBytes`, resuming from the kernel's
    /// write-back, and measures the pages each call did. `contents`,
    /// `source` and `hashes` start at the chunk.
    private func issueCalls(_ region: PlanRegion, in chunk: GuestRange, contents: UnsafeRawBufferPointer, source: SourceBuffer?,
                            hashes: [[UInt8]], measurement: any LaunchMeasurer, state: inout PopulationState) throws(PopulateError) {
        let range = region.range, total = chunk.pageCount
        var done: UInt64 = 0, transient = 0, corrections = 0
        while done < total {
            let gpa = chunk.start.rawValue + done * pageSize
            let pages = total - done
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
            let next = chunk.start.rawValue + done * pageSize
            switch backend.classify(error, in: call) {
            case .transient where transient < options.interruptionLimit:
                transient += 1
                state.report.retries += 1
                continue
            case .sourceCorrected:
                guard let source else { break }
                let page = Int(done) * Int(pageSize)
                let inRegion = Int(chunk.start.rawValue - range.start.rawValue) + page
                let original = Array(region.contentsBytesForDiff[inRegion..<(inRegion + Int(pageSize))])
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
    private func record(_ region: PlanRegion, gpa: UInt64, pages: UInt64, firstPage: Int, contents: UnsafeRawBufferPointer,
                        hashes: [[UInt8]], measurement: any LaunchMeasurer, state: inout PopulationState)
        throws(PopulateError)
    {
        let callHashes = hashes.isEmpty ? [] : Array(hashes[firstPage..<(firstPage + Int(pages))])
        for page in 0..<Int(pages) {
            let offset = (firstPage + page) * Int(pageSize)
            let bytes = contents.count >= offset + Int(pageSize)
                ? UnsafeRawBufferPointer(rebasing: contents[offset..<(offset + Int(pageSize))]) : nil
            do {
                try measurement.add(gpa: gpa + UInt64(page) * pageSize, kind: region.kind, contents: bytes,
                                    sha384: callHashes.isEmpty ? nil : callHashes[page])
            } catch {
                throw state.failure(.contents(error.description), region: region, next: gpa)
            }
        }
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
    /// For progress: the plan's bytes, those handled so far, and when the population started.
    var bytesTotal: UInt64 = 0
    var bytesDone: UInt64 = 0
    var started = 0.0

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

    /// An empty buffer of `byteCount` bytes (at least a page), filled with `copy(_:)`.
    init(byteCount: Int, memory: any SourceMemory = HeapSourceMemory()) {
        count = byteCount
        self.memory = memory
        pointer = memory.allocate(byteCount: max(count, Int(pageSize)))
    }

    /// Puts `bytes` at the start of the buffer.
    func copy(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count <= count)
        if let base = bytes.baseAddress { pointer.copyMemory(from: base, byteCount: bytes.count) }
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
