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
    /// Retries of an SNP CPUID page with the firmware's corrected values.
    public var cpuidRetryLimit = 1
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
        if capabilities.platform == .plain || (options.policy == .inPlace && capabilities.populatesInPlace) {
            if let unmapped = memory.slots.first(where: { $0.mapping == nil }) {
                throw PopulateError(.policy("in-place population writes through the slot's host mapping, and the slot at \(unmapped.range) has none"))
            }
        }
        if capabilities.platform == .plain { return .inPlace }
        if let unbacked = memory.slots.first(where: { $0.memfd == nil }) {
            throw PopulateError(.policy("\(capabilities.platform) keeps guest memory private in guest_memfd, and the slot at \(unbacked.range) is shared memory without one"))
        }
        let chosen = options.policy ?? (capabilities.populatesInPlace && mapped ? .inPlace : .separateSource)
        if chosen == .inPlace, !capabilities.populatesInPlace {
            let why = capabilities.platform == .cca
                ? "delegating a granule to the realm scrubs it, so CCA always copies from a separate source"
                : "this host's guest_memfd cannot convert in place (no KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES)"
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

        var state = PopulationState(platform: capabilities.platform, algorithm: capabilities.measurement, policy: policy)
        state.report.backing = memory.backing?.description
        var tdx = TDXMeasurement()
        var cca = CCARealmMeasurement(parameters: (backend as? CCABackend)?.parameters ?? CCABackend.defaultParameters)
        for (index, region) in plan.regions.enumerated() {
            if capabilities.platform == .plain {
                try writeInPlace(region, index: index, state: &state)
                clock.lap("fill")
                continue
            }
            var contents: [UInt8] = []
            // SNP ZERO pages from a separate source take no bytes from the
            // host (the firmware clears them), so none are made for them.
            var bytesUnused = capabilities.platform == .snp && policy == .separateSource && region.kind == .zero
            if case .zeros = region.contents {} else { bytesUnused = false }
            if !bytesUnused {
                do {
                    contents = try LaunchPlan.pageContents(of: region, index: index)
                } catch {
                    throw state.failure(.contents(error.description))
                }
            }
            let hashes = measuredPageHashes(region, contents)
            try populateRegion(region, contents: contents, hashes: hashes, state: &state, clock: &clock,
                               tdx: &tdx, cca: &cca)
        }

        var expected: [UInt8]?
        switch capabilities.measurement {
        case .none: expected = nil
        case .snpLaunchDigest:
            if options.finish {
                let vmsas: [[UInt8]]
                do { vmsas = try backend.vmsaPages() } catch { throw state.failure(.kernel(error)) }
                for vmsa in vmsas {
                    state.snp.addPage(gpa: SNPLaunchDigest.vmsaGPA, type: .vmsa, contentsDigest: SHA384.hash(vmsa))
                }
                state.ledger.records.append(LedgerRecord(
                    call: "SNP_LAUNCH_FINISH", gpa: SNPLaunchDigest.vmsaGPA, pages: UInt64(vmsas.count), type: "VMSA",
                    pageHashes: vmsas.map { SHA384.hash($0).bytes }, digest: state.snp.value.bytes))
            }
            expected = state.snp.value.bytes
        case .tdxMRTD: expected = tdx.finalize().bytes
        case .ccaRealmInitialMeasurement: expected = cca.rim
        }
        state.ledger.measurement = expected

        if options.finish {
            do { try backend.finish() } catch { throw state.failure(.kernel(error)) }
            state.report.ioctls += capabilities.platform == .plain || capabilities.platform == .cca ? 0 : 1
        }
        clock.lap("finish")
        let reported = options.observer?.launchMeasurement()
        if let expected, let reported, reported != expected {
            throw state.failure(.measurementMismatch(expected: expected, reported: reported,
                                                     firstDivergingPage: firstDivergence(state.ledger)))
        }
        state.report.phaseSeconds = clock.laps
        return PopulateResult(report: state.report, ledger: state.ledger, expectedMeasurement: expected,
                              reportedMeasurement: reported)
    }

    /// SHA-384 (or the realm's hash) of each page the platform measures by content.
    private func measuredPageHashes(_ region: PlanRegion, _ contents: [UInt8]) -> [[UInt8]] {
        guard region.kind == .normal, backend.capabilities.measurement != .none else { return [] }
        var hashes = [[UInt8]](repeating: [], count: contents.count / Int(pageSize))
        contents.withUnsafeBytes { raw in
            ParallelPageHasher.forEachPageDigest(raw, digestLength: 48, hash: { SHA384.hash($0).bytes }) { page, digest in
                hashes[page] = Array(digest)
            }
        }
        return hashes
    }

    private func populateRegion(_ region: PlanRegion, contents: [UInt8], hashes: [[UInt8]], state: inout PopulationState,
                                clock: inout PhaseClock, tdx: inout TDXMeasurement, cca: inout CCARealmMeasurement)
        throws(PopulateError)
    {
        let platform = backend.capabilities.platform
        let range = region.range, pages = range.pageCount
        state.report.pagesByKind[region.kind, default: 0] += pages
        state.report.countUnits(range)
        let inPlace = state.policy == .inPlace

        // The plain platform, and in place everywhere: the host writes the bytes while shared.
        if inPlace {
            try writeThroughMappings(contents, at: range.start.rawValue, state: &state)
            clock.lap("fill")
        }
        var conversionRetries = 0
        while true {
            do {
                try backend.makePrivate(range, inPlace: inPlace)
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
        if platform != .plain {
            state.report.ioctls += inPlace ? memory.slots.filter { $0.range.overlaps(range) }.count : 1
            state.madePrivate.append(range)
        }
        clock.lap("convert")

        // CCA needs no call for zero pages: delegation already scrubbed them.
        let skip = platform == .plain || (platform == .cca && region.kind == .zero)
        var source: SourceBuffer?
        // SNP ZERO pages take no source; every other separate-source call gets one.
        if !inPlace && !skip && !(platform == .snp && region.kind == .zero) {
            source = SourceBuffer(contents, memory: options.sourceMemory)
            state.report.bytesCopied += UInt64(contents.count)
            clock.lap("fill")
        }
        defer { source?.wipe() }
        if !skip {
            try issueCalls(region, source: source, hashes: hashes, state: &state)
        } else if platform == .plain {
            state.ledger.records.append(LedgerRecord(call: backend.callName, gpa: range.start.rawValue, pages: pages,
                                                     type: region.kind.rawValue, pageHashes: [], digest: nil))
        }
        state.populated.append(range)
        clock.lap("populate")

        // The expected measurement for TDX and CCA (SNP is chained call by call).
        guard platform == .tdx || platform == .cca else { return }
        contents.withUnsafeBytes { raw in
            for page in 0..<Int(pages) {
                let gpa = range.start.rawValue + UInt64(page) * pageSize
                let bytes = UnsafeRawBufferPointer(rebasing: raw[(page * Int(pageSize))..<((page + 1) * Int(pageSize))])
                if platform == .tdx { tdx.addCheckedPage(gpa: gpa, contents: bytes, measure: region.kind == .normal) }
                if platform == .cca, region.kind != .zero {
                    try? cca.dataCreate(ipa: gpa, contents: bytes, measure: region.kind == .normal)
                }
            }
        }
        if platform == .cca, region.kind != .zero, let last = state.ledger.records.indices.last {
            state.ledger.records[last].digest = cca.rim
        }
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
    /// `maximumCallBytes`, resuming from the kernel's write-back.
    private func issueCalls(_ region: PlanRegion, source: SourceBuffer?, hashes: [[UInt8]], state: inout PopulationState)
        throws(PopulateError)
    {
        let range = region.range, total = range.pageCount
        let chunkBytes = max(options.maximumCallBytes / hugePageSize * hugePageSize, hugePageSize)
        var done: UInt64 = 0, interruptions = 0, cpuidRetries = 0
        while done < total {
            // Calls end on 2 MiB-aligned guest addresses, so no 2 MiB run is split.
            let gpa = range.start.rawValue + done * pageSize
            var end = (gpa + chunkBytes) / hugePageSize * hugePageSize
            if end <= gpa { end = gpa + chunkBytes }
            let pages = min((end - gpa) / pageSize, total - done)
            let call = PopulateCall(kind: region.kind, gpa: range.start.rawValue + done * pageSize, pages: pages,
                                    source: source.map { $0.address + done * pageSize } ?? 0)
            let step = backend.populate(call)
            state.report.ioctls += 1
            if step.pagesDone > 0 {
                record(region, gpa: call.gpa, pages: step.pagesDone, firstPage: Int(done), hashes: hashes, state: &state)
                done += step.pagesDone
            }
            guard let error = step.error else {
                if step.pagesDone == 0 {
                    throw state.failure(.noProgress(call: backend.callName, gpa: call.gpa), region: region, next: call.gpa)
                }
                interruptions = 0
                // A short call (a signal part-way, the end of a memslot) is resumed from its write-back.
                if step.pagesDone < pages { state.report.retries += 1 }
                continue
            }
            if error.errno == .interrupted || error.errno == .resourceTemporarilyUnavailable
                || (backend.capabilities.platform == .snp && error.errno == .ioError && error.firmwareError == nil) {
                // SNP reports a signal before the first page as EIO without a firmware status.
                if interruptions < options.interruptionLimit {
                    interruptions += 1
                    state.report.retries += 1
                    continue
                }
            } else if region.kind == .cpuid, error.firmwareError == 0x16, let source, cpuidRetries < options.cpuidRetryLimit {
                cpuidRetries += 1
                state.report.retries += 1
                let page = Int(done) * Int(pageSize)
                options.log(CPUIDPageDiff.describe(original: Array(region.contentsBytesForDiff[page..<(page + Int(pageSize))]),
                                                   corrected: source.bytes(at: page, count: Int(pageSize))))
                continue
            }
            throw state.failure(.kernel(error), region: region, next: range.start.rawValue + done * pageSize)
        }
    }

    /// Appends the ledger record of one successful call and chains the SNP digest.
    private func record(_ region: PlanRegion, gpa: UInt64, pages: UInt64, firstPage: Int, hashes: [[UInt8]],
                        state: inout PopulationState) {
        let platform = backend.capabilities.platform
        let callHashes = hashes.isEmpty ? [] : Array(hashes[firstPage..<(firstPage + Int(pages))])
        var type = region.kind.rawValue
        switch platform {
        case .snp:
            let snpType = region.kind.snpPageType
            type = snpType.description
            for page in 0..<Int(pages) {
                state.snp.addPage(gpa: gpa + UInt64(page) * pageSize, type: snpType,
                                  contentsDigest: callHashes.isEmpty ? nil : SHA384Digest(bytes: callHashes[page]))
            }
        case .tdx: type = region.kind == .normal ? "PAGE.ADD+MR.EXTEND" : "PAGE.ADD"
        case .cca: type = region.kind == .normal ? "DATA_MEASURED" : "DATA_UNMEASURED"
        case .plain: break
        }
        state.ledger.records.append(LedgerRecord(call: backend.callName, gpa: gpa, pages: pages, type: type,
                                                 pageHashes: callHashes, digest: platform == .snp ? state.snp.value.bytes : nil))
    }

    /// The first GPA at which the ledger's running digest and the platform's disagree.
    private func firstDivergence(_ ledger: Ledger) -> UInt64? {
        let platformPages = options.observer?.measuredPages() ?? []
        guard !platformPages.isEmpty else { return nil }
        var ours: [(gpa: UInt64, digest: [UInt8])] = []
        var snp = SNPLaunchDigest()
        for record in ledger.records where backend.capabilities.platform == .snp {
            let type = record.type == "VMSA" ? SNPPageType.vmsa : PageKind.allCases.first { $0.snpPageType.description == record.type }?.snpPageType ?? .normal
            for page in 0..<Int(record.pages) {
                let gpa = type == .vmsa ? SNPLaunchDigest.vmsaGPA : record.gpa + UInt64(page) * pageSize
                snp.addPage(gpa: gpa, type: type, contentsDigest: record.pageHashes.isEmpty ? nil : SHA384Digest(bytes: record.pageHashes[page]))
                ours.append((gpa, snp.value.bytes))
            }
        }
        for (index, page) in platformPages.enumerated() {
            guard index < ours.count else { return page.gpa }
            if ours[index].digest != page.measurement || ours[index].gpa != page.gpa { return page.gpa }
        }
        return ours.count > platformPages.count ? ours[platformPages.count].gpa : nil
    }
}

/// The running state of one population.
struct PopulationState {
    var report: PopulateReport
    var ledger: Ledger
    var snp = SNPLaunchDigest()
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

/// Measures the time of each phase.
struct PhaseClock {
    private var last = PhaseClock.now()
    private(set) var laps: [String: Double] = [:]

    static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    mutating func lap(_ phase: String) {
        let now = PhaseClock.now()
        laps[phase, default: 0] += now - last
        last = now
    }
}
