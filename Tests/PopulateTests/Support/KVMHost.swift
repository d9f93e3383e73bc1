import Foundation
import GuestMemfd
import Testing

/// Facts about the host the real-KVM tests run on.
enum KVMHost {
    /// True where `/dev/kvm` exists and this process may open it read-write.
    static let isUsable: Bool = access("/dev/kvm", R_OK | W_OK) == 0

    /// Opens the real KVM device.
    static func open() throws -> KVM { try KVM.open() }
}

/// Runs `body` and returns the `KVMError` it threw, or nil when it returned.
/// Any other error is recorded as a test failure.
func kvmError(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> KVMError? {
    do {
        try body()
        return nil
    } catch let error as KVMError {
        return error
    } catch {
        Issue.record("expected a KVMError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// The repository root, for tests that read files beside the package.
let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Page-aligned memory holding a copy of some bytes, freed on release, for
/// sources the kernel requires to be page aligned.
final class AlignedBuffer {
    let pointer: UnsafeMutableRawPointer
    let count: Int

    init(_ bytes: [UInt8]) {
        count = bytes.count
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 4096)
        bytes.withUnsafeBytes { if let base = $0.baseAddress { pointer.copyMemory(from: base, byteCount: count) } }
    }

    deinit { pointer.deallocate() }

    var address: UInt64 { UInt64(UInt(bitPattern: pointer)) }
    var bytes: [UInt8] { [UInt8](UnsafeRawBufferPointer(start: pointer, count: count)) }
}
