import Foundation
import GuestMemfd
import KVMFake
@testable import Populate
import Testing

/// Records progress reports.
final class ProgressRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var reports: [PopulateProgress] = []
    func append(_ report: PopulateProgress) { lock.withLock { reports.append(report) } }
    var all: [PopulateProgress] { lock.withLock { reports } }
}

/// Population streams a region in chunks of at most `maximumCallBytes`
/// that end on 2 MiB-aligned addresses, never holding a region whole.
@Suite struct StreamingTests {
    static let chunk: UInt64 = 2 << 20
    /// 5 MiB from 12 KiB past the rig's 2 MiB base: a first chunk up to the next 2 MiB boundary,
    /// a whole one, and a tail.
    static let range = GuestRange(start: PopulationRig.memoryBase + 0x3000, size: 5 << 20)
    static let expectedChunks: [(UInt64, UInt64)] = [(0x20_3000, 0x40_0000), (0x40_0000, 0x60_0000), (0x60_0000, 0x70_3000)]
    static let bytes = [UInt8]((0..<Int(range.size)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 12) })

    /// The region's contents in a file of its own; the caller removes it.
    static func makeFile() throws -> (region: PlanRegion, path: String) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("streaming-\(UUID().uuidString)").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return (PlanRegion(name: "image", range: range, contents: .file(path: path, offset: 0, length: range.size)), path)
    }

    @Test(arguments: [Platform.snp, .tdx, .cca])
    func aSeparateSourceNeverHoldsMoreThanAChunkAndTheCallsFollowTheChunks(_ platform: Platform) throws {
        let rig = try PopulationRig(platform)
        let memory = ObservedSourceMemory()
        var options = rig.observed
        options.sourceMemory = memory
        options.maximumCallBytes = Self.chunk
        let watching = SourceWatchingBackend(rig.backend)
        // The observer fails the population if the platform's measurement differs from the engine's.
        let (region, path) = try Self.makeFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try Populator(backend: watching, memory: rig.layout, options: options).populate(LaunchPlan(regions: [region]))
        #expect(result.report.policy == .separateSource)
        #expect(memory.all.count == 1)
        #expect(memory.all.allSatisfy { $0.byteCount <= Int(Self.chunk) && $0.zeroedOnReturn == true }, "\(memory.all)")
        // The platform copied exactly the file, a chunk per call.
        let reads = watching.reads.map(\.bytes)
        #expect(reads.map(\.count) == Self.expectedChunks.map { Int($0.1 - $0.0) })
        #expect(Array(reads.joined()) == Self.bytes)
        let records = result.ledger.records.filter { $0.pages > 0 && $0.gpa >= Self.range.start.rawValue && $0.gpa < Self.range.start.rawValue + Self.range.size }
        #expect(records.map(\.gpa) == Self.expectedChunks.map(\.0))
    }

    @Test func inPlaceEachChunkIsWrittenThenMadePrivateThenPopulated() throws {
        let rig = try PopulationRig(.snp, inPlace: true)
        var options = rig.observed
        options.maximumCallBytes = Self.chunk
        let (region, path) = try Self.makeFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let result = try rig.populate(LaunchPlan(regions: [region]), options)
        #expect(result.report.policy == .inPlace)
        #expect(rig.fake.privateRanges(of: rig.vm) == [Self.range])
        let records = result.ledger.records.filter { $0.gpa >= Self.range.start.rawValue && $0.gpa < Self.range.start.rawValue + Self.range.size }
        #expect(records.map(\.gpa) == Self.expectedChunks.map(\.0))
    }

    /// Failing in the second chunk: the first two chunks were made private
    /// (each just before its calls), and the pages before the failure populated.
    @Test func inPlaceFailureInTheSecondChunkNamesOnlyTheChunksMadePrivate() throws {
        let rig = try PopulationRig(.snp, inPlace: true)
        let firstChunkPages = Int((Self.expectedChunks[0].1 - Self.expectedChunks[0].0) / pageSize)
        rig.fake.failPages(after: firstChunkPages + 10, with: .noMemory, in: .memoryEncryptOp)
        var options = rig.observed
        options.maximumCallBytes = Self.chunk
        options.interruptionLimit = 0
        let (region, path) = try Self.makeFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try rig.populate(LaunchPlan(regions: [region]), options)
            Issue.record("the population succeeded")
        } catch {
            let failedAt = Self.expectedChunks[1].0 + 10 * pageSize
            #expect(error.madePrivate == [GuestRange(start: Self.range.start, size: Self.expectedChunks[1].1 - Self.range.start.rawValue)])
            #expect(error.populated == [GuestRange(start: Self.range.start, size: failedAt - Self.range.start.rawValue)])
            #expect(error.nextGPA == failedAt)
            #expect(rig.fake.privateRanges(of: rig.vm) == error.madePrivate)
        }
    }

    /// Progress comes after every chunk, counting the bytes of the plan done.
    @Test func progressIsReportedAfterEachChunkUpToThePlansTotal() throws {
        let rig = try PopulationRig(.snp)
        let seen = ProgressRecorder()
        var options = rig.observed
        options.maximumCallBytes = Self.chunk
        options.progress = { seen.append($0) }
        let (region, path) = try Self.makeFile()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let after = PlanRegion(name: "after", range: GuestRange(start: 0x80_0000, size: 0x1000), contents: .bytes([1]))
        _ = try rig.populate(LaunchPlan(regions: [region, after]), options)
        let total = Self.range.size + 0x1000
        #expect(seen.all.map(\.bytesDone) == [0x1F_D000, 0x3F_D000, 0x50_0000, 0x50_1000])
        #expect(seen.all.allSatisfy { $0.bytesTotal == total })
        #expect(zip(seen.all, seen.all.dropFirst()).allSatisfy { $0.seconds <= $1.seconds })
    }

    /// A file shorter than its region is refused before any page is made private.
    @Test func aShortFileIsRefusedBeforeAnythingIsConverted() throws {
        let rig = try PopulationRig(.snp)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("short-\(UUID().uuidString)").path
        try Data(Self.bytes.prefix(0x1000)).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let plan = LaunchPlan(regions: [
            PlanRegion(name: "first", range: GuestRange(start: PopulationRig.memoryBase, size: 0x1000), contents: .bytes([1])),
            PlanRegion(name: "kernel", range: Self.range, contents: .file(path: path, offset: 0, length: 0x3000)),
        ])
        do {
            _ = try rig.populate(plan)
            Issue.record("the population succeeded")
        } catch {
            #expect("\(error)".contains("plan region 1 'kernel': its file holds 4096 of the 12288 bytes named"), "\(error)")
            #expect(error.madePrivate.isEmpty && error.populated.isEmpty)
            #expect(rig.fake.privateRanges(of: rig.vm).isEmpty)
        }
    }
}
