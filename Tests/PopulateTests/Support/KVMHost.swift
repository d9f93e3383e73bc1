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
