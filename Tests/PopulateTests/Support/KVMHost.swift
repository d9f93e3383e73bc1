import Foundation
import GuestMemfd
import KVMFake
import Testing

/// Facts about the host the real-KVM tests run on, probed once.
///
/// The tests see the host as snpvmm does: through `SNPVMM_HIDE_KVM_CAPS`,
/// which can make a host look like one of a lower tier.
enum KVMHost {
    /// The kernel the real-KVM tests use.
    static let kernel: Result<any KernelInterface, KVMFeatureListError> =
        Result { () throws(KVMFeatureListError) in try FeatureHidingKernel.hostKernel() }

    /// The host's capabilities, or why `/dev/kvm` could not be opened and read.
    static let probe: Result<HostCapabilities, any Error> = Result {
        try KVM.open(using: kernel.get()).capabilities()
    }

    /// The capabilities, nil where there is no usable `/dev/kvm`.
    static var capabilities: HostCapabilities? { try? probe.get() }

    /// True where `/dev/kvm` can be opened and its capabilities read.
    static var isUsable: Bool { capabilities != nil }

    /// Whether the host (as the tests see it) has `feature`.
    static func has(_ feature: KVMFeature) -> Bool { capabilities?.has(feature) ?? false }

    /// The tier the tests see.
    static var tier: KVMTier { capabilities?.tier ?? .t0 }

    /// Why the host lacks `feature`, naming the capability; nil where it has it.
    static func whyMissing(_ feature: KVMFeature) -> String? {
        switch probe {
        case .success(let capabilities): capabilities.whyMissing(feature)
        case .failure(let error as KVMError): "no usable /dev/kvm (\(error.operation): \(error.errno))"
        case .failure(let error): "no usable /dev/kvm (\(error))"
        }
    }

    /// The features `SNPVMM_REQUIRE_KVM` names: tests that need them fail
    /// instead of skipping where the host lacks them.
    static let required: Result<Set<KVMFeature>, KVMFeatureListError> =
        Result { () throws(KVMFeatureListError) in try KVMFeature.list(ProcessInfo.processInfo.environment["SNPVMM_REQUIRE_KVM"] ?? "") }

    /// Opens the host's KVM as the tests see it.
    static func open() throws -> KVM { try KVM.open(using: kernel.get()) }

    /// A fake KVM with the rules of this project's development hosts, in the
    /// variant (with or without guest_memfd) the host has.
    static var matchingFakeProfile: HostProfile {
        capabilities.map { HostProfile.thisMachine(matching: $0) } ?? .thisMachine
    }
}

/// A KVM feature a test needs and the host lacks, where `SNPVMM_REQUIRE_KVM`
/// says the test must not be skipped.
struct RequiredKVMFeatureMissing: Error, CustomStringConvertible {
    var feature: KVMFeature
    var reason: String
    var description: String { "SNPVMM_REQUIRE_KVM names \(feature), and \(reason)" }
}

extension Trait where Self == ConditionTrait {
    /// Runs the test or suite only where the host's KVM has every one of
    /// `features`, and otherwise skips it with the missing capability as
    /// the reason, such as "host KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD = 0)".
    /// A feature named in `SNPVMM_REQUIRE_KVM` turns that skip into a failure.
    static func requiresKVM(_ features: KVMFeature...) -> Self {
        // guest_memfd the host maps is guest_memfd first.
        let all = Set(features).union([.kvm]).union(features.contains(.mmap) ? [.guestMemfd] : [])
        let missing = KVMFeature.allCases.filter { all.contains($0) }.compactMap { feature in
            KVMHost.whyMissing(feature).map { (feature: feature, reason: $0) }
        }
        if case .failure(let error) = KVMHost.kernel {
            return .enabled("SNPVMM_HIDE_KVM_CAPS is malformed") { throw error }
        }
        switch KVMHost.required {
        case .failure(let error):
            return .enabled("SNPVMM_REQUIRE_KVM is malformed") { throw error }
        case .success(let required):
            guard let first = missing.first else { return .enabled(if: true) }
            if let enforced = missing.first(where: { required.contains($0.feature) }) {
                return .enabled(Comment(rawValue: enforced.reason)) {
                    throw RequiredKVMFeatureMissing(feature: enforced.feature, reason: enforced.reason)
                }
            }
            return .enabled(if: false, Comment(rawValue: first.reason))
        }
    }

    /// Runs the test only where the host lacks `feature`: it pins what a
    /// KVM without it answers (on a host that has it, run it with
    /// `SNPVMM_HIDE_KVM_CAPS=\(feature)`).
    static func requiresKVMWithout(_ feature: KVMFeature) -> Self {
        .enabled(if: KVMHost.isUsable && !KVMHost.has(feature),
                 Comment(rawValue: KVMHost.isUsable ? "host KVM has \(feature); this pins a KVM without it"
                                                    : KVMHost.whyMissing(.kvm) ?? "no usable /dev/kvm"))
    }
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

/// Memory for a scripted guest's code: 64 KiB of shared memory at GPA 0 in
/// memslot 15. A vCPU of a VM without any memslot cannot fetch an
/// instruction, and KVM_RUN ends in an internal error.
@discardableResult
func bindCodeMemory(_ vm: VM) throws -> SharedMemory {
    let memory = try SharedMemory(size: 0x10000, name: "guest-code")
    try vm.setUserMemoryRegion2(UserMemoryRegion2(slot: 15, guestPhysicalAddress: 0, sharedMemory: memory))
    return memory
}
