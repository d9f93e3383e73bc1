import GuestMemfd
import Foundation
@testable import GuestMemfd
@testable import Populate
import Testing

/// Source memory that maps each buffer on its own and, as each comes back,
/// records whether every byte of it was zero.
final class ObservedSourceMemory: SourceMemory, @unchecked Sendable {
    struct Buffer: Equatable {
        let address: UInt64
        let byteCount: Int
        /// Nil while the buffer is out; then whether it came back all zero.
        var zeroedOnReturn: Bool?
    }

    private let lock = NSLock()
    private var buffers: [Buffer] = []

    var all: [Buffer] { lock.withLock { buffers } }

    func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        let pointer = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        lock.withLock { buffers.append(Buffer(address: UInt64(UInt(bitPattern: pointer)), byteCount: byteCount)) }
        return pointer
    }

    func deallocate(_ pointer: UnsafeMutableRawPointer, byteCount: Int) {
        let zeroed = UnsafeRawBufferPointer(start: pointer, count: byteCount).allSatisfy { $0 == 0 }
        lock.withLock {
            if let index = buffers.firstIndex(where: { $0.address == UInt64(UInt(bitPattern: pointer)) }) {
                buffers[index].zeroedOnReturn = zeroed
            }
        }
        munmap(pointer, byteCount)
    }
}

/// Forwards to a backend, keeping a copy of what each call's source held
/// when the platform was asked to copy it.
final class SourceWatchingBackend: ForwardingBackend {
    private(set) var reads: [(address: UInt64, bytes: [UInt8])] = []

    override func willPopulate(_ call: PopulateCall) {
        if call.source != 0, let pointer = UnsafeRawPointer(bitPattern: UInt(call.source)) {
            reads.append((call.source, [UInt8](UnsafeRawBufferPointer(start: pointer, count: Int(call.pages * pageSize)))))
        }
    }
}

@Suite struct SecretsTests {
    static let secret = [UInt8]((0..<0x2000).map { UInt8(truncatingIfNeeded: $0 &* 151 &+ 0x5A) })

    /// A secret region the platform copies from a source buffer, then a region after it.
    static let plan = LaunchPlan(regions: [
        PlanRegion(name: "secret", range: GuestRange(start: PopulationRig.memoryBase, size: 0x2000), contents: .bytes(secret)),
        PlanRegion(name: "after", range: GuestRange(start: PopulationRig.memoryBase + 0x4000, size: 0x1000),
                   contents: .bytes([1, 2, 3])),
    ])

    @Test(arguments: [Platform.snp, .tdx, .cca])
    func everySourceBufferThatHeldTheSecretIsZeroWhenItIsFreed(_ platform: Platform) throws {
        let rig = try PopulationRig(platform)
        let memory = ObservedSourceMemory()
        var options = rig.observed
        options.sourceMemory = memory
        let watching = SourceWatchingBackend(rig.backend)
        let result = try Populator(backend: watching, memory: rig.layout, options: options).populate(Self.plan)
        #expect(result.report.policy == .separateSource)
        let buffers = memory.all
        #expect(buffers.count == 2)
        #expect(buffers.allSatisfy { $0.zeroedOnReturn == true }, "\(buffers)")
        // The platform read the secret out of the first buffer before it was wiped.
        let secretRead = try #require(watching.reads.first)
        #expect(secretRead.address == buffers[0].address)
        #expect(secretRead.bytes == Self.secret)
    }

    @Test(arguments: [Platform.snp, .tdx, .cca])
    func aPopulationThatFailsMidRegionStillZeroesItsSourceBuffer(_ platform: Platform) throws {
        let rig = try PopulationRig(platform)
        rig.fake.failPages(after: 1, with: .noMemory, in: platform == .cca ? .armRMIPopulate : .memoryEncryptOp)
        let memory = ObservedSourceMemory()
        var options = rig.observed
        options.sourceMemory = memory
        options.interruptionLimit = 0
        #expect(throws: PopulateError.self) { _ = try Populator(backend: rig.backend, memory: rig.layout, options: options).populate(Self.plan) }
        let buffers = memory.all
        #expect(buffers.count == 1)
        #expect(buffers.first?.zeroedOnReturn == true)
    }

    /// Writes `count` bytes at `address` into a pipe; 0, or the errno when no byte moved.
    static func copyOut(_ address: UnsafeRawPointer, count: Int) -> Int32 {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { return -1 }
        defer {
            close(ends[0])
            close(ends[1])
        }
        let written = write(ends[1], address, count)
        return written == count ? 0 : written < 0 ? errno : -1
    }

    @Test func aFileWithoutInitSharedIsPrivateToTheHostThroughout() throws {
        let rig = try PopulationRig(.snp)
        #expect(!rig.memfd.flags.contains(.initShared))
        #expect(kvmError { _ = try rig.mapping.read(at: 0, count: 1) }?.errno == .badAddress)
        #expect(Self.copyOut(rig.mapping.base, count: 1) == EFAULT)
        #expect(Self.copyOut(rig.mapping.base + Int(PopulationRig.memorySize) - 1, count: 1) == EFAULT)
    }

    @Test func aPrivatePageCannotBeReadThroughTheGuestMemfdMapping() throws {
        let rig = try PopulationRig(.snp, inPlace: true)
        let offset = 0x1000
        // Shared, the page is the host's to write and read.
        try rig.mapping.write([0xAA, 0xBB], at: offset)
        #expect(try rig.mapping.read(at: offset, count: 2) == [0xAA, 0xBB])
        _ = try rig.populate(samplePlan(.snp))
        // Private now: MADV_POPULATE_READ meets kvm_gmem_fault_user_mapping's SIGBUS and fails with EFAULT.
        var bytes: [UInt8]?
        let error = kvmError { bytes = try rig.mapping.read(at: offset, count: 2) }
        #expect(bytes == nil)
        #expect(error?.operation == .syscall(.madvise))
        #expect(error?.errno == .badAddress)
        #expect(error?.description.contains("MADV_POPULATE_READ of 2 bytes at offset 0x1000") == true, "\(String(describing: error))")
        // Nor can the kernel copy it out for the host: write(2) from the mapping moves no byte.
        #expect(Self.copyOut(rig.mapping.base + offset, count: 16) == EFAULT)
        #expect(Self.copyOut(rig.mapping.base + 0x100000, count: 16) == 0, "a shared page stays readable")
        // The platform holds the page's bytes, which the host cannot see.
        #expect(rig.fake.contents(of: rig.memfd)?[offset] == samplePlan(.snp).regions[0].contentsBytesForDiff[offset])
    }
}
