/// The kind of kernel object a call was made on.
public enum KVMObjectKind: String, Sendable {
    case system = "/dev/kvm"
    case vm = "VM"
    case vcpu = "vCPU"
    case guestMemfd = "guest_memfd"
    case mapping = "guest_memfd mapping"
    case sharedMemory = "memfd"
}

/// A failed kernel call on a KVM object: which call, on what, with which
/// errno, and over which range or arguments.
///
/// Its description reads as one sentence, for example
/// "KVM_SET_MEMORY_ATTRIBUTES on VM fd 7 failed: Invalid argument (EINVAL) for [0x100000, 0x300000)".
public struct KVMError: Error, Hashable, Sendable, CustomStringConvertible {
    public var operation: KVMOperation
    public var object: KVMObjectKind
    public var fd: CInt
    public var errno: Errno
    /// The guest-physical range the call covered, where it had one.
    public var range: GuestRange?
    /// Other arguments worth naming ("flags 0x4", "size 4097").
    public var detail: String?
    /// The platform firmware's status (SEV `error`, TDX `hw_error`) where it was reached.
    public var firmwareError: UInt64?
    /// Bytes a progress-reporting call had completed before it failed.
    public var completedBytes: UInt64?

    public init(
        _ operation: KVMOperation, on object: KVMObjectKind, fd: CInt, errno: Errno,
        range: GuestRange? = nil, detail: String? = nil, firmwareError: UInt64? = nil,
        completedBytes: UInt64? = nil
    ) {
        self.operation = operation
        self.object = object
        self.fd = fd
        self.errno = errno
        self.range = range
        self.detail = detail
        self.firmwareError = firmwareError
        self.completedBytes = completedBytes
    }

    public var description: String {
        var text = "\(operation) on \(object.rawValue) fd \(fd) failed: \(errno)"
        if let range { text += " for \(range)" }
        if let detail { text += " (\(detail))" }
        if let sevStatus {
            text += ", firmware error \(sevStatus)"
        } else if let firmwareError {
            text += ", firmware error 0x\(String(firmwareError, radix: 16))"
        }
        if let completedBytes { text += ", after \(completedBytes) bytes completed" }
        if let hint { text += ". \(hint)" }
        return text
    }

    /// A remedy for the errors a user can fix.
    private var hint: String? {
        switch (operation, errno) {
        case (.syscall(.open), .noSuchFileOrDirectory):
            "The kernel has no KVM: load kvm_intel or kvm_amd, or run on a host with virtualization."
        case (.syscall(.open), .permissionDenied):
            "/dev/kvm is not accessible: add the user to group kvm, or run as root."
        case (.ioctl(.createGuestMemfd), .notTTY):
            "This host's KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD = 0): it needs Linux 6.8 or later built with CONFIG_KVM_GUEST_MEMFD."
        default: nil
        }
    }
}
