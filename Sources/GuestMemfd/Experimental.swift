/// Kernel interfaces from series not yet merged, whose numbers may change
/// before they are. The package issues none of them, and reads none of
/// their capabilities, unless the caller opts in when it opens KVM
/// (`KVM.open(path:using:experimental:)`); their numbers live in
/// `ckvm_experimental.h`. Without the opt-in an experimental capability
/// reads as absent and an experimental call fails before any ioctl.
public struct ExperimentalInterfaces: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// guest_memfd in-place conversion (series v8): `KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`
    /// (250) and `KVM_SET_MEMORY_ATTRIBUTES2` on a guest_memfd.
    public static let inPlaceConversion = ExperimentalInterfaces(rawValue: 1 << 0)
    /// guest_memfd HugeTLB (RFC v2): `GUEST_MEMFD_FLAG_HUGETLB`, whose bit (3) is assumed.
    public static let hugeTLBGuestMemfd = ExperimentalInterfaces(rawValue: 1 << 1)
    /// Arm CCA (series v14): `KVM_CAP_ARM_RMI` (249), realm VMs and `KVM_ARM_RMI_POPULATE`.
    public static let armCCA = ExperimentalInterfaces(rawValue: 1 << 2)

    public static let all: ExperimentalInterfaces = [.inPlaceConversion, .hugeTLBGuestMemfd, .armCCA]

    public var description: String {
        let names = [(Self.inPlaceConversion, "inPlaceConversion"), (.hugeTLBGuestMemfd, "hugeTLBGuestMemfd"), (.armCCA, "armCCA")]
            .filter { contains($0.0) }.map(\.1)
        return names.isEmpty ? "none" : names.joined(separator: ", ")
    }
}

extension Capability {
    /// The series a capability comes from, where it is not merged.
    public var experimental: ExperimentalInterfaces? {
        switch self {
        case .guestMemfdMemoryAttributes: .inPlaceConversion
        case .armRMI: .armCCA
        default: nil
        }
    }
}

extension KVMError {
    /// The error for an experimental call made without the opt-in.
    static func notOptedIn(_ operation: KVMOperation, on object: KVMObjectKind, fd: CInt,
                           _ interface: ExperimentalInterfaces) -> KVMError {
        KVMError(operation, on: object, fd: fd, errno: .notSupported,
                 detail: "\(interface) is an unmerged kernel interface: open KVM with experimental: .\(interface)")
    }
}

extension ExperimentalInterfaces {
    /// `query`'s answer for `capability`, as far as the opt-ins allow: 0 for
    /// an unmerged capability not opted in to, without asking; the
    /// guest_memfd flags without the assumed HugeTLB bit unless opted in.
    func filter(_ capability: Capability, _ query: () throws(KVMError) -> Int) throws(KVMError) -> Int {
        if let series = capability.experimental, !contains(series) { return 0 }
        let value = try query()
        if capability == .guestMemfdFlags, !contains(.hugeTLBGuestMemfd) {
            return value & ~Int(truncatingIfNeeded: GuestMemfdFlags.hugetlb.rawValue)
        }
        return value
    }
}
