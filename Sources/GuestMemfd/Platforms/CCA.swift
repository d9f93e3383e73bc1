import CKVMHeaders

/// The state of one Arm CCA populate call: what to copy into the realm, and
/// after a call, what the kernel says is left.
public struct CCAPopulate: Hashable, Sendable {
    public var base: UInt64
    public var size: UInt64
    public var sourceAddress: UInt64

    public init(base: UInt64, size: UInt64, sourceAddress: UInt64) {
        self.base = base
        self.size = size
        self.sourceAddress = sourceAddress
    }

    public var range: GuestRange { GuestRange(start: base, size: size) }
}

/// The realm-population ioctl of the Arm CCA series (v14, unmerged).
///
/// Delegating a granule to the realm scrubs it, so contents always come from
/// a separate source that the RMM copies (RMI_DATA_CREATE), measured into the
/// realm initial measurement or not.
public struct CCA: Sendable {
    public let vm: VM

    public init(vm: VM) { self.vm = vm }

    /// Populates realm memory from `source`, returning what the kernel wrote
    /// back (size 0 when the call finished the range).
    ///
    /// The corresponding ioctl is `KVM_ARM_RMI_POPULATE` (VM ioctl, v14 `_IOWR`).
    /// - Throws: EINVAL for unaligned fields, unknown flags or nonzero
    ///   reserved; ENXIO on a VM that is not a live realm; EBUSY once the realm
    ///   is active; EOPNOTSUPP for a null source.
    public func populate(_ request: CCAPopulate, measure: Bool) throws(KVMError) -> CCAPopulate {
        guard vm.kvm.experimental.contains(.armCCA) else {
            throw .notOptedIn(.ioctl(.armRMIPopulate), on: .vm, fd: vm.fd, .armCCA)
        }
        var value = ckvm_arm_rmi_populate(base: request.base, size: request.size, source_uaddr: request.sourceAddress,
                                          flags: measure ? UInt32(CKVM_ARM_RMI_POPULATE_FLAGS_MEASURE) : 0, reserved: 0)
        try vm.call(.armRMIPopulate, pointerTo: &value, range: request.range, detail: measure ? "MEASURE" : nil)
        return CCAPopulate(base: value.base, size: value.size, sourceAddress: value.source_uaddr)
    }
}
