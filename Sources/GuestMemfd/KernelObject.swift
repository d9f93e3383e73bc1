/// What every typed KVM object shares: a descriptor it owns on one kernel,
/// and the conversion of a failed call into a `KVMError` that names it.
protocol KernelObject {
    var kernel: any KernelInterface { get }
    var fd: CInt { get }
    var objectKind: KVMObjectKind { get }
}

extension KernelObject {
    /// Issues `ioctl` with a value argument.
    @discardableResult
    func call(
        _ ioctl: Ioctl, _ argument: UInt = 0, range: GuestRange? = nil, detail: @autoclosure () -> String? = nil
    ) throws(KVMError) -> Int {
        do {
            return try kernel.ioctl(fd, ioctl.request, argument)
        } catch {
            throw KVMError(.ioctl(ioctl), on: objectKind, fd: fd, errno: error, range: range, detail: detail())
        }
    }

    /// Issues `ioctl` with a pointer to `value`, which the kernel may write back.
    @discardableResult
    func call<T>(
        _ ioctl: Ioctl, pointerTo value: inout T, range: GuestRange? = nil,
        detail: @autoclosure () -> String? = nil
    ) throws(KVMError) -> Int {
        do {
            return try kernel.ioctl(fd, ioctl.request, pointerTo: &value)
        } catch {
            throw KVMError(.ioctl(ioctl), on: objectKind, fd: fd, errno: error, range: range, detail: detail())
        }
    }

    func syscallError(_ call: Syscall, _ errno: Errno, detail: String? = nil) -> KVMError {
        KVMError(.syscall(call), on: objectKind, fd: fd, errno: errno, detail: detail)
    }
}

/// Who closes an adopted descriptor: this object when it is released
/// (`.owned`), or the caller, which keeps using it (`.borrowed`).
public enum DescriptorOwnership: Sendable {
    case owned
    case borrowed
}

func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
